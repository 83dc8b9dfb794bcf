"""OSCD converter on a tiny copy in the official layout: pixel-exact bands, both label kinds, crops that cover
every pixel and paste back, splits, rejects with reasons, and the writer end to end."""

from __future__ import annotations

import json

import fsspec
import numpy as np
import pytest
from pydantic import ValidationError

from pipeline import shards as S
from pipeline.config import StorageConfig
from pipeline.convert import BadInput, SourceError, get, oscd, read_raster
from pipeline.convert.writer import write_benchmark
from pipeline.storage import filesystem, upload_tree
from tests.pipeline.convert._layouts_oscd_segmunich import (
    UTM31_ORIGIN,
    make_oscd,
    oscd_canonical,
    write_raster,
)

FS = fsspec.filesystem("file")
TILE = 16


@pytest.fixture()
def layout(tmp_path):
    return tmp_path, make_oscd(tmp_path)


def _items(root, **options):
    items, rejects = oscd.list_items(str(root), oscd.OSCDOptions(tile_px=TILE, **options), FS)
    return {i.id: i for i in items}, rejects


def _read(root, city, **options):
    items, _ = _items(root, **options)
    return oscd.read_item(items[city], oscd.OSCDOptions(tile_px=TILE, **options), FS)


def _paste(samples, field, h, w, fill):
    """Paste tiles back with their crop geometry: (T, C, H, W) images or (H, W) labels."""
    first = getattr(samples[0], field)
    out = np.full(first.shape[:-2] + (h, w), fill, first.dtype)
    for s in samples:
        _, y, x, hh, ww = s.crop
        assert (hh, ww) == (h, w)
        part = getattr(s, field)
        out[..., y:y + TILE, x:x + TILE] = part[..., :h - y, :w - x]
    return out


@pytest.mark.parametrize(("h", "w", "side", "expected"), [
    (16, 16, 16, [(0, 0)]),
    (17, 16, 16, [(0, 0), (16, 0)]),
    (16, 33, 16, [(0, 0), (0, 16), (0, 32)]),
    (5, 5, 16, [(0, 0)]),
    (32, 32, 16, [(0, 0), (0, 16), (16, 0), (16, 16)]),
])
def test_tiles_cover_every_pixel_without_overlap(h, w, side, expected):
    got = oscd.tiles(h, w, side)
    assert [(t.y, t.x) for t in got] == expected
    cover = np.zeros((h + side, w + side), int)
    for t in got:
        cover[t.y:t.y + side, t.x:t.x + side] += 1
    assert (cover[:h, :w] == 1).all()


def test_tiles_reject_empty_sizes():
    with pytest.raises(ValueError, match="positive sizes"):
        oscd.tiles(0, 5, 16)


def test_parse_cities_and_dates():
    assert oscd.parse_cities("aguasclaras,bercy, bordeaux,bercy\n") == ["aguasclaras", "bercy", "bordeaux"]
    assert oscd.parse_dates("date_1: 20161130\ndate_2: 20170829\n", "d").tolist() == [335, 241]
    with pytest.raises(BadInput, match="unreadable_file: d: expected 'date_1"):
        oscd.parse_dates("date_1: 20161130\n", "d")
    with pytest.raises(BadInput, match="unreadable_file"):
        oscd.parse_dates("date_1: 20161330\ndate_2: 20170829\n", "d")


def test_list_items_splits_labels_and_val_cities(layout):
    root, cities = layout
    items, rejects = _items(root)
    assert rejects == []
    assert sorted(items) == sorted(cities)
    for name, c in cities.items():
        assert items[name].split == c.split
        assert items[name].files["label"].endswith(f"/{name}/cm/cm.png" if c.label_kind == "png"
                                                   else f"/{name}/cm/{name}-cm.tif")
    items, _ = _items(root, val_cities=("bercy",))
    assert {n: i.split for n, i in items.items()} == {
        "abudhabi": "train", "bercy": "val", "cupertino": "train", "dubai": "test", "lasvegas": "test"}


def test_options_fail_naming_the_field(layout):
    root, _ = layout
    with pytest.raises(ValidationError, match="tile_px"):
        oscd.OSCDOptions(tile_px=15)
    with pytest.raises(ValidationError, match="val_cities"):
        oscd.OSCDOptions(val_cities=("bercy", "bercy"))
    with pytest.raises(ValidationError, match="tile_size"):
        oscd.OSCDOptions.model_validate({"tile_size": 64})
    with pytest.raises(SourceError, match=r"options.val_cities: \['dubai'\] are not train cities"):
        oscd.list_items(str(root), {"val_cities": ["dubai"]}, FS)


def test_missing_split_file_names_the_source(tmp_path):
    with pytest.raises(SourceError, match="Images/train.txt not found: --source must be the folder"):
        oscd.list_items(str(tmp_path), None, FS)


@pytest.mark.parametrize("city", ["abudhabi", "bercy", "dubai", "lasvegas"])
def test_read_item_pixel_exact_bands_labels_and_crops_paste_back(layout, city):
    root, cities = layout
    c = cities[city]
    h, w = c.change.shape
    samples = _read(root, city)
    assert len(samples) == -(-h // TILE) * -(-w // TILE)
    assert [s.sample_id for s in samples] == [f"{city}_{y}_{x}" for y in range(0, h, TILE)
                                              for x in range(0, w, TILE)]
    for s in samples:
        assert s.split == c.split and s.crop[0] == city
        assert s.s2_10m.shape == (2, 4, TILE, TILE) and s.s2_20m.shape == (2, 8, TILE, TILE)
        assert s.s2_10m.dtype == s.s2_20m.dtype == np.uint16 and s.label.dtype == np.uint8
        assert s.s2_doy.tolist() == [335, 241] and s.s2_valid.tolist() == [True, True]
        assert s.sources == [f"{oscd.IMAGES}/{city}/imgs_1_rect", f"{oscd.IMAGES}/{city}/imgs_2_rect"]
    for t, d in enumerate(oscd.DATES):
        g10, g20 = oscd_canonical(c, d)
        np.testing.assert_array_equal(_paste(samples, "s2_10m", h, w, 0)[t], g10)
        np.testing.assert_array_equal(_paste(samples, "s2_20m", h, w, 0)[t], g20)
    np.testing.assert_array_equal(_paste(samples, "label", h, w, 255), c.change)
    # padding past the image: zero pixels (nodata), ignored labels
    last = samples[-1]
    _, y, x, _, _ = last.crop
    pad = np.ones((TILE, TILE), bool)
    pad[:h - y, :w - x] = False
    if pad.any():
        assert (last.s2_10m[..., pad] == 0).all() and (last.s2_20m[..., pad] == 0).all()
        assert (last.label[pad] == 255).all()


def test_read_item_b10_is_not_read(layout):
    root, cities = layout
    samples = _read(root, "bercy")  # one 16 x 16 tile
    b10 = [cities["bercy"].bands[(d, "B10")] for d in oscd.DATES]
    for t in range(2):
        stored = np.concatenate([samples[0].s2_10m[t], samples[0].s2_20m[t]])
        assert not any((stored == b10[t]).all(axis=(1, 2)))


def test_label_kinds_values(layout):
    root, cities = layout
    png = _read(root, "abudhabi")
    tif = _read(root, "bercy")[0].label
    assert set(np.unique(np.concatenate([s.label.ravel() for s in png]))) == {0, 1, 255}  # 255: padding
    raw = read_raster(FS, str(root / LABEL)).data[0]
    np.testing.assert_array_equal(tif[raw == 1], 0)
    np.testing.assert_array_equal(tif[raw == 2], 1)
    np.testing.assert_array_equal(tif[(raw != 1) & (raw != 2)], 255)


def test_png_preferred_over_tif_and_rgba_copies(layout):
    root, cities = layout
    cm = root / oscd.LABELS["train"] / "bercy" / "cm"
    raw = np.zeros((16, 16), np.uint8)
    raw[:4] = 255
    write_raster(cm / "cm.png", raw[None], driver="PNG")
    items, _ = _items(root)
    assert items["bercy"].files["label"].endswith("/bercy/cm/cm.png")
    assert _read(root, "bercy")[0].label[:4].all() and not _read(root, "bercy")[0].label[4:].any()
    # an RGBA copy: colour bands decide, the opaque alpha band does not make everything change
    rgba = np.stack([raw, raw, raw, np.full_like(raw, 255)])
    write_raster(cm / "cm.png", rgba, driver="PNG", photometric="RGB")
    np.testing.assert_array_equal(_read(root, "bercy")[0].label, (raw != 0).astype(np.uint8))
    # grey + alpha
    write_raster(cm / "cm.png", rgba[[0, 3]], driver="PNG")
    np.testing.assert_array_equal(_read(root, "bercy")[0].label, (raw != 0).astype(np.uint8))
    # GDAL reads by content: a 5-band GeoTIFF named cm.png is no PNG label
    write_raster(cm / "cm.png", np.zeros((5, 16, 16), np.uint8))
    with pytest.raises(BadInput, match=r"bad_shape: .*bercy/cm/cm.png: 5 bands, expected 1-4"):
        _read(root, "bercy")


def test_georeference_of_tiles(layout):
    root, _ = layout
    samples = {s.sample_id: s for s in _read(root, "abudhabi")}
    s = samples["abudhabi_16_32"]
    assert s.epsg == 32631
    assert (s.x_min, s.y_max) == (UTM31_ORIGIN[0] + 320.0, UTM31_ORIGIN[1] - 160.0)
    assert 1.6 < s.lon < 1.7 and 47.8 < s.lat < 47.9  # centre 400360 E, 5299800 N in UTM 31N (CM 3° E)
    plain = _read(root, "bercy")[0]
    assert plain.epsg == 0 and np.isnan(plain.lon) and (plain.x_min, plain.y_max) == (0.0, 0.0)


def test_missing_dates_file_gives_unknown_day(layout):
    root, _ = layout
    (root / oscd.IMAGES / "bercy" / "dates.txt").unlink()
    assert _read(root, "bercy")[0].s2_doy.tolist() == [0, 0]


def test_list_time_rejects(layout):
    root, _ = layout
    (root / oscd.LABELS["test"] / "dubai" / "cm" / "dubai-cm.tif").unlink()
    images = root / oscd.IMAGES
    (images / "test.txt").write_text("dubai,lasvegas,bercy")
    items, rejects = _items(root)
    assert sorted(items) == ["abudhabi", "cupertino", "lasvegas"]
    got = {(r.id, r.reason): r.detail for r in rejects}
    assert set(got) == {("dubai", "missing_file"), ("bercy", "excluded")}
    assert "no dubai/cm/cm.png or dubai/cm/dubai-cm.tif" in got[("dubai", "missing_file")]
    assert got[("bercy", "excluded")] == "listed in both train.txt and test.txt"
    assert all(r.level == "sample" for r in rejects)


def test_label_in_the_other_split_folder_is_found(layout):
    root, _ = layout
    src = root / oscd.LABELS["test"] / "lasvegas"
    src.rename(root / oscd.LABELS["train"] / "lasvegas")
    items, rejects = _items(root)
    assert rejects == []
    assert items["lasvegas"].files["label"] == str(root / oscd.LABELS["train"] / "lasvegas" / "cm" / "cm.png")


B, LABEL = f"{oscd.IMAGES}/bercy", f"{oscd.LABELS['train']}/bercy/cm/bercy-cm.tif"
#: damage -> (files it touches, what they become: None deleted, b"" cut short, bytes, an array), error
DAMAGE = {
    "missing_band": ([f"{B}/imgs_2_rect/B8A.tif"], None, f"missing_file: {B}/imgs_2_rect/B8A.tif not found"),
    "truncated": ([f"{B}/imgs_1_rect/B03.tif"], b"", r"unreadable_file: .*imgs_1_rect/B03.tif"),
    "not_a_tiff": ([f"{B}/imgs_1_rect/B04.tif"], b"not a tiff", r"unreadable_file: .*B04.tif"),
    "two_bands": ([f"{B}/imgs_1_rect/B05.tif"], np.ones((2, 16, 16), np.uint16),
                  r"bad_shape: .*B05.tif: 2 bands, expected 1"),
    "band_size": ([f"{B}/imgs_1_rect/B12.tif"], np.ones((1, 16, 15), np.uint16),
                  r"bad_shape: .*B12.tif: 15x16 px, but .*B02.tif is 16x16"),
    "date_size": ([f"{B}/imgs_2_rect/{b}.tif" for b in oscd.BANDS_10M + oscd.BANDS_20M],
                  np.ones((1, 17, 16), np.uint16), r"bad_shape: .*imgs_2_rect/.*16x17 px"),
    "label_size": ([LABEL], np.ones((1, 8, 16), np.uint8),
                   r"bad_shape: .*bercy-cm.tif: 16x8 px, images are 16x16"),
    "label_bands": ([LABEL], np.ones((2, 16, 16), np.uint8), r"bad_shape: .*bercy-cm.tif: 2 bands"),
    "float_dn": ([f"{B}/imgs_1_rect/B06.tif"], np.full((1, 16, 16), 0.5, np.float32),
                 r"unreadable_file: .*B06.tif: float32 values in \[0.5, 0.5\] are not uint16 DNs"),
    "bad_dates": ([f"{B}/dates.txt"], b"2016-11-30\n", r"unreadable_file: .*dates.txt: expected"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_read_item_rejects_with_reasons(layout, damage):
    root, _ = layout
    items, _ = _items(root)
    paths, new, match = DAMAGE[damage]
    for rel in paths:
        path = root / rel
        if new is None:
            path.unlink()
        elif isinstance(new, bytes):
            path.write_bytes(new or path.read_bytes()[:200])
        else:
            write_raster(path, new)
    with pytest.raises(BadInput, match=match):
        oscd.read_item(items["bercy"], oscd.OSCDOptions(tile_px=TILE), FS)


def test_float_dns_that_are_integers_are_kept(layout):
    root, cities = layout
    a = cities["bercy"].bands[("imgs_1_rect", "B06")]
    write_raster(root / oscd.IMAGES / "bercy/imgs_1_rect/B06.tif", a[None].astype(np.float32))
    np.testing.assert_array_equal(_read(root, "bercy")[0].s2_20m[0, 2], a)


def test_registered_benchmark_facts():
    b = get("oscd")
    assert b is oscd.BENCHMARK
    assert (b.info.task, b.info.classes, b.max_slots, b.s2_20m_gsd, b.tile_px) == (
        "change", ("no change", "change"), 2, 10.0, 128)
    assert b.options is oscd.OSCDOptions


def test_write_benchmark_end_to_end(layout, tmp_path_factory):
    root, cities = layout
    opts = oscd.OSCDOptions(tile_px=TILE, val_cities=("cupertino",))
    items, rejects = oscd.list_items(str(root), opts, FS)
    samples = [s for i in items for s in oscd.read_item(i, opts, FS)]
    out = tmp_path_factory.mktemp("oscd_out")
    manifest = write_benchmark(str(out), samples, oscd.INFO, tile_px=TILE, max_slots=2, s2_20m_gsd=10.0,
                               rows_per_shard=7, rejects=rejects)
    n = {c: -(-v.change.shape[0] // TILE) * -(-v.change.shape[1] // TILE) for c, v in cities.items()}
    assert manifest["benchmark"] == {"name": "oscd", "task": "change", "classes": ["no change", "change"],
                                     "splits": {"test": n["dubai"] + n["lasvegas"], "train": n["abudhabi"]
                                                + n["bercy"], "val": n["cupertino"]}}
    assert manifest["s2_groups"]["s2_20m"]["gsd"] == 10.0
    assert json.loads((out / "manifest.json").read_text()) == manifest
    data = S.read_shards(out / "shards")
    assert data["info"] == oscd.INFO
    assert data["s2_20m"].shape[1:] == (2, 8, TILE, TILE)
    # the shards paste back to the original city pixels and labels
    rows = [i for i, c in enumerate(data["crop_image"]) if c == "dubai"]
    h, w = cities["dubai"].change.shape
    label = np.full((h, w), 255, np.uint8)
    b02 = np.zeros((2, h, w), np.uint16)
    for i in rows:
        y, x = data["crop_y"][i], data["crop_x"][i]
        label[y:y + TILE, x:x + TILE] = data["label"][i][:h - y, :w - x]
        b02[:, y:y + TILE, x:x + TILE] = data["s2_10m"][i][:, 0, :h - y, :w - x]
        assert data["split"][i] == "test"
    np.testing.assert_array_equal(label, cities["dubai"].change)
    np.testing.assert_array_equal(b02, np.stack([cities["dubai"].bands[(d, "B02")] for d in oscd.DATES]))


def test_from_s3_same_samples_as_local(layout, s3_server, s3_bucket):
    root, _ = layout
    storage = StorageConfig(endpoint_url=s3_server["endpoint_url"])
    upload_tree(root, f"s3://{s3_bucket}/oscd", storage)
    fs, path = filesystem(f"s3://{s3_bucket}/oscd", storage)
    opts = oscd.OSCDOptions(tile_px=TILE)
    items, rejects = oscd.list_items(path, opts, fs)
    assert rejects == [] and [i.id for i in items] == ["abudhabi", "bercy", "cupertino", "dubai", "lasvegas"]
    remote = oscd.read_item(next(i for i in items if i.id == "abudhabi"), opts, fs)
    local = _read(root, "abudhabi")
    assert [s.sample_id for s in remote] == [s.sample_id for s in local]
    for a, b in zip(remote, local, strict=True):
        np.testing.assert_array_equal(a.s2_20m, b.s2_20m)
        np.testing.assert_array_equal(a.label, b.label)
        assert a.sources == b.sources
