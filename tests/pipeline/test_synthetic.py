"""The synthetic archive: valid COGs, items that match the files, learnable and consistent pixels."""

from __future__ import annotations

import json

import rasterio

from pipeline.sensors import S1, S2, S2_SCL, find_asset_key


def test_archive_items_and_files(synthetic_archive):
    ic = json.loads(open(synthetic_archive.items).read())
    assert ic["type"] == "FeatureCollection"
    assert len(ic["features"]) == len(synthetic_archive.scenes) == 5
    for item in ic["features"]:
        sensor = S2 if item["collection"].startswith("sentinel-2") else S1
        bands = sensor.bands + ((S2_SCL,) if sensor is S2 else ())
        for b in bands:
            key = find_asset_key(b, item["assets"])
            assert key is not None, (item["id"], b.name)
            asset = item["assets"][key]
            with rasterio.open(asset["href"]) as src:
                assert list(src.shape) == asset["proj:shape"]
                assert list(src.transform)[:6] == asset["proj:transform"]
                assert src.nodata == asset["raster:bands"][0]["nodata"]
