"""``jobs.convert`` on Ray for OSCD and SegMunich: official-layout copies with a damaged item each, the yaml
presets through the CLI, written + rejected = found, the shards paste back / hold the remapped labels, and
a re-run writes nothing new."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from jobs import convert
from jobs.cli import ConfigError
from pipeline import shards as S
from pipeline.convert import oscd, segmunich
from tests.pipeline.convert._layouts_oscd_segmunich import make_oscd, make_segmunich

REPO = Path(__file__).resolve().parents[2]


def _files(out: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``out``: its bytes and modification time (a rewrite with equal bytes shows too)."""
    return {str(p.relative_to(out)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in out.rglob("*") if p.is_file()}


def test_convert_oscd_job(ray_session, tmp_path, capsys):
    src, out = tmp_path / "src", tmp_path / "out"
    cities = make_oscd(src)
    (src / oscd.IMAGES / "cupertino" / "imgs_2_rect" / "B11.tif").write_bytes(b"truncated")
    argv = ["--config", str(REPO / "configs/convert/oscd.yaml"), "--source", str(src), "--output", str(out),
            "--set", "options.tile_px=16", "--set", "options.val_cities=[bercy]", "--set", "rows_per_shard=2"]
    assert convert.main(argv) == 0
    assert "found = written + rejected" in capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text())
    n = {c: -(-v.change.shape[0] // 16) * -(-v.change.shape[1] // 16) for c, v in cities.items()}
    assert manifest["counts"] == {"found": 5, "written": sum(n.values()) - n["cupertino"], "rejected": 1,
                                  "items_written": 4}
    assert manifest["benchmark"]["splits"] == {"train": n["abudhabi"], "val": n["bercy"],
                                               "test": n["dubai"] + n["lasvegas"]}
    assert manifest["tile_px"] == 16 and manifest["s2_groups"]["s2_20m"]["gsd"] == 10.0
    assert manifest["config"]["options"] == {"tile_px": 16, "val_cities": ["bercy"]}
    rejects = pq.read_table(out / "rejects.parquet").to_pylist()
    assert [(r["id"], r["reason"]) for r in rejects] == [("cupertino", "unreadable_file")]
    assert "cupertino/imgs_2_rect/B11.tif" in rejects[0]["detail"] and str(src) not in rejects[0]["detail"]
    data = S.read_shards(out / "shards")
    assert data["info"] == oscd.INFO and len(data["sample_id"]) == manifest["counts"]["written"]
    # every city pastes back to its label from the shards' crop geometry
    for city in ("abudhabi", "bercy", "dubai", "lasvegas"):
        h, w = cities[city].change.shape
        label = np.full((h, w), 7, np.uint8)
        for i in (i for i, c in enumerate(data["crop_image"]) if c == city):
            y, x = data["crop_y"][i], data["crop_x"][i]
            assert (data["crop_h"][i], data["crop_w"][i]) == (h, w)
            label[y:y + 16, x:x + 16] = data["label"][i][:h - y, :w - x]
        np.testing.assert_array_equal(label, cities[city].change)
    # the same command again writes nothing new
    before = _files(out)
    summary = convert.run(convert.ConvertConfig(benchmark="oscd", source=str(src), output=str(out),
                                                options={"tile_px": 16, "val_cities": ["bercy"]},
                                                rows_per_shard=2))
    # 5 items in shards of 2: 3 shards, all done already
    assert summary["shards_converted"] == 0 and summary["shards_skipped"] == summary["shards"] == 3
    assert _files(out) == before


def test_convert_oscd_job_fails_on_bad_options_before_any_work(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    make_oscd(src)
    cfg = dict(benchmark="oscd", source=str(src), output=str(out))
    with pytest.raises(ConfigError, match=r"options.tile_px: Input should be a multiple of 2"):
        convert.run(convert.ConvertConfig(**cfg, options={"tile_px": 15}))
    with pytest.raises(ConfigError, match=r"--source .*: options.val_cities: \['dubai'\] are not train"):
        convert.run(convert.ConvertConfig(**cfg, options={"val_cities": ["dubai"]}))
    assert not out.exists()


def test_convert_segmunich_job(ray_session, tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    images = make_segmunich(src)
    (src / "TUM_128/train/label/2.tif").unlink()
    cfg = convert.ConvertConfig(benchmark="segmunich", source=str(src / "TUM_128"), output=str(out),
                                options={"val_fraction": 0.34, "seed": 1}, rows_per_shard=2)
    summary = convert.run(cfg)
    assert (summary["found"], summary["written"], summary["rejected"]) == (6, 5, 1)
    assert summary["rejects_by_reason"] == {"missing_file": 1}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["tile_px"] == 128 and manifest["benchmark"]["classes"] == list(segmunich.CLASSES)
    assert sum(manifest["benchmark"]["splits"].values()) == 5 and manifest["benchmark"]["splits"]["test"] == 2
    rejects = pq.read_table(out / "rejects.parquet").to_pylist()
    assert [(r["id"], r["reason"], r["detail"]) for r in rejects] == [
        ("train_2", "missing_file", "train/label/2.tif not found")]
    data = S.read_shards(out / "shards")
    assert data["info"] == segmunich.INFO
    for i, sid in enumerate(data["sample_id"]):
        np.testing.assert_array_equal(data["label"][i], images[sid].mask)
        np.testing.assert_array_equal(data["s2_10m"][i, 0, :3], images[sid].bands[1:4])  # B02 B03 B04
        assert not data["s2_10m"][i, 0, 3].any() and not data["s2_20m"][i, 0, 5].any()  # B08, B09
    before = _files(out)
    assert convert.run(cfg)["shards_converted"] == 0
    assert _files(out) == before
