"""BigEarthNet v2 (reBEN) and v1 on tiny copies in their official layouts: bands on their groups' grids,
the official 19-class order, the 43 -> 19 mapping, splits, excluded patches, rejects (no Ray)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from pipeline.config import StorageConfig
from pipeline.convert import BadInput, SourceError, get
from pipeline.convert.bigearthnet import CLASSES, CLC43_TO_19, BigEarthNetOptions, onto_grid
from pipeline.convert.writer import write_benchmark
from pipeline.shards import S2_10M_BANDS, S2_20M_BANDS, read_shards
from pipeline.storage import filesystem
from tests.pipeline.convert.layouts import make_ben_v1, make_ben_v2, pixels, s2_name_v2, write_tif

B = get("bigearthnet")


def _list(root, **opts):
    fs, path = filesystem(str(root), StorageConfig())
    items, rejects = B.list_items(path, BigEarthNetOptions(**opts), fs)
    return items, rejects, fs


def _read(items, fs, **opts):
    """``({id: sample}, {id: BadInput})``."""
    got, bad = {}, {}
    for it in items:
        try:
            (got[it.id],) = B.read_item(it, BigEarthNetOptions(**opts), fs)
        except BadInput as e:
            bad[it.id] = e
    return got, bad


def _area_mean(a: np.ndarray, side: int) -> np.ndarray:
    k = a.shape[0] // side
    return np.floor(a.astype(np.float64).reshape(side, k, side, k).mean(axis=(1, 3)) + 0.5).astype(np.uint16)


def test_the_19_classes_are_in_the_official_order_not_alphabetical():
    assert CLASSES[:3] == ("Urban fabric", "Industrial or commercial units", "Arable land")
    assert CLASSES[-1] == "Marine waters" and len(CLASSES) == 19
    assert list(CLASSES) != sorted(CLASSES)
    assert B.info.task == "multilabel" and B.s2_20m_gsd == 20.0 and B.tile_px == 120


def test_the_43_to_19_table():
    assert len(CLC43_TO_19) == 43
    dropped = sorted(k for k, v in CLC43_TO_19.items() if v is None)
    assert len(dropped) == 11 and "Bare rock" in dropped
    assert "Road and rail networks and associated land" in dropped
    assert sorted({v for v in CLC43_TO_19.values() if v is not None}) == list(range(19))
    grass = CLASSES.index("Natural grassland and sparsely vegetated areas")
    assert CLC43_TO_19["Sparsely vegetated areas"] == CLC43_TO_19["Natural grassland"] == grass
    assert CLC43_TO_19["Annual crops associated with permanent crops"] == CLASSES.index("Permanent crops")


@pytest.mark.parametrize(("n", "side", "expect"), [
    (120, 120, "copy"), (60, 60, "copy"), (20, 60, "replicate"), (60, 120, "replicate"), (120, 60, "mean"),
])
def test_onto_grid(n, side, expect):
    a = pixels(f"g{n}", (n, n))
    out = onto_grid(a, side)
    assert out.shape == (side, side) and out.dtype == np.uint16
    if expect == "copy":
        np.testing.assert_array_equal(out, a)
    elif expect == "replicate":
        np.testing.assert_array_equal(out, np.kron(a, np.ones((side // n, side // n), np.uint16)))
    else:
        np.testing.assert_array_equal(out, _area_mean(a, side))
    assert onto_grid(np.array([[1, 2], [2, 2]], np.uint16), 1)[0, 0] == 2  # 7 / 4 = 1.75: rounded half up


V2 = [
    {"labels": ["Urban fabric", "Marine waters"], "split": "train"},
    {"labels": ["Arable land"], "split": "validation"},
    {"labels": ["Coniferous forest", "Pastures"], "split": "test"},
]


@pytest.mark.parametrize("all_120", [False, True], ids=["native", "every-band-120px"])
def test_v2_bands_labels_splits_and_s1(tmp_path, all_120):
    patches = make_ben_v2(tmp_path, V2, all_120=all_120)
    items, rejects, fs = _list(tmp_path)
    assert rejects == [] and len(items) == 3
    got, bad = _read(items, fs)
    assert bad == {}
    write_benchmark(str(tmp_path / "out"), list(got.values()), B.info, tile_px=120, max_slots=1,
                    s2_20m_gsd=20.0)
    a = read_shards(tmp_path / "out" / "shards")
    assert a["s2_10m"].shape == (3, 1, 4, 120, 120) and a["s2_20m"].shape == (3, 1, 8, 60, 60)
    for i, sid in enumerate(a["sample_id"]):
        p = patches[sid]
        for j, b in enumerate(S2_10M_BANDS):
            np.testing.assert_array_equal(a["s2_10m"][i, 0, j], p.bands[b])
        for j, b in enumerate(S2_20M_BANDS):
            src = p.bands[b]
            if src.shape[0] == 60:
                want = src
            elif src.shape[0] == 20:  # 60 m: each pixel covers 3 x 3 of the 20 m grid
                want = np.kron(src, np.ones((3, 3), np.uint16))
            else:  # shipped at 120 px: the pixel-area mean
                want = _area_mean(src, 60)
            np.testing.assert_array_equal(a["s2_20m"][i, 0, j], want, err_msg=b)
        np.testing.assert_array_equal(a["s1"][i, 0, 0], p.s1["VV"].astype(np.float16))
        np.testing.assert_array_equal(a["s1"][i, 0, 1], p.s1["VH"].astype(np.float16))
        assert a["s1_valid"][i, 0] and a["s1_doy"][i, 0] == 164 and a["s2_doy"][i, 0] == 164  # 2017-06-13
        want = np.zeros(19, np.uint8)
        want[[CLASSES.index(x) for x in p.labels]] = 1
        np.testing.assert_array_equal(a["label"][i], want)
        assert (a["epsg"][i], a["x_min"][i], a["y_max"][i]) == (32633, *p.origin)
        assert np.isfinite(a["lon"][i]) and np.isfinite(a["lat"][i])
        assert a["sources"][i][0] == f"BigEarthNet-S2/{'_'.join(sid.split('_')[:-2])}/{sid}"
    split = dict(zip(a["sample_id"], a["split"], strict=True))
    assert [split[s2_name_v2(k)] for k in range(3)] == ["train", "val", "test"]  # validation -> val
    assert a["label"][a["sample_id"].index(s2_name_v2(0))][[0, 18]].tolist() == [1, 1]


def test_v2_snow_and_cloud_patches_are_excluded_and_absent_flags_flag_nothing(tmp_path):
    spec = [{"labels": ["Arable land"], "split": "train", "snow": True},
            {"labels": ["Arable land"], "split": "train", "cloud": True},
            {"labels": ["Arable land"], "split": "test"}]
    make_ben_v2(tmp_path / "full", spec)
    items, rejects, _ = _list(tmp_path / "full")
    assert [it.id for it in items] == [s2_name_v2(2)]
    assert {r.id: r.reason for r in rejects} == {s2_name_v2(0): "excluded", s2_name_v2(1): "excluded"}
    assert "contains_seasonal_snow" in rejects[0].detail and "contains_cloud_or_shadow" in rejects[1].detail
    make_ben_v2(tmp_path / "trimmed", spec, flags=False)  # a metadata.parquet without the flag columns
    items, rejects, _ = _list(tmp_path / "trimmed")
    assert len(items) == 3 and rejects == []


def test_v2_the_snow_cloud_table_excludes_what_it_lists(tmp_path):
    make_ben_v2(tmp_path, V2, flags=False)
    table = pa.table({"patch_id": [s2_name_v2(1), "S2B_MSIL2A_20180101T000000_N9999_R001_T33UUP_1_1"]})
    pq.write_table(table, tmp_path / "metadata_for_patches_with_snow_cloud_or_shadow.parquet")
    items, rejects, _ = _list(tmp_path)
    assert [it.id for it in items] == [s2_name_v2(0), s2_name_v2(2)]
    assert sorted(r.id for r in rejects) == sorted(table["patch_id"].to_pylist())
    assert {r.reason for r in rejects} == {"excluded"}
    items, rejects, _ = _list(tmp_path, excluded_metadata=None)
    assert len(items) == 3 and rejects == []


def test_v2_rejects(tmp_path):
    spec = [{"labels": ["Arable land"], "split": "train"},  # fine
            {"labels": ["Arable land", "Moon dust"], "split": "train"},  # unknown class
            {"labels": ["Pastures"], "split": "train", "skip_bands": ("B8A",)},  # missing band file
            {"labels": ["Pastures"], "split": "test"},  # corrupt band (below)
            {"labels": ["Pastures"], "split": "test"},  # wrong size (below)
            {"labels": ["Pastures"], "split": "test"},  # two bands in one file (below)
            {"labels": ["Pastures"], "split": "test", "no_s1": True}]  # no S1: written without it
    patches = make_ben_v2(tmp_path, spec)
    d = lambda k: tmp_path / "BigEarthNet-S2" / "_".join(s2_name_v2(k).split("_")[:-2]) / s2_name_v2(k)  # noqa: E731
    (d(3) / f"{s2_name_v2(3)}_B03.tif").write_bytes(b"garbage, not a GeoTIFF")
    write_tif(d(4) / f"{s2_name_v2(4)}_B05.tif", pixels("x", (50, 50)))
    write_tif(d(5) / f"{s2_name_v2(5)}_B12.tif", pixels("y", (2, 60, 60)))
    items, rejects, fs = _list(tmp_path)
    assert {r.id: r.reason for r in rejects} == {s2_name_v2(1): "unknown_class"}
    assert "Moon dust" in rejects[0].detail
    got, bad = _read(items, fs)
    assert sorted(got) == [s2_name_v2(0), s2_name_v2(6)]
    assert {k: e.reason for k, e in bad.items()} == {
        s2_name_v2(2): "missing_file", s2_name_v2(3): "unreadable_file", s2_name_v2(4): "bad_shape",
        s2_name_v2(5): "bad_shape"}
    assert f"{s2_name_v2(2)}_B8A.tif not found" in bad[s2_name_v2(2)].detail
    assert "(1, 50, 50)" in bad[s2_name_v2(4)].detail and "(2, 60, 60)" in bad[s2_name_v2(5)].detail
    assert got[s2_name_v2(6)].s1 is None and got[s2_name_v2(0)].s1 is not None
    assert len(got) + len(bad) + len(rejects) == len(patches)
    # an S1 patch that is there but broken is a reject, not a silent NaN
    s1 = patches[s2_name_v2(0)].s1_name
    (tmp_path / "BigEarthNet-S1" / "_".join(s1.split("_")[:-3]) / s1 / f"{s1}_VH.tif").write_bytes(b"junk")
    with pytest.raises(BadInput, match=r"unreadable_file: .*_VH.tif"):
        B.read_item(items[0], BigEarthNetOptions(), fs)
    got, _ = _read(items[:1], fs, s1=False)
    assert got[s2_name_v2(0)].s1 is None


V1 = [
    {"labels": ["Non-irrigated arable land", "Broad-leaved forest", "Water courses"], "split": "train"},
    {"labels": ["Road and rail networks and associated land", "Sea and ocean"], "split": "val"},
    {"labels": ["Peatbogs", "Sparsely vegetated areas", "Natural grassland"], "split": "test"},
    {"labels": ["Pastures"], "split": None},  # in no CSV
    {"labels": ["Coniferous forest"], "split": "train", "bad_json": True},
    {"labels": ["Lunar regolith"], "split": "train"},
]


@pytest.mark.parametrize("all_120", [False, True], ids=["native", "every-band-120px"])
def test_v1_43_to_19_labels_splits_and_rejects(tmp_path, all_120):
    patches, files = make_ben_v1(tmp_path, V1, all_120=all_120)
    with open(tmp_path / files["test"], "a") as f:
        f.write("S2A_MSIL2A_20170613T101031_99_99,S1A_IW_GRDH_1SDV_20170613T165043_33UUP_99_99\n")
    items, rejects, fs = _list(tmp_path, split_files=files)
    names = sorted(patches)
    assert {r.id: r.reason for r in rejects} == {names[3]: "excluded",
                                                 "S2A_MSIL2A_20170613T101031_99_99": "missing_file"}
    assert {it.id: it.split for it in items} == {names[0]: "train", names[1]: "val", names[2]: "test",
                                                 names[4]: "train", names[5]: "train"}
    got, bad = _read(items, fs)
    assert {k: e.reason for k, e in bad.items()} == {names[4]: "unreadable_file", names[5]: "unknown_class"}
    assert np.flatnonzero(got[names[0]].label).tolist() == [2, 8, 17]  # arable, broad-leaved, inland waters
    assert np.flatnonzero(got[names[1]].label).tolist() == [18]  # roads dropped, sea -> marine waters
    assert np.flatnonzero(got[names[2]].label).tolist() == [11, 15]  # grassland, sparse -> 11; peatbogs 15
    s = got[names[0]]
    p = patches[names[0]]
    np.testing.assert_array_equal(s.s2_10m[0, 2], p.bands["B04"])
    b01 = p.bands["B01"]
    want = _area_mean(b01, 60) if all_120 else np.kron(b01, np.ones((3, 3), np.uint16))
    np.testing.assert_array_equal(s.s2_20m[0, 0], want)
    assert s.sources == [f"BigEarthNet-v1.0/{names[0]}"] and s.s1 is None
    assert s.s2_doy.tolist() == [164] and (s.epsg, s.x_min, s.y_max) == (32633, *p.origin)


def test_v1_needs_split_files_and_a_source_needs_a_layout(tmp_path):
    make_ben_v1(tmp_path / "v1", V1[:1])
    with pytest.raises(SourceError, match=r"BigEarthNet-v1.0/ found \(v1\), which needs options.split_files"):
        _list(tmp_path / "v1")
    with pytest.raises(SourceError, match=r"options.split_files.val: nope.csv not found"):
        _list(tmp_path / "v1", split_files={"val": "nope.csv"})
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match=r"neither metadata.parquet \(v2\) nor BigEarthNet-v1.0/ \(v1\)"):
        _list(tmp_path / "empty")
    with pytest.raises(SourceError, match=r"metadata.parquet not found"):
        _list(tmp_path / "empty", version="v2")
    pq.write_table(pa.table({"patch_id": ["a"], "split": ["train"]}), tmp_path / "empty" / "metadata.parquet")
    with pytest.raises(SourceError, match=r"metadata.parquet has no column \['labels'\]"):
        _list(tmp_path / "empty")


def test_options_are_checked():
    with pytest.raises(ValidationError, match=r"version v1 needs split_files"):
        BigEarthNetOptions(version="v1")
    with pytest.raises(ValidationError, match=r"version\n.*'auto', 'v2' or 'v1'"):
        BigEarthNetOptions(version="v3")
