"""Sensor tables: band order, resolutions, asset keys in both catalogue conventions, radiometry constants."""

from __future__ import annotations

import pytest

from pipeline import sensors
from pipeline.sensors import S1, S2, S2_SCL, find_asset_key

S2_ORDER = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12")


def test_s2_has_12_bands_in_shard_order():
    assert S2.band_names == S2_ORDER
    assert "B10" not in S2.band_names  # cirrus band is not in L2A
    assert S2.dtype == "uint16" and S2.scale == 1e-4


@pytest.mark.parametrize(
    "name, res, common, wl",
    [
        ("B01", 60, "coastal", 0.443),
        ("B02", 10, "blue", 0.490),
        ("B03", 10, "green", 0.560),
        ("B04", 10, "red", 0.665),
        ("B05", 20, "rededge1", 0.704),
        ("B06", 20, "rededge2", 0.740),
        ("B07", 20, "rededge3", 0.783),
        ("B08", 10, "nir", 0.842),
        ("B8A", 20, "nir08", 0.865),
        ("B09", 60, "nir09", 0.945),
        ("B11", 20, "swir16", 1.610),
        ("B12", 20, "swir22", 2.190),
    ],
)
def test_s2_band_table(name, res, common, wl):
    b = S2.band(name)
    assert b.resolution_m == res
    assert b.wavelength_um == pytest.approx(wl)
    assert b.keys == (common, name)  # Earth Search v1 common name first, then the band id
    assert b.nodata == 0 and b.resampling == "bilinear"


def test_wavelengths_increase_in_band_order():
    wl = [b.wavelength_um for b in S2.bands]
    assert wl == sorted(wl)


def test_scl_and_s1_tables():
    assert S2_SCL.resampling == "nearest" and S2_SCL.resolution_m == 20 and S2_SCL.keys == ("scl", "SCL")
    assert S1.band_names == ("VV", "VH") and S1.dtype == "float16"
    assert [b.keys for b in S1.bands] == [("vv", "VV"), ("vh", "VH")]
    assert sensors.SCL_CLOUD == (3, 8, 9, 10) and sensors.SCL_NODATA == 0
    assert all(sensors.SCL_CLASSES[c] for c in sensors.SCL_CLOUD)
    assert sensors.S2_BOA_OFFSET == -1000 and sensors.S2_OFFSET_BASELINE == (4, 0)
    assert set(sensors.SENSORS) == {"s2", "s1"}


def test_band_lookup_error():
    with pytest.raises(KeyError, match="s2 has no band 'B10'"):
        S2.band("B10")


EARTH_SEARCH_V1 = {
    "coastal", "blue", "green", "red", "rededge1", "rededge2", "rededge3", "nir", "nir08", "nir09",
    "swir16", "swir22", "scl", "aot", "wvp", "visual", "thumbnail",
}  # fmt: skip
BAND_IDS = {*S2_ORDER, "SCL", "AOT", "WVP", "visual"}  # Earth Search v0 and Planetary Computer


@pytest.mark.parametrize(
    "keys, band, expect",
    [
        (EARTH_SEARCH_V1, "B01", "coastal"),
        (EARTH_SEARCH_V1, "B8A", "nir08"),
        (EARTH_SEARCH_V1, "B08", "nir"),
        (EARTH_SEARCH_V1, "B12", "swir22"),
        (BAND_IDS, "B01", "B01"),
        (BAND_IDS, "B8A", "B8A"),
        (BAND_IDS, "B11", "B11"),
        (EARTH_SEARCH_V1 | BAND_IDS, "B02", "blue"),  # both present: common name wins (lookup order)
        ({"red"}, "B02", None),
        (set(), "B04", None),
    ],
)
def test_find_asset_key_s2(keys, band, expect):
    assert find_asset_key(S2.band(band), keys) == expect


@pytest.mark.parametrize(
    "keys, expect",
    [(EARTH_SEARCH_V1, "scl"), (BAND_IDS, "SCL"), ({"cloud"}, None)],
)
def test_find_asset_key_scl(keys, expect):
    assert find_asset_key(S2_SCL, keys) == expect


@pytest.mark.parametrize(
    "keys, band, expect",
    [({"vv", "vh"}, "VV", "vv"), ({"VV", "VH"}, "VH", "VH"), ({"hh", "hv"}, "VV", None)],
)
def test_find_asset_key_s1(keys, band, expect):
    assert find_asset_key(S1.band(band), dict.fromkeys(keys)) == expect
