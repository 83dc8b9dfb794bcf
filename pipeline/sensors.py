"""Sensors as data: every band, its asset keys in each catalogue, resolution, wavelength and radiometry.

One table per sensor; code looks things up here instead of branching on sensor names
(torchgeo ``datasets/sentinel.py`` style). Shard band order is the order of each table.

Sentinel-2 L2A: reflectance is stored as uint16 DN = reflectance x 10000 in the pre-04.00
convention. From processing baseline 04.00 (25 Jan 2022) ESA adds a BOA offset of +1000 DN;
:data:`S2_BOA_OFFSET` is the DN to *add* to such data to harmonise it (see
:func:`pipeline.stac` for how an item says whether that is still needed).
Sentinel-1 RTC: linear power (gamma0), converted to dB on ingest.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Band:
    """One band of a sensor.

    ``keys`` are the STAC asset keys that may carry it, in lookup order: Earth Search v1 common
    names first, then the Earth Search v0 / Planetary Computer band ids.
    """

    name: str  # canonical name used in shards and manifests
    keys: tuple[str, ...]
    resolution_m: int  # native ground sampling distance
    wavelength_um: float | None  # centre wavelength (None for SAR / classification layers)
    nodata: float | None
    resampling: str  # rasterio Resampling name used to bring it to 10 m


@dataclass(frozen=True)
class Sensor:
    name: str  # "s2" / "s1": the shard column
    bands: tuple[Band, ...]
    dtype: str  # shard dtype
    scale: float  # physical = DN * scale + offset (after harmonisation)
    offset: float

    @property
    def band_names(self) -> tuple[str, ...]:
        return tuple(b.name for b in self.bands)

    def band(self, name: str) -> Band:
        for b in self.bands:
            if b.name == name:
                return b
        raise KeyError(f"{self.name} has no band {name!r}; bands: {', '.join(self.band_names)}")


def _s2(name: str, common: str, res: int, wl: float) -> Band:
    keys = (common, name) if common != name else (name,)
    return Band(name, keys, res, wl, 0, "bilinear")


S2 = Sensor(
    name="s2",
    bands=(
        _s2("B01", "coastal", 60, 0.443),
        _s2("B02", "blue", 10, 0.490),
        _s2("B03", "green", 10, 0.560),
        _s2("B04", "red", 10, 0.665),
        _s2("B05", "rededge1", 20, 0.704),
        _s2("B06", "rededge2", 20, 0.740),
        _s2("B07", "rededge3", 20, 0.783),
        _s2("B08", "nir", 10, 0.842),
        _s2("B8A", "nir08", 20, 0.865),
        _s2("B09", "nir09", 60, 0.945),
        _s2("B11", "swir16", 20, 1.610),
        _s2("B12", "swir22", 20, 2.190),
    ),
    dtype="uint16",
    scale=1e-4,
    offset=0.0,
)

#: Scene classification layer: read with nearest-neighbour, 0 = no data.
S2_SCL = Band("SCL", ("scl", "SCL"), 20, None, 0, "nearest")

#: DN added to baseline >= 04.00 data that is not yet harmonised (ESA's BOA_ADD_OFFSET is -1000).
S2_BOA_OFFSET = -1000
#: First processing baseline that carries the offset.
S2_OFFSET_BASELINE = (4, 0)

#: SCL classes (ESA L2A product spec).
SCL_CLASSES = {
    0: "no_data",
    1: "saturated_or_defective",
    2: "dark_area_pixels",
    3: "cloud_shadows",
    4: "vegetation",
    5: "not_vegetated",
    6: "water",
    7: "unclassified",
    8: "cloud_medium_probability",
    9: "cloud_high_probability",
    10: "thin_cirrus",
    11: "snow",
}
#: Classes counted as cloud or shadow for a slot's cloud fraction.
SCL_CLOUD = (3, 8, 9, 10)
SCL_NODATA = 0

#: Sentinel-1 RTC (Planetary Computer ``sentinel-1-rtc`` / our synthetic archive): linear gamma0.
S1 = Sensor(
    name="s1",
    bands=(
        Band("VV", ("vv", "VV"), 10, None, -32768.0, "bilinear"),
        Band("VH", ("vh", "VH"), 10, None, -32768.0, "bilinear"),
    ),
    dtype="float16",
    scale=1.0,
    offset=0.0,
)

SENSORS = {s.name: s for s in (S2, S1)}

#: Smallest linear power converted to dB (avoids -inf): 1e-5 -> -50 dB.
S1_MIN_POWER = 1e-5


def find_asset_key(band: Band, asset_keys) -> str | None:
    """The first of ``band.keys`` present in ``asset_keys`` (a set/dict of STAC asset keys), else None."""
    for k in band.keys:
        if k in asset_keys:
            return k
    return None
