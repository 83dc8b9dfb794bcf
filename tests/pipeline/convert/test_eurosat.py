"""EuroSAT-MS on tiny copies in its official layouts: bands, labels, splits, rejects (no Ray)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from pydantic import ValidationError
from rasterio.warp import transform as warp

from pipeline.config import StorageConfig
from pipeline.convert import SourceError, get
from pipeline.convert.eurosat import CLASSES, EuroSATOptions, seeded_split
from pipeline.convert.writer import write_benchmark
from pipeline.shards import read_shards, to_cube
from pipeline.storage import filesystem
from tests.conftest import REPO
from tests.pipeline.convert.layouts import (
    make_eurosat,
    pixels,
    write_spectralgpt_splits,
    write_tif,
    write_torchgeo_splits,
)

B = get("eurosat")


def _list(root, **opts):
    fs, path = filesystem(str(root), StorageConfig())
    items, rejects = B.list_items(path, EuroSATOptions(**opts), fs)
    return items, rejects, fs


def _read_all(items, fs, **opts):
    return [s for it in items for s in B.read_item(it, EuroSATOptions(**opts), fs)]


def _reasons(rejects) -> dict[str, str]:
    return {r.id: r.reason for r in rejects}


def test_classes_are_the_sorted_folder_names():
    assert CLASSES == tuple(sorted(CLASSES)) and len(CLASSES) == 10
    assert B.info.task == "classification" and B.s2_20m_gsd == 10.0 and B.tile_px == 64


@pytest.mark.parametrize("nested", [False, True], ids=["EuroSAT_MS", "torchgeo-nesting"])
def test_bands_are_pixel_exact_in_canonical_order_with_georeference(tmp_path, nested):
    copy = make_eurosat(tmp_path, {"Forest": 2, "SeaLake": 1, "AnnualCrop": 1}, nested=nested)
    items, rejects, fs = _list(tmp_path)
    assert rejects == [] and [it.id for it in items] == sorted(copy.images)
    samples = _read_all(items, fs)
    write_benchmark(str(tmp_path / "out"), samples, B.info, tile_px=64, max_slots=1, s2_20m_gsd=10.0)
    a = read_shards(tmp_path / "out" / "shards")
    # canonical B01 B02 B03 B04 B05 B06 B07 B08 B8A B09 B11 B12 from the file's B01..B12, B8A (B10 dropped)
    file_index = [0, 1, 2, 3, 4, 5, 6, 7, 12, 8, 10, 11]
    cube = to_cube(a["s2_10m"], a["s2_20m"], resampling="nearest")
    for i, sid in enumerate(a["sample_id"]):
        np.testing.assert_array_equal(cube[i, 0], copy.images[sid][file_index])
        assert a["s2_20m"].shape[-1] == 64  # one 10 m grid: never resampled
        x, y = copy.origins[sid]
        assert (a["epsg"][i], a["x_min"][i], a["y_max"][i], a["gsd"][i]) == (32631, x, y, 10.0)
        lon, lat = warp("EPSG:32631", "EPSG:4326", [x + 320.0], [y - 320.0])
        assert (a["lon"][i], a["lat"][i]) == pytest.approx((lon[0], lat[0]), abs=1e-4)
        assert a["label"][i] == CLASSES.index(sid.rsplit("_", 1)[0])
        assert a["sources"][i] == [f"{sid.rsplit('_', 1)[0]}/{sid}.tif"]
    assert a["info"].classes == CLASSES
    assert not a["s1_valid"].any() and np.isnan(a["s1"].astype(np.float32)).all()


def test_a_folder_that_is_no_eurosat_class_is_rejected(tmp_path):
    make_eurosat(tmp_path, {"Forest": 2, "Clouds": 1})
    items, rejects, _ = _list(tmp_path)
    assert [it.id for it in items] == ["Forest_1", "Forest_2"]
    assert _reasons(rejects) == {"Clouds_1": "unknown_class"}
    assert "Clouds" in rejects[0].detail


def test_torchgeo_split_files(tmp_path):
    make_eurosat(tmp_path, {"Forest": 4, "River": 2})
    files = write_torchgeo_splits(tmp_path, {"train": ["Forest_1", "Forest_2", "River_1"],
                                             "val": ["Forest_3"], "test": ["River_2", "River_9", "Clouds_3"]})
    items, rejects, _ = _list(tmp_path, split_files=files)
    assert {it.id: it.split for it in items} == {"Forest_1": "train", "Forest_2": "train", "River_1": "train",
                                                 "Forest_3": "val", "River_2": "test"}
    # Forest_4 in no list; River_9 listed, not there; Clouds_3 listed, not a class
    assert _reasons(rejects) == {"Forest_4": "excluded", "River_9": "missing_file",
                                 "Clouds_3": "unknown_class"}
    assert len(items) + len(rejects) == 8


def test_spectralgpt_split_lines(tmp_path):
    make_eurosat(tmp_path, {"Highway": 2, "Pasture": 2})
    files = write_spectralgpt_splits(tmp_path, {"train": ["Highway_1", "Pasture_1", "Pasture_2"],
                                                "test": ["Highway_2"]}, CLASSES)
    assert "\t" in (tmp_path / files["train"]).read_text()
    items, rejects, _ = _list(tmp_path, split_files=files)
    assert {it.id: it.split for it in items} == {"Highway_1": "train", "Pasture_1": "train",
                                                 "Pasture_2": "train", "Highway_2": "test"}
    assert rejects == []


def test_a_split_file_label_that_disagrees_with_the_folder_order_fails(tmp_path):
    make_eurosat(tmp_path, {"Highway": 1})
    (tmp_path / "train.txt").write_text("tif/Highway/Highway_1.tif\t7\n")
    with pytest.raises(SourceError, match=r"label 7 of Highway_1 is not the id of its folder 'Highway' \(3"):
        _list(tmp_path, split_files={"train": "train.txt"})


def test_split_file_errors(tmp_path):
    make_eurosat(tmp_path, {"Forest": 1})
    with pytest.raises(SourceError, match=r"options.split_files.val: nope.txt not found"):
        _list(tmp_path, split_files={"val": "nope.txt"})
    (tmp_path / "a.txt").write_text("Forest_1.tif\n")
    (tmp_path / "b.txt").write_text("Forest_1.tif\n")
    with pytest.raises(SourceError, match=r"Forest_1 is listed in both train and test"):
        _list(tmp_path, split_files={"train": "a.txt", "test": "b.txt"})


def test_seeded_split_is_stratified_and_depends_only_on_ids_and_seed(tmp_path):
    make_eurosat(tmp_path, {"Forest": 10, "River": 10, "Industrial": 5}, size=8)
    items, rejects, _ = _list(tmp_path, seed=3)
    split = {it.id: it.split for it in items}
    for cls, n in (("Forest", 10), ("River", 10), ("Industrial", 5)):
        got = [split[f"{cls}_{i}"] for i in range(1, n + 1)]
        assert (got.count("test"), got.count("val")) == (round(n * 0.2), round(n * 0.2))
    ids = {"Forest": [f"Forest_{i}" for i in range(1, 11)], "River": [f"River_{i}" for i in range(1, 11)],
           "Industrial": [f"Industrial_{i}" for i in range(1, 6)]}
    assert seeded_split(ids, 3, 0.2, 0.2) == split
    shuffled = {k: list(reversed(v)) for k, v in reversed(ids.items())}
    assert seeded_split(shuffled, 3, 0.2, 0.2) == split  # no dependence on listing order
    assert seeded_split(ids, 4, 0.2, 0.2) != split
    # nor on Python's hash seed (another process, another PYTHONHASHSEED)
    code = ("import json,sys; from pipeline.convert.eurosat import seeded_split; "
            "print(json.dumps(seeded_split(json.loads(sys.argv[1]), 3, 0.2, 0.2), sort_keys=True))")
    out = subprocess.run([sys.executable, "-c", code, json.dumps(ids)], cwd=REPO, capture_output=True,
                         text=True, env={"PYTHONHASHSEED": "12345", "PATH": "/usr/bin:/bin"}, check=True)
    assert json.loads(out.stdout) == split


def test_bad_files_are_rejected_with_reasons(tmp_path):
    make_eurosat(tmp_path, {"Forest": 1})
    d = tmp_path / "EuroSAT_MS"
    (d / "River").mkdir()
    (d / "River" / "River_1.tif").write_bytes(b"II*\x00 this is not a tiff")
    write_tif(d / "River" / "River_2.tif", pixels("r2", (12, 64, 64)))  # a band short
    write_tif(d / "River" / "River_3.tif", pixels("r3", (13, 32, 32)))  # wrong size
    write_tif(d / "River" / "River_4.tif", pixels("r4", (13, 64, 64), np.float32))  # not uint16
    items, rejects, fs = _list(tmp_path)
    assert rejects == []
    got, bad = {}, {}
    for it in items:
        try:
            got[it.id] = B.read_item(it, EuroSATOptions(), fs)
        except Exception as e:  # noqa: BLE001 - the converter's BadInput, checked below
            bad[it.id] = e
    assert list(got) == ["Forest_1"]
    assert {k: e.reason for k, e in bad.items()} == {"River_1": "unreadable_file", "River_2": "bad_shape",
                                                      "River_3": "bad_shape", "River_4": "bad_shape"}
    assert "River/River_1.tif" in bad["River_1"].detail and str(tmp_path) not in bad["River_1"].detail
    assert "(12, 64, 64)" in bad["River_2"].detail and "(13, 32, 32)" in bad["River_3"].detail
    assert "float32" in bad["River_4"].detail
    fs.rm(items[0].files["image"])
    with pytest.raises(Exception, match=r"missing_file: Forest/Forest_1.tif not found"):
        B.read_item(items[0], EuroSATOptions(), fs)


def test_a_source_without_class_folders_or_with_two_copies_fails(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match=r"no EuroSAT class folders"):
        _list(tmp_path / "empty")
    make_eurosat(tmp_path / "a", {"Forest": 1})
    make_eurosat(tmp_path / "b", {"Forest": 1}, nested=True)
    with pytest.raises(SourceError, match=r"more than one EuroSAT copy under the source: \['a/EuroSAT_MS', "
                                          r"'b/ds/images/remote_sensing/otherDatasets/sentinel_2/tif'\]"):
        _list(tmp_path)


def test_options_are_checked():
    with pytest.raises(ValidationError, match=r"val_fraction \+ test_fraction must be < 1"):
        EuroSATOptions(val_fraction=0.5, test_fraction=0.5)
    with pytest.raises(ValidationError, match=r"split_files\.holdout"):
        EuroSATOptions(split_files={"holdout": "x.txt"})
    with pytest.raises(ValidationError, match=r"(?s)split_file\n.*Extra inputs are not permitted"):
        EuroSATOptions(split_file="x.txt")
