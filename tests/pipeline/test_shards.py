"""pipeline.shards: contract-v3 schema, deterministic Parquet, plain-pyarrow read-back (v3, v2 and v1),
``to_cube`` against GDAL and between numpy and torch, stats, manifest."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import shards as S
from pipeline.stac import Reject


def _arrays(n=3, t=2, h=16, seed=0, v2=False):
    """Contract-v3 rows (``s2_10m``, ``s2_20m`` at 20 m), or v2 rows (``s2`` on the 10 m grid)."""
    rng = np.random.default_rng(seed)
    s2 = rng.integers(1, 10000, (n, t, 12, h, h)).astype(np.uint16)
    s2[:, :, :, 0, 0] = 0  # nodata pixels
    s2_valid = np.ones((n, t), bool)
    s2_valid[0, 1] = False
    s2[0, 1] = 0
    if v2:
        s2_bands = {"s2": s2}
    else:
        s2_bands = {"s2_10m": np.ascontiguousarray(s2[:, :, S.CUBE_INDEX_10M]),
                    "s2_20m": np.ascontiguousarray(s2[:, :, S.CUBE_INDEX_20M, ::2, ::2])}
    s1 = rng.normal(-12, 4, (n, t, 2, h, h)).astype(np.float16)
    s1[1, :, :, :2] = np.nan
    s1_valid = np.ones((n, t), bool)
    s1_valid[2, 0] = False
    s1[2, 0] = np.nan
    return dict(
        sample_id=[f"32633_{i}_7_2022Q2" for i in range(n)],
        epsg=np.full(n, 32633),
        x_min=np.arange(n) * 640.0,
        y_max=np.full(n, 5120.0),
        gsd=np.full(n, 10.0),
        lon=np.full(n, 15.0),
        lat=np.full(n, 45.0),
        **s2_bands,
        s2_doy=np.tile(np.arange(1, t + 1, dtype=np.int16), (n, 1)),
        s2_valid=s2_valid,
        s2_cloud=rng.random((n, t)).astype(np.float32),
        s1=s1,
        s1_doy=np.tile(np.arange(5, 5 + t, dtype=np.int16), (n, 1)),
        s1_valid=s1_valid,
        sources=([["a", "b"], ["c"], []] * n)[:n],
    )


def _v1_table(a) -> pa.Table:
    """The same rows in the contract-v1 layout (FixedShapeTensor s2/s1), as old shards hold them."""
    return S.as_v1(S.build_table_v2(**a))


def test_schema_is_contract_v3():
    sch = S.shard_schema(4, 128)
    assert sch.names == [
        "sample_id",
        "epsg",
        "x_min",
        "y_max",
        "gsd",
        "lon",
        "lat",
        "s2_10m",
        "s2_20m",
        "s2_doy",
        "s2_valid",
        "s2_cloud",
        "s1",
        "s1_doy",
        "s1_valid",
        "sources",
    ]
    # fixed_size_binary, one value per row; 20 m bands at half the side
    assert sch.field("s2_10m").type == pa.binary(4 * 4 * 128 * 128 * 2)
    assert sch.field("s2_20m").type == pa.binary(4 * 8 * 64 * 64 * 2)
    assert sch.field("s1").type == pa.binary(4 * 2 * 128 * 128 * 2)
    assert sch.field("s2_10m").metadata == {
        b"skyray.dtype": b"<u2", b"skyray.shape": b"[4, 4, 128, 128]",
        b"skyray.bands": b'["B02", "B03", "B04", "B08"]', b"skyray.gsd": b"10.0"}
    assert sch.field("s2_20m").metadata == {
        b"skyray.dtype": b"<u2", b"skyray.shape": b"[4, 8, 64, 64]",
        b"skyray.bands": b'["B01", "B05", "B06", "B07", "B8A", "B09", "B11", "B12"]', b"skyray.gsd": b"20.0"}
    assert sch.field("s1").metadata == {
        b"skyray.dtype": b"<f2", b"skyray.shape": b"[4, 2, 128, 128]",
        b"skyray.bands": b'["VV", "VH"]', b"skyray.gsd": b"10.0"}
    assert sch.field("s2_doy").type == pa.list_(pa.int16(), 4)
    assert sch.field("s2_valid").type == pa.list_(pa.bool_(), 4)
    assert sch.field("s2_cloud").type == pa.list_(pa.float32(), 4)
    types = [sch.field(c).type for c in ("epsg", "x_min", "gsd", "lon")]
    assert types == [pa.int32(), pa.float64(), pa.float32(), pa.float32()]
    assert sch.field("sources").type == pa.list_(pa.string())
    assert sch.metadata[b"skyray.schema_version"] == b"3" and S.schema_version(sch) == 3
    assert sch.metadata[b"skyray.s2_bands"].decode().split(",") == list(S.S2_BANDS)
    # a benchmark on one 10 m grid: s2_20m at the full side, gsd 10
    one = S.shard_schema(2, 16, s2_20m_gsd=10.0).field("s2_20m")
    assert one.metadata[b"skyray.shape"] == b"[2, 8, 16, 16]" and one.metadata[b"skyray.gsd"] == b"10.0"
    with pytest.raises(ValueError, match="s2_20m_gsd must be 10 or 20 with an even tile_px"):
        S.shard_schema(2, 15)
    with pytest.raises(ValueError, match="s2_20m_gsd must be 10 or 20"):
        S.shard_schema(2, 16, s2_20m_gsd=60.0)
    assert S.schema_version(S.shard_schema_v2(2, 16)) == 2


def test_round_trip_and_deterministic_bytes(tmp_path):
    a = _arrays()
    t = S.build_table(**a)
    data = S.table_to_parquet(t)
    assert data == S.table_to_parquet(S.build_table(**_arrays()))
    (tmp_path / "x.parquet").write_bytes(data)
    back = S.read_shards(tmp_path / "x.parquet")
    assert back["schema_version"] == 3
    for k in ("s2_10m", "s2_20m", "s2_doy", "s2_valid", "s2_cloud", "s1_doy", "s1_valid", "epsg", "x_min",
              "lon"):
        np.testing.assert_array_equal(back[k], np.asarray(a[k]).astype(back[k].dtype), err_msg=k)
    np.testing.assert_array_equal(back["s1"], a["s1"])  # NaN positions equal too
    assert back["s2_10m"].shape == (3, 2, 4, 16, 16) and back["s2_20m"].shape == (3, 2, 8, 8, 8)
    assert back["s2_10m"].dtype == np.uint16 and back["s1"].dtype == np.float16
    assert back["sample_id"] == a["sample_id"] and back["sources"] == a["sources"]


def test_parquet_keeps_field_metadata_and_writes_one_value_per_row():
    a = _arrays(n=40)  # 3 row groups of 16
    data = S.table_to_parquet(S.build_table(**a))
    t = pq.read_table(pa.BufferReader(data))
    assert t.schema == S.shard_schema(2, 16) and t.schema.metadata == S.shard_schema(2, 16).metadata
    for name in S.TENSORS:
        assert t.schema.field(name).metadata == S.shard_schema(2, 16).field(name).metadata
    pf = pq.ParquetFile(pa.BufferReader(data))
    assert pf.metadata.num_row_groups == 3
    cols = {pf.schema.column(i).path: pf.schema.column(i) for i in range(pf.metadata.num_columns)}
    for name in S.TENSORS:
        assert cols[name].physical_type == "FIXED_LEN_BYTE_ARRAY" and cols[name].max_definition_level == 0
    rg = pf.metadata.row_group(0)
    chunks = {rg.column(i).path_in_schema: rg.column(i) for i in range(rg.num_columns)}
    assert "ZSTD" == chunks["s2_10m"].compression and not chunks["s2_20m"].is_stats_set
    assert chunks["x_min"].is_stats_set and chunks["sample_id"].has_dictionary_page
    assert not chunks["s2_10m"].has_dictionary_page and not chunks["sources.list.element"].has_dictionary_page
    np.testing.assert_array_equal(S.tensor_to_numpy(t["s2_20m"], t.schema.field("s2_20m")), a["s2_20m"])


def test_build_table_views_the_numpy_memory():
    a = _arrays()
    t = S.build_table(**a)
    for name in S.TENSORS:  # zero copy
        assert t[name].chunk(0).buffers()[1].address == a[name].ctypes.data, name
    # any other layout is converted (one copy) to C-contiguous little-endian
    b = _arrays()
    b["s2_10m"] = np.asfortranarray(b["s2_10m"].astype(">u2"))
    got = S.tensor_to_numpy(S.build_table(**b)["s2_10m"], t.schema.field("s2_10m"))
    np.testing.assert_array_equal(got, a["s2_10m"])


def test_tensor_to_numpy_chunks_slices_and_empty():
    a = _arrays(n=5)
    t = S.build_table(**a)
    f2, f1 = t.schema.field("s2_10m"), t.schema.field("s1")
    whole = S.tensor_to_numpy(t["s2_10m"], f2)
    assert whole.shape == (5, 2, 4, 16, 16) and whole.dtype == np.uint16
    np.testing.assert_array_equal(whole, a["s2_10m"])
    col = t["s2_10m"].chunk(0)
    chunked = pa.chunked_array([col.slice(0, 2), col.slice(2, 0), col.slice(2)])
    np.testing.assert_array_equal(S.tensor_to_numpy(chunked, f2), a["s2_10m"])
    np.testing.assert_array_equal(S.tensor_to_numpy(col.slice(3, 2), f2), a["s2_10m"][3:])  # non-zero offset
    np.testing.assert_array_equal(S.tensor_to_numpy(t["s1"].chunk(0).slice(1, 3), f1), a["s1"][1:4])
    empty = S.tensor_to_numpy(col.slice(5), f2)
    assert empty.shape == (0, 2, 4, 16, 16) and empty.dtype == np.uint16
    assert S.tensor_to_numpy(pa.chunked_array([], t["s1"].type), f1).shape == (0, 2, 2, 16, 16)
    with pytest.raises(ValueError, match="metadata"):
        S.tensor_to_numpy(col, pa.field("s2_10m", col.type))
    with pytest.raises(ValueError, match="do not hold"):
        S.tensor_to_numpy(col, f1)  # s1's field: the width does not match
    with pytest.raises(TypeError, match="not a tensor column"):
        S.tensor_to_numpy(t["epsg"], t.schema.field("epsg"))


@pytest.mark.parametrize("version", [3, 2])
def test_tensor_field_rebuilds_lost_metadata(version):
    sch = S.shard_schema(3, 24) if version == 3 else S.shard_schema_v2(3, 24)
    names = list(S.TENSORS) if version == 3 else list(S.TENSORS_V2)
    bare = pa.schema([f.remove_metadata() for f in sch])  # a reader that dropped field metadata
    for name in names:
        assert S.tensor_field(bare, name).metadata == sch.field(name).metadata, name
        assert S.tensor_field(sch, name).equals(sch.field(name), check_metadata=True)
    assert S.tensor_field(bare, "s2_doy") == sch.field("s2_doy")  # not a tensor: as is
    first = names[0]
    with pytest.raises(ValueError, match="no 's2_valid' column"):
        S.tensor_field(pa.schema([bare.field(first)]), first)
    odd = pa.schema([pa.field(first, pa.binary(1000)), bare.field("s2_valid")])
    with pytest.raises(ValueError, match="bytes per row are not"):
        S.tensor_field(odd, first)
    if version == 3:
        lone = pa.schema([bare.field("s2_20m"), bare.field("s2_valid")])
        with pytest.raises(ValueError, match="no 's2_10m' column to take its gsd from"):
            S.tensor_field(lone, "s2_20m")
        one = S.shard_schema(3, 24, s2_20m_gsd=10.0)  # the one-grid variant keeps gsd 10 when rebuilt
        rebuilt = S.tensor_field(pa.schema([f.remove_metadata() for f in one]), "s2_20m")
        assert rebuilt.metadata == one.field("s2_20m").metadata


def test_empty_shard_round_trip(tmp_path):
    a = _arrays()
    e = {k: (v[:0] if isinstance(v, np.ndarray) else v[:0]) for k, v in a.items()}
    (tmp_path / "e.parquet").write_bytes(S.table_to_parquet(S.build_table(**e)))
    back = S.read_shards(tmp_path / "e.parquet")
    assert back["s2_10m"].shape == (0, 2, 4, 16, 16) and back["s2_20m"].shape == (0, 2, 8, 8, 8)
    assert back["s1"].shape == (0, 2, 2, 16, 16) and back["sample_id"] == []


@pytest.mark.parametrize("version", [1, 2])
def test_v1_and_v2_shards_still_read(tmp_path, version):
    """Older shards read into the v3 layout: the 10 m group, and the 20/60 m bands as stored on the 10 m
    grid (gsd 10), which ``to_cube`` puts back in canonical order unchanged."""
    a = _arrays(v2=True)
    table = S.build_table_v2(**a)
    if version == 1:
        table = _v1_table(a)
    pq.write_table(table, tmp_path / "old.parquet", row_group_size=2)
    t = pq.read_table(tmp_path / "old.parquet")
    assert S.schema_version(t.schema) == version
    if version == 1:
        assert t.schema.field("s2").type == pa.fixed_shape_tensor(pa.uint16(), [2, 12, 16, 16])
    back = S.read_shards(tmp_path / "old.parquet")
    assert back["schema_version"] == version
    np.testing.assert_array_equal(back["s2_10m"], a["s2"][:, :, [1, 2, 3, 7]])
    np.testing.assert_array_equal(back["s2_20m"], a["s2"][:, :, [0, 4, 5, 6, 8, 9, 10, 11]])
    np.testing.assert_array_equal(S.to_cube(back["s2_10m"], back["s2_20m"], resampling="nearest"), a["s2"])
    np.testing.assert_array_equal(back["s2"], a["s2"])  # and as stored, for readers of the old layout
    np.testing.assert_array_equal(back["s1"], a["s1"])
    assert back["s2_10m"].dtype == np.uint16 and back["s1"].dtype == np.float16
    assert back["sources"] == a["sources"] and back["s2_valid"].tolist() == a["s2_valid"].tolist()
    if version == 1:  # FixedShapeTensor columns need no field metadata
        sliced = t["s1"].combine_chunks().slice(1)
        np.testing.assert_array_equal(S.tensor_to_numpy(sliced, None), a["s1"][1:])
        assert S.tensor_to_numpy(sliced.slice(2), None).shape == (0, 2, 2, 16, 16)


def test_unknown_contract_version_is_refused():
    t = S.build_table(**_arrays())
    t = t.replace_schema_metadata({**t.schema.metadata, b"skyray.schema_version": b"4"})
    with pytest.raises(ValueError, match=r"shard contract v4 is not readable here \(reads \(1, 2, 3\)\)"):
        S.table_to_arrays(t)


def _readme_recipe() -> str:
    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = text[text.index("### Reading shards without Ray"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.parametrize("source", ["docstring", "README"])
def test_readme_recipe_runs_with_plain_pyarrow(tmp_path, source):
    """The recipe in the module docstring and in the README works as written on a directory of shards."""
    d = tmp_path / "out" / "shards"
    d.mkdir(parents=True)
    a, b = _arrays(), _arrays(n=20, seed=1)  # the second shard has two row groups
    b["sample_id"] = [f"32633_{i}_8_2022Q2" for i in range(20)]
    (d / "u1.parquet").write_bytes(S.table_to_parquet(S.build_table(**a)))
    (d / "u2.parquet").write_bytes(S.table_to_parquet(S.build_table(**b)))
    if source == "docstring":
        code = re.search(r"::\n\n((?:    .*\n|\n)+)", S.__doc__).group(1)
        code = "\n".join(line[4:] for line in code.splitlines())
        code = code.replace('"out/shards"', repr(str(d)))
    else:
        code = _readme_recipe()
        assert '"demo-out/ingest/shards"' in code
        code = code.replace('"demo-out/ingest/shards"', repr(str(d)))
    ns: dict = {}
    exec(compile(code, "recipe", "exec"), ns)
    assert ns["t"]["s2_10m"].num_chunks >= 2  # several files / row groups: combine_chunks is needed
    keys = ("s2_10m", "s2_20m", "s1", "s2_valid", "s2_doy")
    cat = {k: np.concatenate([a[k], b[k]]) for k in keys}
    assert ns["s2_10m"].shape == (23, 2, 4, 16, 16) and ns["s2_20m"].shape == (23, 2, 8, 8, 8)
    assert ns["s1"].shape == (23, 2, 2, 16, 16)
    assert ns["s2_10m"].dtype == np.uint16 and ns["s1"].dtype == np.float16
    for k in keys:
        np.testing.assert_array_equal(ns[k], cat[k], err_msg=k)
    assert ns["bands_20m"] == list(S.S2_20M_BANDS)
    if source == "docstring":
        assert ns["ids"] == a["sample_id"] + b["sample_id"]
    else:  # the README goes on to the 12-band cube
        assert ns["bands"] == list(S.S2_BANDS)
        np.testing.assert_array_equal(ns["cube"], S.to_cube(cat["s2_10m"], cat["s2_20m"]))
        assert ns["cube"].shape == (23, 2, 12, 16, 16) and ns["cube"].dtype == np.float32


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda a: a.update(s2_10m=a["s2_10m"][:, :, :3]), r"s2_10m must be \(N, T, 4, H, H\)"),
        (lambda a: a.update(s2_20m=a["s2_20m"][:, :, :, :4]), r"s2_20m must be \(3, 2, 8, 8, 8\) \(20 m\)"),
        (lambda a: a.update(s2_20m=np.zeros((3, 2, 8, 5, 5), np.uint16)), "s2_20m must be"),
        (lambda a: a.update(s1=a["s1"][:, :1]), "s1 must be"),
        (lambda a: a.update(s2_doy=a["s2_doy"][:, :1]), "s2_doy must be"),
        (lambda a: a.update(sources=[[]]), "sample_id and sources need 3 rows"),
    ],
)
def test_build_table_rejects_bad_shapes(change, match):
    a = _arrays()
    change(a)
    with pytest.raises(ValueError, match=match):
        S.build_table(**a)


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda a: a.update(s2=a["s2"][:, :, :11]), r"s2 must be \(N, T, 12, H, H\)"),
        (lambda a: a.update(s1=a["s1"][:, :1]), "s1 must be"),
        (lambda a: a.update(s1_valid=a["s1_valid"][:1]), "s1_valid must be"),
    ],
)
def test_build_table_v2_rejects_bad_shapes(change, match):
    a = _arrays(v2=True)
    change(a)
    with pytest.raises(ValueError, match=match):
        S.build_table_v2(**a)


# ------------------------------------------------------------------------------------------ to_cube


def _gdal_resample(band: np.ndarray, size: int, resampling) -> np.ndarray:
    """GDAL's answer: a ``(h, w)`` raster at 20 m read with ``out_shape=(size, size)`` (its RasterIO
    resampling; pixel-area aligned)."""
    from rasterio.io import MemoryFile
    from rasterio.transform import from_origin

    h, w = band.shape
    with MemoryFile() as mf:
        with mf.open(driver="GTiff", width=w, height=h, count=1, dtype=band.dtype.name, crs="EPSG:32633",
                     transform=from_origin(499980.0, 5000040.0, 20.0, 20.0)) as ds:
            ds.write(band, 1)
        with mf.open() as ds:
            return ds.read(1, out_shape=(size, size), resampling=resampling)


@pytest.mark.parametrize("size", [26, 39, 20, 13])
def test_to_cube_matches_gdal_resampling(size):
    """Every pixel, edges included, against GDAL's bilinear/nearest resampling of the same 13 x 13 20 m
    band (x2, x3, a non-integer factor, and x1 = copy). Tolerance: float32 data, 4e-3 DN on values up to
    1e4 (both blend in float32 in another order: a few ulp, 1e4 x 2**-22 = 2.4e-3); uint16 data, 0.5 DN
    more (GDAL rounds its answer to the integer type, ``to_cube`` returns the float32 blend). Nearest:
    identical."""
    from rasterio.enums import Resampling

    rng = np.random.default_rng(3)
    g20 = (rng.random((2, 8, 13, 13)) * 10000).astype(np.float32)
    g10 = rng.integers(1, 10000, (2, 4, 13, 13)).astype(np.uint16)
    cube = S.to_cube(g10.astype(np.float32), g20, size=size)
    assert cube.shape == (2, 12, size, size) and cube.dtype == np.float32
    cube_u = S.to_cube(g10, g20.astype(np.uint16), size=size)
    near = S.to_cube(g10, g20.astype(np.uint16), size=size, resampling="nearest")
    assert near.dtype == np.uint16
    for n in range(2):
        for b, ci in enumerate(S.CUBE_INDEX_20M):
            want = _gdal_resample(g20[n, b], size, Resampling.bilinear)
            np.testing.assert_allclose(cube[n, ci], want, atol=4e-3, rtol=0)
            want_u = _gdal_resample(g20[n, b].astype(np.uint16), size, Resampling.bilinear)
            np.testing.assert_allclose(cube_u[n, ci], want_u, atol=0.5 + 4e-3, rtol=0)
            want_n = _gdal_resample(g20[n, b].astype(np.uint16), size, Resampling.nearest)
            np.testing.assert_array_equal(near[n, ci], want_n)
        if size == 13:  # the 10 m group already at size: copied as is
            np.testing.assert_array_equal(near[n, list(S.CUBE_INDEX_10M)], g10[n])


def test_to_cube_band_order_and_exact_on_replicated_pixels():
    """Constant bands land in the canonical order; a 2 x 2 replicated 20 m grid comes back unchanged by
    nearest, and a linear ramp stays a ramp under bilinear away from the border."""
    g10 = np.stack([np.full((1, 8, 8), v, np.uint16) for v in (2, 3, 4, 8)], 1)  # (1, 4, 8, 8)
    g20 = np.stack([np.full((1, 4, 4), v, np.uint16) for v in (1, 5, 6, 7, 80, 9, 11, 12)], 1)
    cube = S.to_cube(g10, g20)
    assert cube.shape == (1, 12, 8, 8)
    assert cube[0, :, 0, 0].tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 80, 9, 11, 12]
    ramp = np.arange(4, dtype=np.float32)[None, None, None, :].repeat(8, 1).repeat(4, 2)  # (1, 8, 4, 4)
    up = S.to_cube(np.zeros((1, 4, 8, 8), np.float32), ramp)[0, S.CUBE_INDEX_20M[0]]  # (8, 8)
    # 20 m centres at 0.5, 1.5, ... -> 10 m centres at 0.25, 0.75, ... (in 20 m pixels)
    np.testing.assert_allclose(up[0, 1:-1], np.arange(0.25, 4.0, 0.5)[1:-1] - 0.5)
    assert up[0, 0] == 0 and up[0, -1] == 3  # edges extend the border pixel
    rng = np.random.default_rng(0)
    g20 = rng.integers(1, 10000, (1, 8, 4, 4)).astype(np.uint16)
    near = S.to_cube(g10, g20, resampling="nearest")[:, list(S.CUBE_INDEX_20M)]
    np.testing.assert_array_equal(near, g20.repeat(2, -2).repeat(2, -1))  # each 20 m pixel on its 2 x 2


@pytest.mark.parametrize("resampling", ["bilinear", "nearest"])
@pytest.mark.parametrize("size", [None, 24, 8])
def test_to_cube_numpy_and_torch_agree(resampling, size):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    g10 = rng.integers(0, 10000, (2, 3, 4, 16, 16)).astype(np.uint16)  # (N, T, 4, H, W)
    g20 = rng.integers(0, 10000, (2, 3, 8, 8, 8)).astype(np.uint16)
    want = S.to_cube(g10, g20, size=size, resampling=resampling)
    got = S.to_cube(torch.from_numpy(g10), torch.from_numpy(g20), size=size, resampling=resampling)
    side = size or 16
    assert isinstance(got, torch.Tensor) and tuple(got.shape) == want.shape == (2, 3, 12, side, side)
    assert got.dtype == (torch.float32 if resampling == "bilinear" else torch.uint16)
    if resampling == "nearest":
        np.testing.assert_array_equal(got.numpy(), want)
    else:  # float32 arithmetic in another order: ~1e-6 relative
        np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-6 * 10000)


@pytest.mark.parametrize(
    "args, kwargs, exc, match",
    [
        ((np.zeros((4, 8, 8)), np.zeros((8, 4, 4))), {"resampling": "cubic"}, ValueError,
         "resampling must be"),
        ((np.zeros((3, 8, 8)), np.zeros((8, 4, 4))), {}, ValueError, r"to_cube needs s2_10m \(\.\.\., 4"),
        ((np.zeros((2, 4, 8, 8)), np.zeros((3, 8, 4, 4))), {}, ValueError, "leading dims differ"),
        ((np.zeros((4, 8, 8)), np.zeros((8, 4, 4))), {"size": 0}, ValueError, "size must be >= 1"),
    ],
)
def test_to_cube_rejects_bad_inputs(args, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        S.to_cube(*args, **kwargs)


def test_to_cube_rejects_mixed_numpy_and_torch():
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match="must both be numpy arrays or both torch tensors"):
        S.to_cube(np.zeros((4, 8, 8)), torch.zeros((8, 4, 4)))


# ------------------------------------------------------------------------------------------- stats


@pytest.mark.parametrize("side", [128, 1448, 1456])  # float64 sums up to 1448 px, integer ones beyond
def test_slot_sums_are_exact_at_the_extremes(side):
    rng = np.random.default_rng(side)
    s10 = np.full((4, side, side), 65535, np.uint16)
    s20 = rng.integers(0, 65536, (8, side // 2, side // 2), dtype=np.uint16)
    s10[1, 0, :7] = 0
    s10[0, 0, 0] = 65534  # band 0's sum of squares odd: past 2**53, float64 could not hold it
    got = S.s2_slot_sums(s10, s20)
    for x, index in ((s10, S.CUBE_INDEX_10M), (s20, S.CUBE_INDEX_20M)):
        for b, ci in enumerate(index):
            v = [int(p) for p in x[b].ravel() if p] if side == 128 else None
            n = int(np.count_nonzero(x[b]))
            total = int(x[b].sum(dtype=np.uint64))
            sq = int((x[b].astype(np.uint64) ** 2).sum())
            assert got[:, ci].tolist() == [n, total, sq], S.S2_BANDS[ci]
            if v is not None:
                assert (n, total, sq) == (len(v), sum(v), sum(p * p for p in v))
    # 1448 px: just under 2**53 (float64, exact); 1456 px: past it (the integer path)
    assert got[2, S.CUBE_INDEX_10M[0]] == 65535**2 * (side * side - 1) + 65534**2


def test_band_sums_match_numpy_at_native_resolution():
    a = _arrays()
    s2 = S.s2_band_sums(a["s2_10m"], a["s2_20m"], a["s2_valid"])
    for group, index in (("s2_10m", S.CUBE_INDEX_10M), ("s2_20m", S.CUBE_INDEX_20M)):
        sel = a[group][a["s2_valid"]]
        for b, ci in enumerate(index):
            v = sel[:, b][sel[:, b] != 0].astype(np.float64)
            assert s2["count"][ci] == v.size and s2["sum"][ci] == int(v.sum()), S.S2_BANDS[ci]
            assert s2["sumsq"][ci] == int((v**2).sum())
    assert s2["count"][0] == 5 * 8 * 8 - 5  # B01 at 20 m: 5 valid slots of 8 x 8, one nodata pixel each
    st = S.finalize_stats(s2, S.S2_BANDS)
    sel = a["s2_20m"][a["s2_valid"]][:, 0]
    v0 = sel[sel != 0].astype(np.float64)
    assert st["mean"][0] == pytest.approx(v0.mean()) and st["std"][0] == pytest.approx(v0.std())
    s1 = S.s1_band_sums(a["s1"], a["s1_valid"])
    sel1 = a["s1"][a["s1_valid"]].astype(np.float64)
    v1 = sel1[:, 1][np.isfinite(sel1[:, 1])]
    assert s1["count"][1] == v1.size and s1["sum"][1] == pytest.approx(v1.sum())
    assert S.finalize_stats(S.empty_sums(2, False), S.S1_BANDS)["std"] == [0.0, 0.0]


def _manifest(shards, seed=0):
    a = _arrays(seed=seed)
    return S.build_manifest(
        shards=shards,
        s2_sums=S.s2_band_sums(a["s2_10m"], a["s2_20m"], a["s2_valid"]),
        s1_sums=S.s1_band_sums(a["s1"], a["s1_valid"]),
        tile_px=16,
        max_slots=2,
        config={"tile_px": 16},
        counts={"tiles_planned": 3},
    )


def test_manifest_is_deterministic_and_sorted():
    shards = [
        {"path": "shards/b.parquet", "rows": 2, "bytes": 10, "sha256": "x"},
        {"path": "shards/a.parquet", "rows": 1, "bytes": 5, "sha256": "y"},
    ]
    m1, m2 = _manifest(shards), _manifest(list(reversed(shards)))
    assert S.manifest_bytes(m1) == S.manifest_bytes(m2)
    d = json.loads(S.manifest_bytes(m1))
    assert (
        d["schema_version"] == 3
        and d["rows"] == 3
        and [s["path"] for s in d["shards"]] == ["shards/a.parquet", "shards/b.parquet"]
    )
    assert set(d["band_stats"]) == {"s1", "s2"} and len(d["band_stats"]["s2"]["mean"]) == 12
    assert list(d) == sorted(d)


def test_merge_manifests_recombines_stats():
    m1 = _manifest([{"path": "shards/a.parquet", "rows": 3, "bytes": 1, "sha256": "x"}], seed=0)
    m2 = _manifest([{"path": "shards/b.parquet", "rows": 3, "bytes": 1, "sha256": "y"}], seed=1)
    both = S.merge_manifests([m1, m2])
    a, b = _arrays(seed=0), _arrays(seed=1)
    sums = S.add_sums(S.s2_band_sums(a["s2_10m"], a["s2_20m"], a["s2_valid"]),
                      S.s2_band_sums(b["s2_10m"], b["s2_20m"], b["s2_valid"]))
    want = S.finalize_stats(sums, S.S2_BANDS)
    np.testing.assert_allclose(both["band_stats"]["s2"]["mean"], want["mean"], rtol=1e-9)
    np.testing.assert_allclose(both["band_stats"]["s2"]["std"], want["std"], rtol=1e-6)
    assert both["rows"] == 6
    with pytest.raises(ValueError, match="shard paths collide"):
        S.merge_manifests([m1, m1])
    with pytest.raises(ValueError, match="different tile_px"):
        S.merge_manifests([m1, {**m2, "tile_px": 32}])
    with pytest.raises(ValueError, match="nothing to merge"):
        S.merge_manifests([])


def test_rejects_table_dedups_and_sorts(tmp_path):
    item = Reject("item", "z", "malformed_item", "bad json")
    rows = [Reject("tile", "b", "all_cloud", "x"), item, Reject("tile", "b", "all_cloud", "x")]
    t = S.rejects_table(rows)
    assert t.column_names == ["level", "id", "reason", "detail"]
    assert t.to_pylist() == [
        {"level": "item", "id": "z", "reason": "malformed_item", "detail": "bad json"},
        {"level": "tile", "id": "b", "reason": "all_cloud", "detail": "x"},
    ]
    (tmp_path / "r.parquet").write_bytes(S.rejects_to_parquet(t))
    assert pq.read_table(tmp_path / "r.parquet").equals(t)
    assert S.rejects_table([]).num_rows == 0


# ------------------------------------------------------------------------------------- benchmark labels


@pytest.mark.parametrize("task,classes,make", [
    ("classification", ("a", "b", "c"), lambda n, h: np.array([2, 0, 1][:n])),
    ("multilabel", ("a", "b", "c", "d"), lambda n, h: np.eye(4, dtype=np.uint8)[[0, 3, 1][:n]] | 1),
    ("segmentation", ("bg", "x"), lambda n, h: np.where(np.arange(n * h * h).reshape(n, h, h) % 3 == 0,
                                                        S.IGNORE_INDEX, 1)),
    ("change", ("no change", "change"), lambda n, h: (np.arange(n * h * h).reshape(n, h, h) % 2)),
])
def test_labels_round_trip_through_parquet(tmp_path, task, classes, make):
    a = _arrays()
    info = S.BenchmarkInfo("bench", task, classes)
    labels = make(3, 16)
    crops = S.Crops(["img0", "img0", "img1"], np.array([0, 16, 0]), np.array([0, 0, 0]), np.array([20] * 3),
                    np.array([16] * 3))
    t = S.add_labels(S.build_table(**a), info, labels, ["train", "val", "test"], crops=crops)
    (tmp_path / "x.parquet").write_bytes(S.table_to_parquet(t))
    back = S.read_shards(tmp_path / "x.parquet")
    assert back["info"] == info and back["split"] == ["train", "val", "test"]
    np.testing.assert_array_equal(back["label"], labels)
    assert back["crop_image"] == ["img0", "img0", "img1"] and list(back["crop_y"]) == [0, 16, 0]
    assert S.benchmark_info(pq.read_schema(tmp_path / "x.parquet")) == info
    np.testing.assert_array_equal(back["s2_10m"], a["s2_10m"])  # the v3 columns are untouched


def test_unlabelled_shards_have_no_benchmark_info():
    t = S.build_table(**_arrays())
    assert S.benchmark_info(t.schema) is None and "label" not in S.table_to_arrays(t)


_TRAIN = ["train"] * 3


@pytest.mark.parametrize("info,labels,split,match", [
    (("b", "classification", ("a", "b")), np.array([0, 1, 2]), _TRAIN,
     r"label_class values must lie in \[0, 2\)"),
    (("b", "classification", ("a", "b")), np.array([0, 1]), _TRAIN, r"label_class must be \(3,\)"),
    (("b", "multilabel", ("a", "b")), np.full((3, 2), 2), _TRAIN, r"label_multi values must lie in \[0, 2\)"),
    (("b", "segmentation", ("a", "b")), np.zeros((3, 8, 8)), _TRAIN, r"label_mask must be \(3, 16, 16\)"),
    (("b", "change", ("a", "b", "c")), np.zeros((3, 16, 16)), _TRAIN, "a change task has 2 classes"),
    (("b", "classification", ("a", "b")), np.array([0, 1, 1]), ["train", "validation", "test"],
     r"split needs 3 values .*unknown: \['validation'\]"),
])
def test_add_labels_rejects_bad_labels(info, labels, split, match):
    with pytest.raises(ValueError, match=match):
        S.add_labels(S.build_table(**_arrays()), S.BenchmarkInfo(*info), labels, split)


@pytest.mark.parametrize("task,classes,match", [
    ("detection", ("a",), "task must be one of"),
    ("classification", (), "classes must name 1..255 classes"),
])
def test_benchmark_info_rejects_bad_values(task, classes, match):
    with pytest.raises(ValueError, match=match):
        S.BenchmarkInfo("b", task, classes)
