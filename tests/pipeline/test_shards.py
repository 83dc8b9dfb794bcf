"""pipeline.shards: contract-v2 schema, deterministic Parquet, plain-pyarrow read-back (v2 and v1), stats,
manifest."""

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


def _arrays(n=3, t=2, h=16, seed=0):
    rng = np.random.default_rng(seed)
    s2 = rng.integers(1, 10000, (n, t, 12, h, h)).astype(np.uint16)
    s2[:, :, :, 0, 0] = 0  # nodata pixels
    s2_valid = np.ones((n, t), bool)
    s2_valid[0, 1] = False
    s2[0, 1] = 0
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
        s2=s2,
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
    return S.as_v1(S.build_table(**a))


def test_schema_is_contract_v2():
    sch = S.shard_schema(4, 128)
    assert sch.names == [
        "sample_id",
        "epsg",
        "x_min",
        "y_max",
        "gsd",
        "lon",
        "lat",
        "s2",
        "s2_doy",
        "s2_valid",
        "s2_cloud",
        "s1",
        "s1_doy",
        "s1_valid",
        "sources",
    ]
    assert sch.field("s2").type == pa.binary(4 * 12 * 128 * 128 * 2)  # fixed_size_binary, one value per row
    assert sch.field("s1").type == pa.binary(4 * 2 * 128 * 128 * 2)
    assert sch.field("s2").metadata == {b"skyray.dtype": b"<u2", b"skyray.shape": b"[4, 12, 128, 128]"}
    assert sch.field("s1").metadata == {b"skyray.dtype": b"<f2", b"skyray.shape": b"[4, 2, 128, 128]"}
    assert sch.field("s2_doy").type == pa.list_(pa.int16(), 4)
    assert sch.field("s2_valid").type == pa.list_(pa.bool_(), 4)
    assert sch.field("s2_cloud").type == pa.list_(pa.float32(), 4)
    types = [sch.field(c).type for c in ("epsg", "x_min", "gsd", "lon")]
    assert types == [pa.int32(), pa.float64(), pa.float32(), pa.float32()]
    assert sch.field("sources").type == pa.list_(pa.string())
    assert sch.metadata[b"skyray.schema_version"] == b"2"
    assert sch.metadata[b"skyray.s2_bands"].decode().split(",") == list(S.S2_BANDS)


def test_round_trip_and_deterministic_bytes(tmp_path):
    a = _arrays()
    t = S.build_table(**a)
    data = S.table_to_parquet(t)
    assert data == S.table_to_parquet(S.build_table(**_arrays()))
    (tmp_path / "x.parquet").write_bytes(data)
    back = S.read_shards(tmp_path / "x.parquet")
    for k in ("s2", "s2_doy", "s2_valid", "s2_cloud", "s1_doy", "s1_valid", "epsg", "x_min", "lon"):
        np.testing.assert_array_equal(back[k], np.asarray(a[k]).astype(back[k].dtype), err_msg=k)
    np.testing.assert_array_equal(back["s1"], a["s1"])  # NaN positions equal too
    assert back["s2"].dtype == np.uint16 and back["s1"].dtype == np.float16
    assert back["sample_id"] == a["sample_id"] and back["sources"] == a["sources"]


def test_parquet_keeps_field_metadata_and_writes_one_value_per_row():
    a = _arrays(n=40)  # 3 row groups of 16
    data = S.table_to_parquet(S.build_table(**a))
    t = pq.read_table(pa.BufferReader(data))
    assert t.schema == S.shard_schema(2, 16) and t.schema.metadata == S.shard_schema(2, 16).metadata
    for name in ("s2", "s1"):
        assert t.schema.field(name).metadata == S.shard_schema(2, 16).field(name).metadata
    pf = pq.ParquetFile(pa.BufferReader(data))
    assert pf.metadata.num_row_groups == 3
    cols = {pf.schema.column(i).path: pf.schema.column(i) for i in range(pf.metadata.num_columns)}
    assert cols["s2"].physical_type == "FIXED_LEN_BYTE_ARRAY" and cols["s2"].max_definition_level == 0
    assert cols["s1"].physical_type == "FIXED_LEN_BYTE_ARRAY"
    rg = pf.metadata.row_group(0)
    chunks = {rg.column(i).path_in_schema: rg.column(i) for i in range(rg.num_columns)}
    assert "ZSTD" == chunks["s2"].compression and not chunks["s2"].is_stats_set
    assert chunks["x_min"].is_stats_set and chunks["sample_id"].has_dictionary_page
    assert not chunks["s2"].has_dictionary_page and not chunks["sources.list.element"].has_dictionary_page
    np.testing.assert_array_equal(S.tensor_to_numpy(t["s2"], t.schema.field("s2")), a["s2"])


def test_build_table_views_the_numpy_memory():
    a = _arrays()
    t = S.build_table(**a)
    assert t["s2"].chunk(0).buffers()[1].address == a["s2"].ctypes.data  # zero copy
    assert t["s1"].chunk(0).buffers()[1].address == a["s1"].ctypes.data
    # any other layout is converted (one copy) to C-contiguous little-endian
    b = _arrays()
    b["s2"] = np.asfortranarray(b["s2"].astype(">u2"))
    np.testing.assert_array_equal(S.tensor_to_numpy(S.build_table(**b)["s2"], t.schema.field("s2")), a["s2"])


def test_tensor_to_numpy_chunks_slices_and_empty():
    a = _arrays(n=5)
    t = S.build_table(**a)
    f2, f1 = t.schema.field("s2"), t.schema.field("s1")
    whole = S.tensor_to_numpy(t["s2"], f2)
    assert whole.shape == (5, 2, 12, 16, 16) and whole.dtype == np.uint16
    np.testing.assert_array_equal(whole, a["s2"])
    col = t["s2"].chunk(0)
    chunked = pa.chunked_array([col.slice(0, 2), col.slice(2, 0), col.slice(2)])
    np.testing.assert_array_equal(S.tensor_to_numpy(chunked, f2), a["s2"])
    np.testing.assert_array_equal(S.tensor_to_numpy(col.slice(3, 2), f2), a["s2"][3:])  # non-zero offset
    np.testing.assert_array_equal(S.tensor_to_numpy(t["s1"].chunk(0).slice(1, 3), f1), a["s1"][1:4])
    empty = S.tensor_to_numpy(col.slice(5), f2)
    assert empty.shape == (0, 2, 12, 16, 16) and empty.dtype == np.uint16
    assert S.tensor_to_numpy(pa.chunked_array([], t["s1"].type), f1).shape == (0, 2, 2, 16, 16)
    with pytest.raises(ValueError, match="metadata"):
        S.tensor_to_numpy(col, pa.field("s2", col.type))
    with pytest.raises(ValueError, match="do not hold"):
        S.tensor_to_numpy(col, f1)  # s1's field: the width does not match
    with pytest.raises(TypeError, match="not a tensor column"):
        S.tensor_to_numpy(t["epsg"], t.schema.field("epsg"))


def test_tensor_field_rebuilds_lost_metadata():
    sch = S.shard_schema(3, 24)
    bare = pa.schema([f.remove_metadata() for f in sch])  # a reader that dropped field metadata
    for name in ("s2", "s1"):
        assert S.tensor_field(bare, name).metadata == sch.field(name).metadata
        assert S.tensor_field(sch, name).equals(sch.field(name), check_metadata=True)
    assert S.tensor_field(bare, "s2_doy") == sch.field("s2_doy")  # not a tensor: as is
    with pytest.raises(ValueError, match="no 's2_valid' column"):
        S.tensor_field(pa.schema([bare.field("s2")]), "s2")
    odd = pa.schema([pa.field("s2", pa.binary(1000)), bare.field("s2_valid")])
    with pytest.raises(ValueError, match="bytes per row are not"):
        S.tensor_field(odd, "s2")


def test_empty_shard_round_trip(tmp_path):
    a = _arrays()
    e = {k: (v[:0] if isinstance(v, np.ndarray) else v[:0]) for k, v in a.items()}
    (tmp_path / "e.parquet").write_bytes(S.table_to_parquet(S.build_table(**e)))
    back = S.read_shards(tmp_path / "e.parquet")
    assert back["s2"].shape == (0, 2, 12, 16, 16) and back["s1"].shape == (0, 2, 2, 16, 16)
    assert back["sample_id"] == []


def test_v1_shards_still_read(tmp_path):
    a = _arrays()
    pq.write_table(_v1_table(a), tmp_path / "v1.parquet", row_group_size=2)
    assert pq.read_table(tmp_path / "v1.parquet").schema.field("s2").type == pa.fixed_shape_tensor(
        pa.uint16(), [2, 12, 16, 16])
    back = S.read_shards(tmp_path / "v1.parquet")
    np.testing.assert_array_equal(back["s2"], a["s2"])
    np.testing.assert_array_equal(back["s1"], a["s1"])
    assert back["s2"].dtype == np.uint16 and back["s1"].dtype == np.float16
    t = pq.read_table(tmp_path / "v1.parquet")
    sliced = t["s1"].combine_chunks().slice(1)
    np.testing.assert_array_equal(S.tensor_to_numpy(sliced, None), a["s1"][1:])
    assert S.tensor_to_numpy(sliced.slice(2), None).shape == (0, 2, 2, 16, 16)


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
    assert ns["t"]["s2"].num_chunks >= 2  # several files / row groups: combine_chunks is needed
    cat = {k: np.concatenate([a[k], b[k]]) for k in ("s2", "s1", "s2_valid", "s2_doy")}
    assert ns["s2"].shape == (23, 2, 12, 16, 16) and ns["s1"].shape == (23, 2, 2, 16, 16)
    assert ns["s2"].dtype == np.uint16 and ns["s1"].dtype == np.float16
    for k in ("s2", "s1", "s2_valid", "s2_doy"):
        np.testing.assert_array_equal(ns[k], cat[k], err_msg=k)
    assert ns["bands"] == list(S.S2_BANDS)
    if source == "docstring":
        assert ns["ids"] == a["sample_id"] + b["sample_id"]


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda a: a.update(s2=a["s2"][:, :, :11]), r"s2 must be \(N, T, 12, H, H\)"),
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


def test_band_sums_match_numpy():
    a = _arrays()
    s2 = S.s2_band_sums(a["s2"], a["s2_valid"])
    sel = a["s2"][a["s2_valid"]]
    for b in range(12):
        v = sel[:, b][sel[:, b] != 0].astype(np.float64)
        assert s2["count"][b] == v.size and s2["sum"][b] == int(v.sum())
        assert s2["sumsq"][b] == int((v**2).sum())
    st = S.finalize_stats(s2, S.S2_BANDS)
    v0 = sel[:, 0][sel[:, 0] != 0].astype(np.float64)
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
        s2_sums=S.s2_band_sums(a["s2"], a["s2_valid"]),
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
        d["schema_version"] == 2
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
    sums = S.add_sums(S.s2_band_sums(a["s2"], a["s2_valid"]), S.s2_band_sums(b["s2"], b["s2_valid"]))
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
    item = {"level": "item", "id": "z", "reason": "malformed_item", "detail": "bad json"}
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
