"""``pipeline.convert.base`` (records, table building, raster reading) and ``pipeline.convert.writer``
(shard encoding, train-only statistics, manifest + rejects, in-process writing)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from rasterio.warp import transform as warp

from pipeline.config import StorageConfig
from pipeline.convert import (
    BENCHMARKS,
    BadInput,
    Sample,
    get,
    read_raster,
    register,
    relpath,
    samples_to_table,
)
from pipeline.convert.writer import convert_in_process, encode_shard, finish, write_benchmark
from pipeline.shards import BenchmarkInfo, read_shards, sha256, table_to_arrays
from pipeline.stac import Reject
from pipeline.storage import filesystem
from tests.pipeline.convert.layouts import pixels, write_tif

INFO = BenchmarkInfo("tiny", "classification", ("a", "b", "c"))
H = 8


def _sample(sid: str, split: str = "train", label: int = 0, s1: bool = False, crop=None,
            value=None) -> Sample:
    """``value``: every S2 pixel that value (else pixels fixed by the id)."""
    g10, g20 = (1, 4, H, H), (1, 8, H // 2, H // 2)
    s10 = pixels(f"{sid}10", g10) if value is None else np.full(g10, value, np.uint16)
    s20 = pixels(f"{sid}20", g20) if value is None else np.full(g20, value, np.uint16)
    return Sample(sample_id=sid, split=split, s2_10m=s10, s2_20m=s20, label=label, sources=[f"{sid}.tif"],
                  s1=pixels(f"{sid}s1", (1, 2, H, H), np.float16) if s1 else None, crop=crop)


def test_samples_to_table_sorts_rows_and_fills_what_a_benchmark_lacks():
    t = samples_to_table([_sample("b", label=2, s1=True), _sample("a", "val", 1)], INFO)
    a = table_to_arrays(t)
    assert a["sample_id"] == ["a", "b"] and a["label"].tolist() == [1, 2] and a["split"] == ["val", "train"]
    assert a["s1_valid"][:, 0].tolist() == [False, True]
    assert np.isnan(a["s1"][0].astype(np.float32)).all() and not np.isnan(a["s1"][1].astype(np.float32)).any()
    assert a["s2_valid"].all() and (a["s2_doy"] == 0).all() and a["epsg"].tolist() == [0, 0]
    assert np.isnan(a["lon"]).all() and a["sources"] == [["a.tif"], ["b.tif"]]
    assert a["info"] == INFO


def test_samples_to_table_errors():
    with pytest.raises(ValueError, match=r"no samples"):
        samples_to_table([], INFO)
    with pytest.raises(ValueError, match=r"either every sample of a table has crop geometry or none has"):
        samples_to_table([_sample("a", crop=("img", 0, 0, 16, 16)), _sample("b")], INFO)
    with pytest.raises(ValueError, match=r"label_class values must lie in \[0, 3\)"):
        samples_to_table([_sample("a", label=3)], INFO)
    with pytest.raises(ValueError, match=r"split needs 1 values from .* \(unknown: \['validation'\]\)"):
        samples_to_table([_sample("a", "validation")], INFO)


def test_crop_geometry_is_recorded():
    t = samples_to_table([_sample("t1", crop=("img", 0, 8, 12, 20)),
                          _sample("t0", crop=("img", 0, 0, 12, 20))], INFO)
    a = table_to_arrays(t)
    assert a["crop_image"] == ["img", "img"] and a["crop_x"].tolist() == [0, 8]
    assert a["crop_h"].tolist() == [12, 12] and a["crop_w"].tolist() == [20, 20]


def test_encode_shard_is_deterministic_and_sums_the_train_split_only():
    rows = [_sample("a", "train", value=10), _sample("b", "val", value=1000),
            _sample("c", "test", value=1000)]
    enc = encode_shard("a", rows, INFO)
    assert (enc.path, enc.rows) == ("shards/a.parquet", 3)
    assert enc.splits == {"train": 1, "val": 1, "test": 1}
    assert encode_shard("a", list(reversed(rows)), INFO).data == enc.data
    alone = encode_shard("a", rows[:1], INFO)
    assert enc.s2_sums == alone.s2_sums  # val and test pixels never reach the statistics
    assert enc.s2_sums["count"][1] == H * H and enc.s2_sums["sum"][1] == 10 * H * H


def test_finish_writes_rejects_then_manifest_and_leaves_unchanged_files_alone(tmp_path):
    rows = [_sample("a", "train", value=10), _sample("b", "val", value=30)]
    enc = encode_shard("a", rows, INFO)
    (tmp_path / "shards").mkdir()
    (tmp_path / enc.path).write_bytes(enc.data)
    rejects = [Reject("sample", "z", "missing_file", "z.tif not found"),
               Reject("sample", "y", "bad_shape", "(3, 2, 2)")]
    kw = dict(tile_px=H, max_slots=1, s2_20m_gsd=20.0, config={"benchmark": "tiny"}, found=4,
              extra_counts={"items_written": 2})
    m = finish(str(tmp_path), [enc], rejects, INFO, **kw)
    assert m["counts"] == {"found": 4, "written": 2, "rejected": 2, "items_written": 2}
    assert m["benchmark"] == {"name": "tiny", "task": "classification", "classes": ["a", "b", "c"],
                              "splits": {"train": 1, "val": 1}}
    assert m["band_stats"]["s2"]["mean"][1] == 10.0 and m["band_stats"]["s2"]["std"][1] == 0.0  # train only
    assert m["shards"] == [{"path": enc.path, "rows": 2, "bytes": len(enc.data), "sha256": sha256(enc.data)}]
    assert json.loads((tmp_path / "manifest.json").read_text()) == m
    rej = pq.read_table(tmp_path / "rejects.parquet").to_pylist()
    assert [(r["id"], r["reason"]) for r in rej] == [("y", "bad_shape"), ("z", "missing_file")]
    stamps = {p: (tmp_path / p).stat().st_mtime_ns for p in ("manifest.json", "rejects.parquet")}
    record = {"path": enc.path, "rows": enc.rows, "bytes": len(enc.data), "sha256": sha256(enc.data),
              "splits": dict(enc.splits), "s2_sums": enc.s2_sums, "s1_sums": enc.s1_sums}
    assert finish(str(tmp_path), [record], list(reversed(rejects)), INFO, **kw) == m  # records == encoded
    assert {p: (tmp_path / p).stat().st_mtime_ns for p in stamps} == stamps
    finish(str(tmp_path), [record], rejects[:1], INFO, **{**kw, "found": 3})
    assert (tmp_path / "rejects.parquet").stat().st_mtime_ns != stamps["rejects.parquet"]
    assert json.loads((tmp_path / "manifest.json").read_text())["counts"]["rejected"] == 1


def test_write_benchmark_round_trips_through_read_shards(tmp_path):
    rows = [_sample(f"s{i}", ("train", "val", "test")[i % 3], i % 3) for i in range(7)]
    m = write_benchmark(str(tmp_path), rows, INFO, tile_px=H, max_slots=1, s2_20m_gsd=20.0, rows_per_shard=3,
                        rejects=[Reject("sample", "x", "excluded", "in no split")])
    assert [s["path"] for s in m["shards"]] == ["shards/s0.parquet", "shards/s3.parquet", "shards/s6.parquet"]
    assert m["counts"] == {"found": 8, "written": 7, "rejected": 1}
    a = read_shards(tmp_path / "shards")
    assert a["sample_id"] == [f"s{i}" for i in range(7)] and a["label"].tolist() == [i % 3 for i in range(7)]
    np.testing.assert_array_equal(a["s2_10m"][4], rows[4].s2_10m)
    np.testing.assert_array_equal(a["s2_20m"][4], rows[4].s2_20m)


def test_bad_input_becomes_a_sample_reject():
    e = BadInput("bad_shape", "(12, 64, 64)")
    assert str(e) == "bad_shape: (12, 64, 64)"
    assert e.reject("x") == Reject("sample", "x", "bad_shape", "(12, 64, 64)")
    with pytest.raises(ValueError, match=r"unknown reject reason 'oops'"):
        BadInput("oops", "?").reject("x")


def test_read_raster_and_its_georeference(tmp_path):
    fs, _ = filesystem(str(tmp_path), StorageConfig())
    data = pixels("r", (2, 6, 4))
    p = write_tif(tmp_path / "r.tif", data, epsg=32632, x=500000.0, y=5000000.0, res=20.0)
    r = read_raster(fs, str(p))
    np.testing.assert_array_equal(r.data, data)
    assert r.epsg == 32632 and r.transform == (20.0, 0.0, 500000.0, 0.0, -20.0, 5000000.0)
    g = r.georef()
    lon, lat = warp("EPSG:32632", "EPSG:4326", [500000.0 + 40.0], [5000000.0 - 60.0])
    assert (g["epsg"], g["x_min"], g["y_max"]) == (32632, 500000.0, 5000000.0)
    assert (g["lon"], g["lat"]) == pytest.approx((lon[0], lat[0]))
    with pytest.raises(BadInput, match=r"missing_file: gone.tif not found"):
        read_raster(fs, str(tmp_path / "gone.tif"), "gone.tif")
    details = set()
    for body in (b"not a tiff", b"II*\x00 a broken TIFF header"):
        (tmp_path / "bad.tif").write_bytes(body)
        for _ in range(2):
            with pytest.raises(BadInput, match=r"unreadable_file: bad.tif: ") as e:
                read_raster(fs, str(tmp_path / "bad.tif"), "bad.tif")
            assert "vsimem" not in e.value.detail and "the file" in e.value.detail
            details.add(e.value.detail)
    assert len(details) == 2  # one per file, the same on every read


def test_relpath():
    assert relpath("/data/src", "/data/src/a/b.tif") == "a/b.tif"
    assert relpath("bucket/src/", "bucket/src/a.tif") == "a.tif"
    assert relpath("/data/src", "/elsewhere/a.tif") == "/elsewhere/a.tif"


def test_registry():
    assert get("eurosat") is BENCHMARKS["eurosat"] and get("bigearthnet").name == "bigearthnet"
    with pytest.raises(ValueError, match=r"unknown benchmark 'imagenet'"):
        get("imagenet")
    with pytest.raises(ValueError, match=r"benchmark 'eurosat' registered twice"):
        register(get("eurosat"))


def test_convert_in_process_accounts_for_every_item(tmp_path):
    """The Ray-free conversion: every item written or rejected with its reason, the manifest counts agree."""
    from tests.pipeline.convert.layouts import make_eurosat

    copy = make_eurosat(tmp_path / "src", {"Forest": 3, "River": 2})
    (copy.class_root / "River" / "River_2.tif").write_bytes(b"II*\x00 truncated")
    m = convert_in_process("eurosat", str(tmp_path / "src"), str(tmp_path / "out"), {"seed": 0})
    assert m["counts"] == {"found": 5, "written": 4, "rejected": 1}
    rejects = pq.read_table(tmp_path / "out" / "rejects.parquet").to_pylist()
    assert [(r["id"], r["reason"]) for r in rejects] == [("River_2", "unreadable_file")]
    assert sorted(read_shards(tmp_path / "out" / "shards")["label"]) == [1, 1, 1, 8]  # Forest, River
