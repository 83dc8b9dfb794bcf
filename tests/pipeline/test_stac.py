"""STAC parsing: the three real fixtures, S1 RTC items, radiometry offset, every reject reason, loading."""

from __future__ import annotations

import copy
import datetime as dt
import json
import math
import pickle
from pathlib import Path

import pytest

from pipeline.config import StorageConfig
from pipeline.sensors import S2
from pipeline.stac import (
    REJECT_REASONS,
    AssetRef,
    Reject,
    Scene,
    detect_sensor,
    load_scenes,
    parse_item,
    parse_items,
    processing_baseline,
    resolve_href,
    s2_boa_offset,
    search_scenes,
)

FIXTURES = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures" / "stac"
ES_V1 = "earth-search-v1-c1-S2A_T20HNJ_20240311T140636_L2A.json"
ES_V0 = "S2A_28QCH_20200714_0_L2A.json"
PC = "S2B_MSIL2A_20190629T212529_R043_T06VVN_20201006T080531.json"
STORAGE = StorageConfig()
UTC = dt.UTC


def fixture(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


def localise(item: dict, root: Path) -> dict:
    """The item with every asset href rewritten to a local path under ``root`` (as the ingest tests do)."""
    item = copy.deepcopy(item)
    for key, a in item["assets"].items():
        a["href"] = str(root / item["id"] / f"{key}.tif")
    return item


def s1_item(item_id: str = "S1A_IW_GRDH_1SDV_20240105T054321_RTC", epsg: int | None = 32633, **props) -> dict:
    """A Sentinel-1 RTC item in the Planetary Computer ``sentinel-1-rtc`` layout (item-level proj:*)."""
    p = {
        "datetime": "2024-01-05T05:43:21.123456Z",
        "platform": "SENTINEL-1A",
        "constellation": "Sentinel-1",
        "sar:instrument_mode": "IW",
        "sar:polarizations": ["VV", "VH"],
        "sar:product_type": "GRD",
        "sat:orbit_state": "descending",
        "proj:shape": [2000, 3000],
        "proj:transform": [10.0, 0.0, 400000.0, 0.0, -10.0, 5000000.0, 0.0, 0.0, 1.0],
    }
    if epsg is not None:
        p["proj:epsg"] = epsg
    p.update(props)
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "id": item_id,
        "collection": "sentinel-1-rtc",
        "bbox": [13.7, 44.9, 14.9, 45.2],
        "geometry": None,
        "properties": p,
        "assets": {
            k: {
                "href": f"s3://rtc/{item_id}/{k}.tif",
                "raster:bands": [{"nodata": -32768, "data_type": "float32"}],
            }
            for k in ("vv", "vh")
        },
    }


# ---------------------------------------------------------------------------------------- fixtures

CASES = {
    ES_V1: dict(
        epsg=32720,
        boa=-1000,
        bounds=(499980.0, 6290200.0, 609780.0, 6400000.0),
        when=dt.datetime(2024, 3, 11, 14, 11, 54, 463000, tzinfo=UTC),
        cloud=18.431592,
        key_b8a="nir08",
    ),
    ES_V0: dict(
        epsg=32628,
        boa=0,
        bounds=(300000.0, 2190240.0, 409800.0, 2300040.0),
        when=dt.datetime(2020, 7, 14, 11, 55, 52, tzinfo=UTC),
        cloud=2.36,
        key_b8a="B8A",
    ),
    PC: dict(
        epsg=32606,
        boa=0,
        bounds=(399960.0, 6690240.0, 509760.0, 6800040.0),
        when=dt.datetime(2019, 6, 29, 21, 25, 29, 24000, tzinfo=UTC),
        cloud=0.314306,
        key_b8a="B8A",
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_real_fixtures_parse(name, tmp_path):
    want = CASES[name]
    raw = fixture(name)
    item = localise(raw, tmp_path)
    scene = parse_item(item, STORAGE)
    assert isinstance(scene, Scene), scene
    assert scene.scene_id == raw["id"] and scene.sensor == "s2"
    assert scene.epsg == want["epsg"]
    assert scene.boa_offset == want["boa"]
    assert scene.bounds == want["bounds"]
    assert scene.datetime == want["when"] and scene.datetime.tzinfo is not None
    assert scene.cloud_cover == pytest.approx(want["cloud"])
    assert scene.lonlat_bbox == tuple(raw["bbox"])
    assert list(scene.assets) == [*S2.band_names, "SCL"]
    x0, _, _, y1 = want["bounds"]
    for band in S2.bands:
        a = scene.assets[band.name]
        r = band.resolution_m
        assert a.transform == (r, 0.0, x0, 0.0, -r, y1)
        assert a.shape == (109800 // r, 109800 // r)
        assert a.nodata == 0.0
    assert scene.assets["SCL"].shape == (5490, 5490)
    # the asset came from the catalogue's own key (nir08 in Earth Search v1, B8A elsewhere)
    assert scene.assets["B8A"].href == str(tmp_path / raw["id"] / f"{want['key_b8a']}.tif")


@pytest.mark.parametrize("name", list(CASES))
def test_real_fixtures_public_https_hrefs(name):
    """As served (https hrefs): bad_uri by default, fine once https is an allowed scheme."""
    raw = fixture(name)
    r = parse_item(raw, STORAGE)
    assert isinstance(r, Reject) and r.reason == "bad_uri" and "https" in r.detail
    scene = parse_item(raw, StorageConfig(allowed_schemes=("file", "s3", "https")))
    assert isinstance(scene, Scene)
    assert scene.assets["B02"].href.startswith("https://") and scene.assets["B02"].href.endswith(".tif")


def test_fixture_directory_loads_all_three(tmp_path):
    for name in CASES:
        (tmp_path / name).write_text(json.dumps(localise(fixture(name), tmp_path / "cogs")))
    scenes, rejects = load_scenes(str(tmp_path), STORAGE)
    assert rejects == []
    assert sorted(s.epsg for s in scenes) == [32606, 32628, 32720]


# -------------------------------------------------------------------------------------- radiometry


@pytest.mark.parametrize(
    "props, item_id, when, offset",
    [
        ({"s2:processing_baseline": "05.10"}, "x", dt.datetime(2024, 3, 11, tzinfo=UTC), -1000),
        ({"s2:processing_baseline": "04.00"}, "x", dt.datetime(2022, 1, 25, tzinfo=UTC), -1000),
        ({"s2:processing_baseline": "03.01"}, "x", dt.datetime(2021, 6, 1, tzinfo=UTC), 0),
        ({"s2:processing_baseline": "02.12"}, "x", dt.datetime(2019, 6, 29, tzinfo=UTC), 0),
        # reprocessed old acquisitions (collection 1): the baseline decides, not the date
        ({"s2:processing_baseline": "05.00"}, "x", dt.datetime(2018, 5, 1, tzinfo=UTC), -1000),
        ({"s2:processing_baseline": "05.10", "earthsearch:boa_offset_applied": True}, "x",
         dt.datetime(2024, 3, 11, tzinfo=UTC), 0),
        ({"s2:processing_baseline": "05.10", "earthsearch:boa_offset_applied": False}, "x",
         dt.datetime(2024, 3, 11, tzinfo=UTC), -1000),
        ({"earthsearch:boa_offset_applied": True}, "x", dt.datetime(2023, 1, 1, tzinfo=UTC), 0),
        # baseline from ids when the property is absent
        ({"sentinel:product_id": "S2A_MSIL2A_20220301T101021_N0400_R022_T32TQM_20220301T121557"}, "x",
         dt.datetime(2022, 3, 1, tzinfo=UTC), -1000),
        ({"sentinel:product_id": "S2A_MSIL2A_20200714T115221_N0214_R123_T28QCH_20200714T191310"}, "x",
         dt.datetime(2020, 7, 14, tzinfo=UTC), 0),
        ({"s2:datatake_id": "GS2B_20230629T212529_012081_N05.09"}, "x", dt.datetime(2023, 6, 29, tzinfo=UTC),
         -1000),
        ({}, "S2B_MSIL2A_20220629T212529_N0400_R043_T06VVN_20220629T230000",
         dt.datetime(2022, 6, 29, tzinfo=UTC), -1000),
        # no baseline anywhere: the acquisition date decides (04.00 went live 2022-01-25)
        ({}, "S2A_28QCH_20220125_0_L2A", dt.datetime(2022, 1, 25, tzinfo=UTC), -1000),
        ({}, "S2A_28QCH_20220124_0_L2A", dt.datetime(2022, 1, 24, 23, 59, tzinfo=UTC), 0),
    ],
)  # fmt: skip
def test_boa_offset_table(props, item_id, when, offset):
    assert s2_boa_offset(props, item_id, when) == offset


@pytest.mark.parametrize(
    "props, item_id, baseline",
    [
        ({"s2:processing_baseline": "05.10"}, "", (5, 10)),
        ({"s2:processing_baseline": "4.0"}, "", (4, 0)),
        (
            {"s2:product_uri": "S2A_MSIL2A_20240311T135701_N0510_R067_T20HNJ_20240311T194050.SAFE"},
            "",
            (5, 10),
        ),
        ({"s2:granule_id": "S2B_OPER_MSI_L2A_TL_ESRI_20201006T080533_A012081_T06VVN_N02.12"}, "", (2, 12)),
        ({}, "S2A_T20HNJ_20240311T140636_L2A", None),  # MGRS "T20HNJ" is not a baseline
        ({"s2:processing_baseline": "garbage"}, "", None),
    ],
)
def test_processing_baseline(props, item_id, baseline):
    assert processing_baseline(props, item_id) == baseline


def test_fixture_offsets_come_from_baselines():
    assert processing_baseline(fixture(ES_V1)["properties"]) == (5, 10)
    assert processing_baseline(fixture(ES_V0)["properties"]) == (2, 14)  # from sentinel:product_id
    assert processing_baseline(fixture(PC)["properties"]) == (2, 12)
    item = fixture(ES_V1)
    item["properties"]["earthsearch:boa_offset_applied"] = True
    scene = parse_item(localise(item, Path("/data")), STORAGE)
    assert isinstance(scene, Scene) and scene.boa_offset == 0


# ------------------------------------------------------------------------------------------ sensors


@pytest.mark.parametrize(
    "collection, props, sensor",
    [
        ("sentinel-2-c1-l2a", {}, "s2"),
        ("sentinel-2-l2a", {}, "s2"),
        ("sentinel-s2-l2a-cogs", {}, "s2"),
        ("sentinel-1-rtc", {}, "s1"),
        (None, {"constellation": "Sentinel 2"}, "s2"),
        (None, {"platform": "SENTINEL-1B"}, "s1"),
        ("my-archive", {"constellation": "sentinel-1"}, "s1"),
        ("sentinel-2-l1c", {"constellation": "sentinel-2"}, None),  # TOA: not ingested
        ("sentinel-1-grd", {"constellation": "sentinel-1"}, None),  # radar geometry: not ingested
        ("landsat-c2-l2", {"platform": "landsat-8"}, None),
        (None, {}, None),
    ],
)
def test_detect_sensor(collection, props, sensor):
    assert detect_sensor({"collection": collection, "properties": props}) == sensor


# --------------------------------------------------------------------------------------------- S1


def test_s1_rtc_item():
    scene = parse_item(s1_item(), STORAGE)
    assert isinstance(scene, Scene), scene
    assert scene.sensor == "s1" and scene.epsg == 32633 and scene.boa_offset == 0
    assert list(scene.assets) == ["VV", "VH"]
    vv = scene.assets["VV"]
    assert vv.href == "s3://rtc/S1A_IW_GRDH_1SDV_20240105T054321_RTC/vv.tif"
    assert vv.shape == (2000, 3000) and vv.transform == (10.0, 0.0, 400000.0, 0.0, -10.0, 5000000.0)
    assert vv.nodata == -32768.0
    assert scene.bounds == (400000.0, 4980000.0, 430000.0, 5000000.0)
    assert scene.datetime == dt.datetime(2024, 1, 5, 5, 43, 21, 123456, tzinfo=UTC)
    assert scene.cloud_cover is None


def test_s1_any_known_crs():
    for epsg in (3035, 4326):  # not UTM: fine for S1, which is warped onto the S2 grid
        scene = parse_item(s1_item(epsg=epsg), STORAGE)
        assert isinstance(scene, Scene) and scene.epsg == epsg


def test_s1_proj_code_and_asset_level_proj():
    item = s1_item(epsg=None, **{"proj:code": "EPSG:32634"})
    assert parse_item(item, STORAGE).epsg == 32634
    item = s1_item(epsg=None)
    for a in item["assets"].values():
        a["proj:epsg"] = 32632
    assert parse_item(item, STORAGE).epsg == 32632


def test_s1_nan_nodata_round_trips_as_json():
    item = s1_item()
    for a in item["assets"].values():
        a["raster:bands"][0]["nodata"] = "nan"
    scene = parse_item(item, STORAGE)
    assert math.isnan(scene.assets["VV"].nodata)
    text = json.dumps(scene.to_dict(), allow_nan=False)
    back = Scene.from_dict(json.loads(text))
    assert math.isnan(back.assets["VH"].nodata) and back.assets["VH"].href == scene.assets["VH"].href


# ------------------------------------------------------------------------------------------ rejects


def _es(tmp_path=Path("/data")) -> dict:
    return localise(fixture(ES_V1), tmp_path)


def _drop(path: str):
    def f(item):
        node = item
        *parents, last = path.split(".")
        for p in parents:
            node = node[p]
        del node[last]
        return item

    return f


def _set(path: str, value):
    def f(item):
        node = item
        *parents, last = path.split(".")
        for p in parents:
            node = node[p]
        node[last] = value
        return item

    return f


REJECT_CASES = [
    # (label, edit of the Earth Search v1 item, reason, substring of the detail)
    ("no id", _drop("id"), "malformed_item", "no string id"),
    ("empty id", _set("id", ""), "malformed_item", "no string id"),
    ("no datetime", _drop("properties.datetime"), "malformed_item", "datetime is missing"),
    ("bad datetime", _set("properties.datetime", "yesterday"), "malformed_item", "unparseable datetime"),
    ("no properties", _drop("properties"), "malformed_item", "no properties"),
    ("no crs", _drop("properties.proj:epsg"), "missing_crs", "no proj:epsg"),
    ("null crs", _set("properties.proj:epsg", None), "missing_crs", "no proj:epsg"),
    ("geographic crs", _set("properties.proj:epsg", 4326), "missing_crs", "not a UTM zone"),
    ("no transform", _drop("assets.red.proj:transform"), "missing_crs", "'red' has no proj:transform"),
    ("bad transform", _set("assets.red.proj:transform", [10, 0, "x", 0, -10, 0]), "malformed_item",
     "ValueError"),
    ("short shape", _set("assets.red.proj:shape", [10980]), "missing_crs", "bad proj:transform / proj:shape"),
    ("missing band", _drop("assets.nir08"), "missing_asset", "B8A"),
    ("missing scl", _drop("assets.scl"), "missing_asset", "SCL"),
    ("no assets", _drop("assets"), "missing_asset", "no assets"),
    ("asset not object", _set("assets.red", "oops"), "malformed_item", "'red' is not an object"),
    ("l1c", _set("collection", "sentinel-2-l1c"), "unsupported_sensor", "sentinel-2-l1c"),
    ("landsat", lambda i: {**i, "collection": "landsat-c2-l2", "properties": {**i["properties"],
     "constellation": "landsat", "platform": "landsat-9"}}, "unsupported_sensor", "landsat"),
    ("ftp href", _set("assets.red.href", "ftp://host/red.tif"), "bad_uri", "scheme 'ftp'"),
    ("dotdot href", _set("assets.red.href", "/data/../etc/passwd"), "bad_uri", "'..'"),
    ("encoded dotdot", _set("assets.red.href", "s3://bucket/a/%2e%2e/b.tif"), "bad_uri", "'..'"),
    ("relative dotdot", _set("assets.red.href", "../other/red.tif"), "bad_uri", "'..'"),
    ("empty href", _set("assets.red.href", ""), "bad_uri", "empty"),
    ("no href", _drop("assets.red.href"), "bad_uri", "empty"),
    ("relative without base", _set("assets.red.href", "red.tif"), "bad_uri", "without a base"),
]  # fmt: skip


@pytest.mark.parametrize("label, edit, reason, detail", REJECT_CASES, ids=[c[0] for c in REJECT_CASES])
def test_reject_reasons(label, edit, reason, detail):
    r = parse_item(edit(_es()), STORAGE, where="file.json#0")
    assert isinstance(r, Reject), r
    assert r.level == "item" and r.reason == reason and reason in REJECT_REASONS
    assert detail in r.detail
    assert r.id in ("S2A_T20HNJ_20240311T140636_L2A", "file.json#0")


@pytest.mark.parametrize("bad", [None, 3, "text", ["a"], []])
def test_non_object_items_are_malformed(bad):
    r = parse_item(bad, STORAGE, where="items.json#4")
    assert r == Reject("item", "items.json#4", "malformed_item", r.detail) and "not an object" in r.detail


@pytest.mark.parametrize(
    "edit, reason",
    [(_drop("assets.vh"), "missing_asset"), (_drop("properties.proj:epsg"), "missing_crs"),
     (_drop("properties.proj:shape"), "missing_crs"), (_set("assets.vv.href", "gs://b/vv.tif"), "bad_uri"),
     (_set("properties.proj:epsg", 999999), "missing_crs")],
)  # fmt: skip
def test_s1_rejects(edit, reason):
    r = parse_item(edit(s1_item()), STORAGE)
    assert isinstance(r, Reject) and r.reason == reason


def test_reject_details_never_hold_credentials():
    item = _es()
    item["assets"]["red"]["href"] = "https://user:hunter2@host/red.tif?sv=2021&sig=SECRETSIG"
    r = parse_item(item, STORAGE)
    assert r.reason == "bad_uri"
    assert "SECRETSIG" not in r.detail and "hunter2" not in r.detail and "host/red.tif" in r.detail


def test_reject_validates_reason_and_level():
    with pytest.raises(ValueError, match="unknown reject reason"):
        Reject("item", "x", "boom", "")
    with pytest.raises(ValueError, match="unknown reject level"):
        Reject("shard", "x", "bad_uri", "")


def test_reject_round_trips_through_its_dict():
    r = Reject("tile", "32633_1_2_2022Q1", "all_cloud", "0 usable S2 slots")
    assert r.to_dict() == {"level": "tile", "id": "32633_1_2_2022Q1", "reason": "all_cloud",
                           "detail": "0 usable S2 slots"}
    assert Reject.from_dict(json.loads(json.dumps(r.to_dict()))) == r
    assert r.sort_key == ("tile", "32633_1_2_2022Q1", "all_cloud")
    with pytest.raises(ValueError, match="unknown reject reason 'boom'"):
        Reject.from_dict({**r.to_dict(), "reason": "boom"})
    with pytest.raises(KeyError, match="detail"):
        Reject.from_dict({"level": "tile", "id": "x", "reason": "all_cloud"})


def test_duplicate_ids_keep_first():
    a, b = s1_item(), s1_item()
    scenes, rejects = parse_items([a, b], STORAGE)
    assert len(scenes) == 1 and [r.reason for r in rejects] == ["malformed_item"]
    assert "duplicate" in rejects[0].detail


# ---------------------------------------------------------------------------------------------- hrefs


@pytest.mark.parametrize(
    "href, base, out",
    [
        ("s3://b/k/red.tif", None, "s3://b/k/red.tif"),
        ("/abs/red.tif", None, "/abs/red.tif"),
        ("file:///abs/red.tif", None, "file:///abs/red.tif"),
        ("red.tif", "/data/items", "/data/items/red.tif"),
        ("./cogs/red.tif", "/data/items", "/data/items/cogs/red.tif"),
        ("cogs/red.tif", "s3://bucket/items", "s3://bucket/items/cogs/red.tif"),
        ("cogs/red.tif", "s3://bucket/items/", "s3://bucket/items/cogs/red.tif"),
    ],
)
def test_resolve_href(href, base, out):
    assert resolve_href(href, base, STORAGE) == out


@pytest.mark.parametrize(
    "href, base, match",
    [
        ("http://host/red.tif", None, "scheme 'http' not in allowed_schemes"),
        ("s3://b/../k.tif", None, "escapes"),
        ("..\\evil.tif", "/data", "escapes"),
        ("red.tif", None, "without a base"),
        ("", "/data", "empty"),
        ("s3://b/k.tif", None, "scheme 's3' not in allowed_schemes"),
    ],
)
def test_resolve_href_rejects(href, base, match):
    storage = StorageConfig(allowed_schemes=("file",)) if href.startswith("s3://b/k") else STORAGE
    with pytest.raises(ValueError, match=match):
        resolve_href(href, base, storage)


# ------------------------------------------------------------------------------------ scene records


@pytest.mark.parametrize("name", list(CASES))
def test_scene_dict_round_trip(name):
    scene = parse_item(localise(fixture(name), Path("/data")), STORAGE)
    d = scene.to_dict()
    text = json.dumps(d, allow_nan=False, sort_keys=True)
    back = Scene.from_dict(json.loads(text))
    assert back == scene and scene == back
    assert json.dumps(back.to_dict(), sort_keys=True) == text
    assert pickle.loads(pickle.dumps(scene)) == scene
    assert hash(back) == hash(scene)
    assert isinstance(back.assets["B04"], AssetRef)


# ----------------------------------------------------------------------------------------- loading


def _collection(items: list) -> dict:
    return {"type": "FeatureCollection", "features": items}


def test_load_feature_collection_mixed(tmp_path):
    good = localise(fixture(ES_V0), tmp_path)
    bad = _drop("assets.B04")(localise(fixture(PC), tmp_path))
    path = tmp_path / "items.json"
    path.write_text(json.dumps(_collection([good, "junk", bad, s1_item()])))
    scenes, rejects = load_scenes(str(path), STORAGE)
    assert [s.scene_id for s in scenes] == [good["id"], "S1A_IW_GRDH_1SDV_20240105T054321_RTC"]
    assert sorted((r.id, r.reason) for r in rejects) == [
        (bad["id"], "missing_asset"),
        ("items.json#1", "malformed_item"),
    ]
    scenes2, _ = load_scenes(f"file://{path}", STORAGE)
    assert scenes2 == scenes


def test_load_directory_relative_hrefs_and_non_json(tmp_path):
    items = tmp_path / "catalog" / "2024"
    items.mkdir(parents=True)
    it = fixture(ES_V1)
    for a in it["assets"].values():
        a["href"] = f"cogs/{a['href'].rsplit('/', 1)[1]}"
    (items / "a.json").write_text(json.dumps(it))
    (items / "broken.json").write_text("{not json")
    (items / "notes.txt").write_text("ignored: not an item file")
    scenes, rejects = load_scenes(str(tmp_path / "catalog"), STORAGE)
    assert len(scenes) == 1
    assert scenes[0].assets["B04"].href == str(items / "cogs" / "B04.tif")
    assert [(r.id, r.reason) for r in rejects] == [("2024/broken.json", "malformed_item")]
    assert "not JSON" in rejects[0].detail


def test_load_single_non_json_file(tmp_path):
    p = tmp_path / "items.json"
    p.write_text("<html>")
    scenes, rejects = load_scenes(str(p), STORAGE)
    assert scenes == [] and rejects[0].reason == "malformed_item" and rejects[0].id == "items.json"


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no STAC items"):
        load_scenes(str(tmp_path / "missing"), STORAGE)
    with pytest.raises(ValueError, match="scheme 'gs' not allowed"):
        load_scenes("gs://bucket/items.json", STORAGE)
    with pytest.raises(ValueError, match="needs a 'stac_api' URL"):
        search_scenes({"collections": ["sentinel-2-l2a"]}, STORAGE)
    with pytest.raises(ValueError, match="unknown STAC search spec keys"):
        search_scenes({"stac_api": "https://example.invalid", "limit": 3}, STORAGE)
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"stac_api": "https://example.invalid/v1", "colections": []}))
    with pytest.raises(ValueError, match="unknown STAC search spec keys"):
        load_scenes(str(spec), STORAGE)
    yaml_spec = tmp_path / "spec.yaml"
    yaml_spec.write_text("collections: [sentinel-2-l2a]\nbbox: [10, 45, 11, 46]\n")
    with pytest.raises(ValueError, match="needs a 'stac_api' URL"):
        load_scenes(str(yaml_spec), STORAGE)


def test_load_from_s3_prefix_and_collection(s3_server, s3_bucket):
    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_server["endpoint_url"])
    es = fixture(ES_V1)
    for a in es["assets"].values():
        a["href"] = f"cogs/{a['href'].rsplit('/', 1)[1]}"  # relative: resolves against the s3 prefix
    s3.put_object(Bucket=s3_bucket, Key="items/a/es.json", Body=json.dumps(es).encode())
    s3.put_object(Bucket=s3_bucket, Key="items/b/s1.json", Body=json.dumps(s1_item()).encode())
    s3.put_object(Bucket=s3_bucket, Key="items/b/zz.json", Body=b"\x00\x01")
    s3.put_object(Bucket=s3_bucket, Key="fc.json", Body=json.dumps(_collection([s1_item()])).encode())
    # endpoint/credentials come from the AWS_* environment set by the fixture
    scenes, rejects = load_scenes(f"s3://{s3_bucket}/items", STORAGE)
    assert sorted(s.sensor for s in scenes) == ["s1", "s2"]
    es_scene = next(s for s in scenes if s.sensor == "s2")
    assert es_scene.assets["B04"].href == f"s3://{s3_bucket}/items/a/cogs/B04.tif"
    assert [(r.id, r.reason) for r in rejects] == [("b/zz.json", "malformed_item")]
    # explicit endpoint in the storage config works too
    storage = StorageConfig(endpoint_url=s3_server["endpoint_url"], region=s3_server["region"])
    scenes, rejects = load_scenes(f"s3://{s3_bucket}/fc.json", storage)
    assert [s.sensor for s in scenes] == ["s1"] and rejects == []
