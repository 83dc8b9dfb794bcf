"""SegMunich converter on a tiny copy in the official layout: pixel-exact bands (B08, B09 absent -> 0), the
raw code remap with 255 as ignore, splits, rejects with reasons, and the writer end to end."""

from __future__ import annotations

import hashlib
import logging

import fsspec
import numpy as np
import pytest
from pydantic import ValidationError

from pipeline import shards as S
from pipeline.config import StorageConfig
from pipeline.convert import BadInput, SourceError, get, segmunich
from pipeline.convert.writer import write_benchmark
from pipeline.storage import filesystem, upload_tree
from tests.pipeline.convert._layouts_oscd_segmunich import SEG_TRUTH, make_segmunich, seg_image, write_raster

FS = fsspec.filesystem("file")


@pytest.fixture()
def layout(tmp_path):
    return tmp_path, make_segmunich(tmp_path)


def _items(source, **options):
    items, rejects = segmunich.list_items(str(source), segmunich.SegMunichOptions(**options), FS)
    assert rejects == []
    return {i.id: i for i in items}


@pytest.mark.parametrize(("raw", "cls"), [
    (0, 0), (21, 1), (22, 2), (23, 3), (31, 4), (5, 5), (32, 6), (33, 7), (41, 8), (13, 9), (14, 10),
    (11, 11), (12, 12),
    # codes the table does not name: ignored, even those equal to a class id
    (1, 255), (4, 255), (10, 255), (24, 255), (99, 255), (255, 255),
])
def test_remap_table(raw, cls):
    r = segmunich.remap(np.array([[raw]], np.uint8))
    assert r.mask.tolist() == [[cls]] and r.mask.dtype == np.uint8
    assert r.unknown_px == (cls == 255) and r.unknown_codes == ((raw,) if cls == 255 else ())


def test_remap_counts_unknown_codes_of_wider_types():
    r = segmunich.remap(np.array([[21, 300, 7], [300, 0, -1]], np.int16))
    assert r.mask.tolist() == [[1, 255, 255], [255, 0, 255]]
    assert (r.unknown_px, r.unknown_codes) == (4, (-1, 7, 300))
    with pytest.raises(BadInput, match="unreadable_file: x.tif: label pixel type float32"):
        segmunich.remap(np.zeros((2, 2), np.float32), "x.tif")


def test_classes_follow_the_benchmark_order():
    assert segmunich.CLASSES == (
        "Background", "Arable land", "Permanent crops", "Pastures", "Forests", "Surface water", "Shrub",
        "Open spaces", "Wetlands", "Mine dump", "Artificial vegetation", "Urban fabric", "Buildings")
    b = get("segmunich")
    assert b is segmunich.BENCHMARK and b.info.classes == segmunich.CLASSES
    assert (b.info.task, b.tile_px, b.max_slots, b.s2_20m_gsd, b.options) == (
        "segmentation", 128, 1, 10.0, segmunich.SegMunichOptions)


def test_list_items_from_the_split_files(layout):
    root, images = layout
    for source in (root, root / segmunich.ROOT):  # the unpack folder or TUM_128/ itself
        items = _items(source)
        assert sorted(items) == sorted(images)
        assert {i.split for k, i in items.items() if k.startswith("train_")} == {"train"}
        assert items["test_7"].files == {
            "img": str(root / "TUM_128/test/img/7.tif"), "label": str(root / "TUM_128/test/label/7.tif")}


def test_duplicate_stems_listed_once(layout):
    root, _ = layout
    (root / "TUM_128/dataset/train.txt").write_text("0\n1\n\n0\n")
    assert sorted(_items(root)) == ["test_0", "test_7", "train_0", "train_1"]


def test_val_fraction_is_seeded_and_stable(layout):
    root, _ = layout
    a = {k: i.split for k, i in _items(root, val_fraction=0.5, seed=3).items()}
    assert a == {k: i.split for k, i in _items(root, val_fraction=0.5, seed=3).items()}
    assert sorted(a.values()).count("val") == 2 and all(a[k] == "test" for k in ("test_0", "test_7"))
    assert all(k.startswith("train_") for k, v in a.items() if v == "val")
    # the documented rule, so other tools can rebuild the split: first half by sha256("<seed>/<stem>")
    order = sorted("0123", key=lambda s: hashlib.sha256(f"3/{s}".encode()).hexdigest())
    assert {k for k, v in a.items() if v == "val"} == {f"train_{s}" for s in order[:2]}
    # the order of train.txt does not change the choice
    (root / "TUM_128/dataset/train.txt").write_text("3\n2\n1\n0\n")
    assert a == {k: i.split for k, i in _items(root, val_fraction=0.5, seed=3).items()}


def test_options_fail_naming_the_field(tmp_path):
    with pytest.raises(ValidationError, match="val_fraction"):
        segmunich.SegMunichOptions(val_fraction=1.0)
    with pytest.raises(ValidationError, match="tile_px"):
        segmunich.list_items(str(tmp_path), {"tile_px": 64}, FS)
    with pytest.raises(SourceError, match="TUM_128/dataset/train.txt not found: --source must be TUM_128/"):
        segmunich.list_items(str(tmp_path), None, FS)


def test_read_item_pixel_exact_bands_and_labels(layout, caplog):
    root, images = layout
    items = _items(root)
    for sid, img in images.items():
        with caplog.at_level(logging.WARNING, logger="pipeline.convert.segmunich"):
            (s,) = segmunich.read_item(items[sid], None, FS)
        band = dict(zip(segmunich.FILE_BANDS, img.bands))
        zero = np.zeros((128, 128), np.uint16)
        assert s.sample_id == sid and s.split == img.split and s.crop is None
        assert s.s2_10m.shape == (1, 4, 128, 128) and s.s2_20m.shape == (1, 8, 128, 128)
        for i, b in enumerate(("B02", "B03", "B04", "B08")):
            np.testing.assert_array_equal(s.s2_10m[0, i], band.get(b, zero))
        for i, b in enumerate(("B01", "B05", "B06", "B07", "B8A", "B09", "B11", "B12")):
            np.testing.assert_array_equal(s.s2_20m[0, i], band.get(b, zero))
        assert not s.s2_10m[0, 3].any() and not s.s2_20m[0, 5].any()  # B08, B09 absent
        np.testing.assert_array_equal(s.label, img.mask)
        assert s.sources == [f"{img.split}/img/{img.stem}.tif"]  # relative to TUM_128/
        assert s.s2_doy.tolist() == [0] and s.epsg == 0
        assert f"{(img.raw == 99).sum()} px with unknown codes [99] set to ignore" in caplog.text
        caplog.clear()
    assert set(np.unique(img.mask)) == set(SEG_TRUTH.values()) | {255}


def test_georeferenced_image(tmp_path):
    img = seg_image(tmp_path, "train", "g", seed=5)
    write_raster(tmp_path / "TUM_128/train/img/g.tif", img.bands, epsg=32632, origin=(690000.0, 5340000.0))
    (tmp_path / "TUM_128/dataset").mkdir(parents=True)
    (tmp_path / "TUM_128/dataset/train.txt").write_text("g\n")
    (tmp_path / "TUM_128/dataset/test.txt").write_text("")
    (item,) = segmunich.list_items(str(tmp_path), None, FS)[0]
    (s,) = segmunich.read_item(item, None, FS)
    assert (s.epsg, s.x_min, s.y_max) == (32632, 690000.0, 5340000.0)
    assert 11.4 < s.lon < 11.6 and 48.1 < s.lat < 48.2  # Munich


DAMAGE = {
    "missing_img": ("img", None, r"missing_file: train/img/1.tif not found"),
    "missing_label": ("label", None, r"missing_file: train/label/1.tif not found"),
    "truncated": ("img", b"", r"unreadable_file: .*img/1.tif"),
    "not_a_tiff": ("label", b"GIF89a", r"unreadable_file: .*label/1.tif"),
    "twelve_bands": ("img", np.ones((12, 128, 128), np.uint16),
                     r"bad_shape: .*img/1.tif: 12 bands of 128x128 px, "
                     r"expected 10 bands \(B01 .* B12\) of 128x128"),
    "small_image": ("img", np.ones((10, 64, 64), np.uint16), r"bad_shape: .*img/1.tif: 10 bands of 64x64 px"),
    "label_size": ("label", np.zeros((1, 128, 120), np.uint8),
                   r"bad_shape: .*label/1.tif: 1 bands of 120x128 px, expected 1 band"),
    "label_bands": ("label", np.zeros((3, 128, 128), np.uint8), r"bad_shape: .*label/1.tif: 3 bands"),
    "only_unknown": ("label", np.full((1, 128, 128), 99, np.uint8),
                     r"unknown_class: .*label/1.tif: no pixel holds a known code \(codes \[99\]\)"),
    "float_image": ("img", np.full((10, 128, 128), 0.25, np.float32), r"unreadable_file: .*float32 values"),
    "negative_dn": ("img", np.full((10, 128, 128), -3, np.int16), r"unreadable_file: .*int16 values in \[-3"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_read_item_rejects_with_reasons(layout, damage):
    root, _ = layout
    item = _items(root)["train_1"]
    role, new, match = DAMAGE[damage]
    path = root / f"TUM_128/train/{role}/1.tif"
    if new is None:
        path.unlink()
    elif isinstance(new, bytes):
        path.write_bytes(new or path.read_bytes()[:300])
    else:
        write_raster(path, new)
    with pytest.raises(BadInput, match=match):
        segmunich.read_item(item, None, FS)


def test_write_benchmark_end_to_end(layout, tmp_path_factory):
    root, images = layout
    opts = segmunich.SegMunichOptions(val_fraction=0.25)
    items, rejects = segmunich.list_items(str(root), opts, FS)
    samples = [s for i in items for s in segmunich.read_item(i, opts, FS)]
    out = tmp_path_factory.mktemp("segmunich_out")
    manifest = write_benchmark(str(out), samples, segmunich.INFO, tile_px=128, max_slots=1, s2_20m_gsd=10.0,
                               rows_per_shard=4, rejects=rejects)
    assert manifest["benchmark"] == {"name": "segmunich", "task": "segmentation",
                                     "classes": list(segmunich.CLASSES),
                                     "splits": {"test": 2, "train": 3, "val": 1}}
    assert manifest["counts"] == {"found": 6, "written": 6, "rejected": 0}
    data = S.read_shards(out / "shards")
    assert data["info"] == segmunich.INFO and "crop_image" not in data
    by_id = {sid: i for i, sid in enumerate(data["sample_id"])}
    for sid, img in images.items():
        np.testing.assert_array_equal(data["label"][by_id[sid]], img.mask)
        np.testing.assert_array_equal(data["s2_20m"][by_id[sid], 0, 4], img.bands[7])  # B8A


def test_from_s3_same_samples_as_local(layout, s3_server, s3_bucket):
    root, images = layout
    storage = StorageConfig(endpoint_url=s3_server["endpoint_url"])
    upload_tree(root, f"s3://{s3_bucket}/seg", storage)
    fs, path = filesystem(f"s3://{s3_bucket}/seg", storage)
    items, _ = segmunich.list_items(path, None, fs)
    assert sorted(i.id for i in items) == sorted(images)
    (s,) = segmunich.read_item(next(i for i in items if i.id == "test_7"), None, fs)
    np.testing.assert_array_equal(s.label, images["test_7"].mask)
    np.testing.assert_array_equal(s.s2_20m[0, 0], images["test_7"].bands[0])  # B01
    assert s.sources == ["test/img/7.tif"]
