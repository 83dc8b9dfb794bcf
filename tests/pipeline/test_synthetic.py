"""The synthetic archive: valid COGs, items that match the files, learnable and consistent pixels,
determinism, S3 output, and the known-pattern / bad-input helpers the ingest tests rely on."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio

from pipeline import synthetic
from pipeline.config import StorageConfig
from pipeline.sensors import S1, S2, S2_SCL, SCL_CLASSES, SCL_CLOUD, find_asset_key
from pipeline.storage import filesystem
from tests.conftest import STAC_FIXTURES

S2_ALL = S2.bands + (S2_SCL,)


def _items(info) -> list[dict]:
    return info.item_collection()["features"]


def _asset(item: dict, band) -> dict:
    key = find_asset_key(band, item["assets"])
    assert key is not None, (item["id"], band.name)
    return item["assets"][key]


def _read(item: dict, band) -> np.ndarray:
    with rasterio.open(_asset(item, band)["href"]) as src:
        return src.read(1)


def _s2_items(info) -> list[dict]:
    return [i for i in _items(info) if i["properties"]["constellation"] == "sentinel-2"]


def _s1_items(info) -> list[dict]:
    return [i for i in _items(info) if i["properties"]["constellation"] == "sentinel-1"]


def _tree_digest(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# ------------------------------------------------------------------------------------ COGs, items


def test_every_asset_is_a_cog_matching_its_item(synthetic_archive):
    items = _items(synthetic_archive)
    assert len(items) == len(synthetic_archive.scenes) == 5
    blocksize = synthetic.auto_blocksize(1026)
    for item in items:
        s2 = item["properties"]["constellation"] == "sentinel-2"
        for b in S2_ALL if s2 else S1.bands:
            asset = _asset(item, b)
            assert asset["href"].startswith("/") and Path(asset["href"]).is_file()
            assert asset["type"] == synthetic.COG_MIME
            rb = asset["raster:bands"][0]
            with rasterio.open(asset["href"]) as src:
                assert (
                    src.driver == "GTiff"
                    and src.block_shapes[0][0] < src.width
                    or src.block_shapes[0][0] >= 128
                )
                assert src.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
                assert src.tags(ns="IMAGE_STRUCTURE")["COMPRESSION"] == "DEFLATE"
                assert src.tags(ns="IMAGE_STRUCTURE")["PREDICTOR"] == ("2" if s2 else "3")
                assert src.block_shapes == [(blocksize, blocksize)]
                if max(src.shape) > blocksize:
                    assert src.overviews(1), "COG without overviews"
                assert src.dtypes[0] == rb["data_type"]
                assert list(src.shape) == asset["proj:shape"]
                assert list(src.transform)[:6] == asset["proj:transform"]
                assert src.nodata == rb["nodata"]
                epsg = item["properties"].get("proj:epsg") or int(item["properties"]["proj:code"][5:])
                assert src.crs.to_epsg() == epsg
                if s2:
                    assert rb["spatial_resolution"] == b.resolution_m == src.res[0]
                    assert asset["gsd"] == b.resolution_m
                else:
                    assert src.res == (10.0, 10.0)
                    assert rb["nodata"] == -32768.0 and rb["data_type"] == "float32"
            assert asset["file:size"] == Path(asset["href"]).stat().st_size


def test_s2_items_look_like_earth_search_v1(synthetic_archive):
    fixture = json.loads(
        (STAC_FIXTURES / "earth-search-v1-c1-S2A_T20HNJ_20240311T140636_L2A.json").read_text()
    )
    band_keys = {k for k, a in fixture["assets"].items() if "reflectance" in a.get("roles", [])} | {"scl"}
    modes = set()
    for item in _s2_items(synthetic_archive):
        p = item["properties"]
        assert band_keys == set(item["assets"])
        assert item["stac_version"] == "1.0.0" and item["type"] == "Feature"
        assert p["proj:epsg"] == 32633 and p["constellation"] == "sentinel-2"
        for k in ("eo:bands", "gsd", "proj:shape", "proj:transform", "raster:bands", "roles", "title"):
            assert k in item["assets"]["red"], k
        assert item["assets"]["red"]["eo:bands"][0]["name"] == "B04"
        # radiometry convention declared as Earth Search does
        boa = synthetic_archive.scene(item["id"]).boa
        modes.add(boa)
        offset = item["assets"]["red"]["raster:bands"][0]["offset"]
        if boa == "offset":
            assert p["s2:processing_baseline"] >= "04.00" and "earthsearch:boa_offset_applied" not in p
            assert offset == -0.1 and item["collection"] == "sentinel-2-c1-l2a"
        elif boa == "legacy":
            assert p["s2:processing_baseline"] < "04.00" and offset == 0
        else:
            assert p["s2:processing_baseline"] >= "04.00" and p["earthsearch:boa_offset_applied"] is True
            assert offset == 0 and item["collection"] == "sentinel-2-l2a"
        # datetime, geometry, bbox
        t = dt.datetime.fromisoformat(p["datetime"].replace("Z", "+00:00"))
        assert t.year == 2022 and t.tzinfo is not None
        ring = item["geometry"]["coordinates"][0]
        assert ring[0] == ring[-1]
        lon, lat = zip(*ring)
        assert item["bbox"] == [min(lon), min(lat), max(lon), max(lat)]
        assert 14.0 < min(lon) < max(lon) < 18.5 and 45.0 < min(lat) < max(lat) < 46.5
    assert modes == set(synthetic.BOA_MODES)


def test_cloud_cover_and_scl_percentages_come_from_the_scl(synthetic_archive):
    for item in _s2_items(synthetic_archive):
        scl = _read(item, S2_SCL)
        p = item["properties"]
        valid = scl != 0
        assert set(np.unique(scl)) <= set(SCL_CLASSES)
        cloud = 100 * np.isin(scl[valid], (8, 9, 10)).mean()
        assert p["eo:cloud_cover"] == pytest.approx(cloud, abs=1e-4)
        assert p["s2:cloud_shadow_percentage"] == pytest.approx(100 * (scl[valid] == 3).mean(), abs=1e-4)
        assert p["s2:nodata_pixel_percentage"] == pytest.approx(100 * (~valid).mean(), abs=1e-4)
        info = synthetic_archive.scene(item["id"])
        assert info.cloud_fraction == pytest.approx(np.isin(scl[valid], SCL_CLOUD).mean(), abs=1e-9)
    covers = sorted(i["properties"]["eo:cloud_cover"] for i in _s2_items(synthetic_archive))
    assert covers[0] < 10 < covers[-1]  # a fairly clear and a cloudy scene


# ------------------------------------------------------------------------------------------ pixels


def test_nodata_edges_agree_across_bands_and_scl(synthetic_archive):
    edges = set()
    for item in _s2_items(synthetic_archive):
        nod20 = _read(item, S2_SCL) == 0
        edges.add(synthetic_archive.scene(item["id"]).edge)
        for b in S2.bands:
            a = _read(item, b)
            k = b.resolution_m / 20
            # map the band's nodata onto the 20 m grid: it must be exactly the SCL's
            if k < 1:
                nod = (a == 0)[:: int(1 / k), :: int(1 / k)]
            elif k > 1:
                nod = np.repeat(np.repeat(a == 0, int(k), 0), int(k), 1)
            else:
                nod = a == 0
            np.testing.assert_array_equal(nod, nod20, err_msg=f"{item['id']} {b.name}")
    assert {"west", "east", "none"} <= edges
    fracs = [s.nodata_fraction for s in synthetic_archive.s2]
    assert min(fracs) == 0.0 and max(fracs) > 0.05


def test_clouds_and_shadows_painted_where_the_scl_says(synthetic_archive):
    """Re-render each scene without clouds (same surface): cloud pixels are brighter, shadows darker,
    and every pixel the SCL calls clear is untouched."""
    info = synthetic_archive
    tile = info.tiles[0]
    with rasterio.open(info.truth[tile.name]) as src:
        lc = src.read(1)
    for i, item in enumerate(_s2_items(info)):
        s = info.scene(item["id"])
        when = dt.datetime.fromisoformat(s.datetime.replace("Z", "+00:00"))
        clear = synthetic.render_s2(
            tile, lc, when, seed=info.seed, scene_key=str(i), cloud_frac=0.0, edge=s.edge, boa=s.boa
        )
        scl = _read(item, S2_SCL)
        scl10 = np.repeat(np.repeat(scl, 2, 0), 2, 1)
        blue = _read(item, S2.band("B02")).astype(np.int64)
        ref = clear.bands_dn["B02"].astype(np.int64)
        untouched = np.isin(scl10, (0, 2, 4, 5, 6, 7, 11))
        np.testing.assert_array_equal(blue[untouched], ref[untouched])
        high = scl10 == 9
        if high.any():
            assert np.median(blue[high] - ref[high]) > 2500
        shadow = scl10 == 3
        if shadow.any():
            off = 1000 if s.boa == "offset" else 0
            ratio = (blue[shadow] - off) / np.maximum(ref[shadow] - off, 1)
            assert np.median(ratio) == pytest.approx(0.35, abs=0.05)
        cirrus = scl10 == 10
        if cirrus.any():
            assert np.median(blue[cirrus] - ref[cirrus]) == pytest.approx(600, abs=5)


def test_landcover_truth_and_class_spectra(synthetic_archive):
    info = synthetic_archive
    tile = info.tiles[0]
    with rasterio.open(info.truth[tile.name]) as src:
        lc = src.read(1)
        assert src.crs.to_epsg() == tile.epsg and src.transform == tile.transform(10)
        assert (
            src.dtypes[0] == "uint8" and src.block_shapes[0][0] < src.width or src.block_shapes[0][0] >= 128
        )
    classes = json.loads(Path(info.classes).read_text())["classes"]
    assert {c["id"]: c["name"] for c in classes} == synthetic.LANDCOVER_CLASSES
    frac = {synthetic.LANDCOVER_CLASSES[k]: (lc == k).mean() for k in synthetic.LANDCOVER_CLASSES}
    assert all(f > 0.02 for f in frac.values()), frac
    # the June ("legacy": DN without offset) scene: class-typical reflectance on clear pixels
    item = next(i for i in _s2_items(info) if info.scene(i["id"]).boa == "legacy")
    scl10 = np.repeat(np.repeat(_read(item, S2_SCL), 2, 0), 2, 1)
    ok = np.isin(scl10, (4, 5, 6, 11))
    nir, swir = _read(item, S2.band("B08")), np.repeat(np.repeat(_read(item, S2.band("B11")), 2, 0), 2, 1)
    med = lambda a, c: float(np.median(a[ok & (lc == synthetic.CLASS_ID[c])]))
    assert med(nir, "water") < 300 < med(nir, "urban") < med(nir, "forest")
    assert med(nir, "snow") > 6000 and med(swir, "snow") < 1500


def _ndvi_by_class(info, item, lc):
    scl10 = np.repeat(np.repeat(_read(item, S2_SCL), 2, 0), 2, 1)
    off = 1000 if info.scene(item["id"]).boa == "offset" else 0
    red = _read(item, S2.band("B04")).astype(np.float64) - off
    nir = _read(item, S2.band("B08")).astype(np.float64) - off
    ndvi = (nir - red) / np.maximum(nir + red, 1)
    ok = np.isin(scl10, (4, 5, 6, 11))
    return {
        c: float(np.median(ndvi[ok & (lc == synthetic.CLASS_ID[c])])) for c in ("water", "forest", "cropland")
    }


def test_phenology_vegetation_follows_the_season_water_does_not(synthetic_archive):
    info = synthetic_archive
    with rasterio.open(info.truth[info.tiles[0].name]) as src:
        lc = src.read(1)
    items = sorted(_s2_items(info), key=lambda i: i["properties"]["datetime"])
    winter, summer, autumn = (_ndvi_by_class(info, i, lc) for i in items)  # ~Mar, ~Jul, ~Nov
    assert summer["cropland"] - winter["cropland"] > 0.3
    assert summer["forest"] - winter["forest"] > 0.1
    assert summer["cropland"] - autumn["cropland"] > 0.3
    assert max(abs(summer["water"] - winter["water"]), abs(summer["water"] - autumn["water"])) < 0.05
    assert summer["water"] < 0


def test_southern_tile_has_its_crop_season_around_december(tmp_path):
    info = synthetic.make_archive(tmp_path, scenes=4, s1_scenes=0, seed=1, size_px=258, epsg=32720, year=2022)
    with rasterio.open(info.truth[info.tiles[0].name]) as src:
        lc = src.read(1)
        assert src.crs.to_epsg() == 32720
    items = _s2_items(info)
    assert all(i["properties"]["proj:epsg"] == 32720 for i in items)
    assert all(i["bbox"][1] < -30 for i in items)
    ndvi = {int(i["properties"]["datetime"][5:7]): _ndvi_by_class(info, i, lc) for i in items}
    assert sorted(ndvi) == [2, 5, 8, 11]
    assert ndvi[11]["cropland"] > ndvi[8]["cropland"] + 0.2  # the north would have it the other way round


def test_s1_backscatter_by_class_on_shifted_grids(synthetic_archive):
    info = synthetic_archive
    tile = info.tiles[0]
    with rasterio.open(info.truth[tile.name]) as src:
        lc = src.read(1)
    s1 = _s1_items(info)
    assert [i["collection"] for i in s1] == ["sentinel-1-rtc"] * 2
    same, other = s1
    assert same["properties"]["proj:epsg"] == tile.epsg
    assert (
        other["properties"]["proj:code"] == f"EPSG:{tile.epsg + 1}" and "proj:epsg" not in other["properties"]
    )
    for item in s1:
        p = item["properties"]
        assert p["sar:polarizations"] == ["VV", "VH"] and p["sat:orbit_state"] in ("ascending", "descending")
        assert p["constellation"] == "sentinel-1"
        # grids are not the S2 grid: co-registration has work to do
        assert (item["assets"]["vv"]["proj:transform"][2] - tile.x0) % 10 != 0
    # same-zone scene: sample the truth at the S1 pixel centres (half a pixel off -> nearest is defined)
    vv = _read(same, S1.band("VV"))
    vh = _read(same, S1.band("VH"))
    t = rasterio.Affine(*same["assets"]["vv"]["proj:transform"])
    rows, cols = np.mgrid[0 : vv.shape[0], 0 : vv.shape[1]]
    x, y = t.c + (cols + 0.5) * t.a, t.f + (rows + 0.5) * t.e
    c = np.floor((x - tile.x0) / 10).astype(int)
    r = np.floor((tile.y0 - y) / 10).astype(int)
    inside = (c >= 0) & (c < lc.shape[1]) & (r >= 0) & (r < lc.shape[0])
    cls = np.zeros(vv.shape, np.uint8)
    cls[inside] = lc[r[inside], c[inside]]
    nod = vv == -32768.0
    assert np.all(nod[~inside]) and np.array_equal(nod, vh == -32768.0)
    assert np.all(vv[~nod] > 0) and np.all(vh[~nod] > 0)
    db = 10 * np.log10(np.where(nod, 1, vv))
    med = {n: np.median(db[~nod & (cls == k)]) for k, n in synthetic.LANDCOVER_CLASSES.items()}
    assert med["water"] < -20 and med["urban"] > -6 and med["water"] < med["forest"] < med["urban"]
    # speckle: multiplicative, so within one class the dB spread is a few dB
    assert 1.5 < np.std(db[~nod & (cls == synthetic.CLASS_ID["urban"])]) < 4.0


# -------------------------------------------------------------------------- determinism, CLI, S3


def test_same_seed_gives_byte_identical_files(tmp_path):
    kw = dict(scenes=2, s1_scenes=2, seed=5, size_px=258)
    synthetic.make_archive(tmp_path / "a", **kw)
    synthetic.make_archive(tmp_path / "b", **kw, workers=2)  # processes give the same bytes
    synthetic.make_archive(tmp_path / "c", **{**kw, "seed": 6})
    a, b, c = (_tree_digest(tmp_path / n) for n in "abc")
    assert set(a) == set(b) and len(a) > 30
    # items.json differs only by the root in its hrefs
    assert {k: v for k, v in a.items() if k != "items.json"} == {
        k: v for k, v in b.items() if k != "items.json"
    }
    ia = (tmp_path / "a/items.json").read_text().replace(str(tmp_path / "a"), "ROOT")
    ib = (tmp_path / "b/items.json").read_text().replace(str(tmp_path / "b"), "ROOT")
    assert ia == ib
    assert a["truth/33TXM_landcover.tif"] != c["truth/33TXM_landcover.tif"]


def test_cli_writes_an_archive(tmp_path):
    lines = []
    info = synthetic.main(
        ["--output", str(tmp_path), "--scenes", "1", "--s1-scenes", "1", "--seed", "2", "--size-px", "252",
         "--epsg", "32633", "--epsg", "32720", "--blocksize", "128"],
        _print=lines.append,
    )  # fmt: skip
    assert len(info.tiles) == 2 and len(info.s2) == 2 and len(info.s1) == 2
    assert any("items:" in line for line in lines)
    with rasterio.open(info.s2[0].hrefs["B04"]) as src:
        assert src.block_shapes == [(128, 128)]
    # the module entry point, as users run it
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.synthetic", "--output", str(tmp_path / "m"), "--scenes", "1",
         "--s1-scenes", "1", "--size-px", "12"],
        cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "wrote 1 S2 + 1 S1 scenes over 1 tile(s)" in done.stdout
    assert len(json.loads((tmp_path / "m" / "items.json").read_text())["features"]) == 2
    with pytest.raises(ValueError, match="multiple of 6"):
        synthetic.make_archive(tmp_path / "x", size_px=1000)
    with pytest.raises(ValueError, match="boa mode"):
        synthetic.make_archive(tmp_path / "x", size_px=252, boa_modes=("nope",))
    with pytest.raises(ValueError, match="unsupported output URI"):
        synthetic.make_archive("gs://bucket/x", size_px=252)


def test_s3_output(s3_bucket, tmp_path):
    uri = f"s3://{s3_bucket}/archive"
    kw = dict(scenes=1, s1_scenes=1, seed=4, size_px=252)
    info = synthetic.make_archive(uri, **kw)
    local = synthetic.make_archive(tmp_path, **kw)
    assert info.items == f"{uri}/items.json"
    items = _items(info)  # read back through s3fs
    assert len(items) == 2
    fs, _ = filesystem(uri, StorageConfig())
    for item, litem in zip(items, _items(local)):
        for key, asset in item["assets"].items():
            assert asset["href"].startswith(f"{uri}/")
            data = fs.cat_file(asset["href"])
            assert data == Path(litem["assets"][key]["href"]).read_bytes()
            with rasterio.MemoryFile(data) as mf, mf.open() as src:
                assert list(src.shape) == asset["proj:shape"]
    assert fs.exists(info.truth["33TXM"]) and info.truth["33TXM"].startswith("s3://")
    assert json.loads(fs.cat_file(info.classes))["classes"]


def test_items_parse_with_pipeline_stac(synthetic_archive):
    stac = pytest.importorskip("pipeline.stac")
    scenes, rejects = stac.load_scenes(synthetic_archive.items, StorageConfig())
    assert rejects == []
    by_id = {s.scene_id: s for s in scenes}
    assert set(by_id) == {s.item_id for s in synthetic_archive.scenes}
    for s in synthetic_archive.s2:
        sc = by_id[s.item_id]
        assert sc.sensor == "s2" and sc.epsg == 32633
        assert sc.boa_offset == (-1000 if s.boa == "offset" else 0)
        assert set(sc.assets) == {b.name for b in S2_ALL}
    s1 = [by_id[s.item_id] for s in synthetic_archive.s1]
    assert [s.epsg for s in s1] == [32633, 32634]
    assert all(a.nodata == -32768.0 for s in s1 for a in s.assets.values())


# ---------------------------------------------------------------------------------- test helpers


def test_pattern_scene_encodes_positions(synthetic_pattern):
    item = synthetic_pattern.s2
    assert item["properties"]["earthsearch:boa_offset_applied"] is True
    b02, b03 = _read(item, S2.band("B02")), _read(item, S2.band("B03"))
    rows, cols = np.mgrid[0 : b02.shape[0], 0 : b02.shape[1]]
    for b in ("B02", "B03", "B04", "B08"):
        np.testing.assert_array_equal(_read(item, S2.band(b)), synthetic.pattern_value(b, rows, cols))
    assert b02[5, 9] == 6 and b03[5, 9] == 10
    x0, y0 = synthetic_pattern.x0, synthetic_pattern.y0
    for b in ("B05", "B11", "B01", "B09"):
        a = _read(item, S2.band(b))
        res = S2.band(b).resolution_m
        r, c = np.mgrid[0 : a.shape[0], 0 : a.shape[1]]
        want = synthetic.pattern_ramp(b, x0 + (c + 0.5) * res, y0 - (r + 0.5) * res, x0, y0)
        assert np.abs(a - want).max() <= 0.5
    scl = _read(item, S2_SCL)
    assert (scl[50:100, 50:150] == 9).all() and (scl == 9).sum() == 50 * 100 and (scl[scl != 9] == 4).all()


def test_pattern_scene_offset_mode(tmp_path):
    item = synthetic.write_pattern_scene(tmp_path, size_px=252, boa="offset")
    assert "earthsearch:boa_offset_applied" not in item["properties"]
    assert item["properties"]["s2:processing_baseline"] == "05.10"
    b02 = _read(item, S2.band("B02"))
    assert b02[0, 0] == 1001 and b02[10, 3] == 1011
    assert json.loads((tmp_path / "items.json").read_text())["features"][0]["id"] == item["id"]


def test_pattern_s1_scenes(synthetic_pattern):
    x0, y0 = synthetic_pattern.x0, synthetic_pattern.y0
    for item, code in ((synthetic_pattern.s1_same_zone, False), (synthetic_pattern.s1_next_zone, True)):
        assert ("proj:code" in item["properties"]) is code
        vv, vh = _read(item, S1.band("VV")), _read(item, S1.band("VH"))
        t = rasterio.Affine(*item["assets"]["vv"]["proj:transform"])
        if not code:
            r, c = 3, 7
            x, y = t.c + (c + 0.5) * 10, t.f - (r + 0.5) * 10
            assert vv[r, c] == pytest.approx(synthetic.pattern_s1_power("VV", x, y, x0, y0), rel=1e-6)
        np.testing.assert_allclose(vh, vv / 5, rtol=1e-6)
        assert np.all(vv > 0)


def test_bad_input_helpers(synthetic_bad_inputs, tmp_path):
    bad = synthetic_bad_inputs
    items = {p.name: p for p in Path(bad.items_dir).iterdir()}
    assert len(items) == len(bad.expected) + len(bad.good)
    with pytest.raises(json.JSONDecodeError):
        json.loads(items["BAD_MALFORMED_L2A.json"].read_text())
    load = lambda i: json.loads(items[f"{i}.json"].read_text())
    assert "red" not in load("BAD_MISSING_ASSET_L2A")["assets"]
    nocrs = load("BAD_NO_CRS_L2A")
    assert not any(k.startswith("proj:epsg") or k == "proj:code" for k in nocrs["properties"])
    assert ".." in load("BAD_DOTDOT_L2A")["assets"]["red"]["href"]
    assert load("BAD_SCHEME_L2A")["assets"]["red"]["href"].startswith("ftp://")
    with pytest.raises(rasterio.errors.RasterioIOError):
        rasterio.open(load("BAD_GARBAGE_L2A")["assets"]["red"]["href"])
    with rasterio.open(load("BAD_TRUNCATED_L2A")["assets"]["red"]["href"]) as src:  # opens, cannot be read
        with pytest.raises(rasterio.errors.RasterioIOError):
            src.read(1)
    good = load(bad.good[0])
    assert _read(good, S2.band("B04")).min() > 0
    by_reason = {r: i for i, r in bad.expected.items()}
    cloud, nodata = load(by_reason["all_cloud"]), load(by_reason["all_nodata"])
    assert np.isin(_read(cloud, S2_SCL), (8, 9)).all() and cloud["properties"]["eo:cloud_cover"] == 100
    assert _read(cloud, S2.band("B02")).min() > 1500
    for b in S2_ALL:
        assert not _read(nodata, b).any()
    # the uniform scenes share no 10.24 km cell with the good scene
    xs = {i: load(i)["assets"]["red"]["proj:transform"][2] for i in (bad.good[0], cloud["id"], nodata["id"])}
    assert len({int(x // 10240) for x in xs.values()}) == 3
    fc = json.loads(Path(bad.items).read_text())
    assert len(fc["features"]) == len(items) - 1
    # the single helpers on their own
    src = Path(good["assets"]["red"]["href"])
    t = synthetic.truncate_cog(src, tmp_path / "t.tif", keep=0.5)
    assert t.stat().st_size == src.stat().st_size // 2
    g = synthetic.corrupt_cog(tmp_path / "g.tif", size=100, seed=1)
    assert g.read_bytes() == synthetic.corrupt_cog(tmp_path / "g2.tif", size=100, seed=1).read_bytes()
    with pytest.raises(ValueError, match="kind must be one of .'cloud', 'nodata'., got 'haze'"):
        synthetic.write_uniform_scene(tmp_path / "u", "haze")
