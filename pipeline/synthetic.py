"""A synthetic Sentinel-1/2 archive that looks like the real ones, plus known-pattern and bad inputs.

``python -m pipeline.synthetic --output <uri> [--scenes N --s1-scenes M --seed S --size-px P --epsg E ...]``
writes, under ``<uri>`` (a local path or ``s3://bucket/prefix``; S3 output is written to a local temp dir
first and then uploaded with fsspec/s3fs, honouring the usual ``AWS_*`` variables incl. ``AWS_ENDPOINT_URL``):

``sentinel-2-c1-l2a/<zone>/<band>/<sq>/<yyyy>/<m>/<item id>/B01.tif … B12.tif, B8A.tif, SCL.tif``
    per-band COGs in the Earth Search v1 layout: UTM CRS, 10/20/60 m grids (from :data:`pipeline.sensors.S2`),
    uint16, nodata 0, DEFLATE + predictor 2, internal tiles (1024 px for full-size scenes, 512/256 for small
    ones), overviews. SCL is uint8 at 20 m. Harmonised scenes (``earthsearch:boa_offset_applied: true``) live
    under ``sentinel-2-l2a/`` as in Earth Search v1.
``sentinel-1-rtc/<yyyy>/<m>/<item id>/measurement/{vv,vh}.tif``
    Sentinel-1 RTC gamma0, float32 linear power, 10 m, nodata -32768 (declared in the GeoTIFF and in
    ``raster:bands``), DEFLATE + predictor 3. Even S1 scenes sit in the S2 zone on a grid shifted by
    (+3 m, -4 m), odd ones in the neighbouring UTM zone (and say ``proj:code`` instead of ``proj:epsg``),
    so the ingest's co-registration is exercised.
``truth/<tile>_landcover.tif`` + ``truth/classes.json``
    the land-cover map every scene of a tile was rendered from (uint8, 10 m, the tile's grid): the ground
    truth for a labelled synthetic benchmark.
``items.json``
    a STAC 1.0 ItemCollection (GeoJSON FeatureCollection) with absolute hrefs, ``proj:*`` per asset,
    ``raster:bands``, ``eo:bands``, ``eo:cloud_cover`` computed from the SCL, ``s2:processing_baseline``.

What the pixels carry (so models have something to learn):

* a land-cover map per tile from seeded smooth noise (:data:`LANDCOVER_CLASSES`: water, forest, cropland in
  parcels with their own sowing dates, urban, bare, snow, grassland);
* class spectra over the 12 S2 bands with realistic reflectance, vegetation mixed between a green and a
  dormant spectrum by a day-of-year phenology curve (NDVI follows the season; shifted by half a year south
  of the equator); texture and noise;
* clouds (SCL 8/9), thin cirrus (10) and their shadows (3) painted into the reflectance exactly where the
  SCL says so (masks are drawn on the 20 m SCL grid; a 10 m pixel takes its 20 m parent's state; 20/60 m
  bands are block means of the 10 m rendering);
* partial-nodata swath edges (a diagonal wedge where every band and the SCL are 0; drawn on the 60 m grid
  so all resolutions agree);
* radiometry as the archives have it, cycling per scene: ``"offset"`` (baseline 05.10, DN carry +1000, no
  flag), ``"legacy"`` (baseline 03.01, no offset), ``"harmonised"`` (baseline 05.10,
  ``earthsearch:boa_offset_applied: true``, DN already without the offset);
* S1 backscatter by class (water dark, urban bright, crops following the season) with gamma speckle.

Same seed and arguments give byte-identical files (GDAL writes no timestamps; item times derive from the
seed).

Helpers for ingest tests (all public, documented below): :func:`write_pattern_scene` /
:func:`pattern_value` / :func:`pattern_ramp` (known-pattern S2 scene for pixel-exact placement),
:func:`write_pattern_s1_scene` / :func:`pattern_s1_power` (S1 ramp for co-registration), and bad inputs:
:func:`truncate_cog`, :func:`corrupt_cog`, :func:`item_missing_asset`, :func:`item_without_crs`,
:func:`write_malformed_item`, :func:`write_all_cloud_scene`, :func:`write_all_nodata_scene`, and
:func:`make_bad_inputs`, which writes one of each beside good items with the reject reason each must get.
"""

from __future__ import annotations

import argparse
import copy
import datetime as _dt
import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.transform import Affine
from rasterio.warp import reproject, transform_bounds
from rasterio.warp import transform as warp_transform

from pipeline.sensors import S1, S2, S2_SCL

UTC = _dt.UTC

# ------------------------------------------------------------------------------------------ tables

#: Land-cover classes of the truth map: id -> name (0 is never used; it stays "no data").
LANDCOVER_CLASSES: dict[int, str] = {
    1: "water",
    2: "forest",
    3: "cropland",
    4: "urban",
    5: "bare",
    6: "snow",
    7: "grassland",
}
_CLS = {v: k for k, v in LANDCOVER_CLASSES.items()}

# Reflectance (0..1) in S2 band order B01 B02 B03 B04 B05 B06 B07 B08 B8A B09 B11 B12.
_GREEN = (0.030, 0.035, 0.070, 0.035, 0.100, 0.280, 0.360, 0.400, 0.420, 0.420, 0.200, 0.090)
_SPECTRA: dict[str, tuple[float, ...]] = {
    "water": (0.055, 0.045, 0.040, 0.025, 0.020, 0.015, 0.013, 0.012, 0.010, 0.008, 0.005, 0.003),
    "urban": (0.100, 0.100, 0.110, 0.120, 0.130, 0.140, 0.150, 0.160, 0.160, 0.160, 0.200, 0.180),
    "bare": (0.120, 0.130, 0.170, 0.220, 0.250, 0.270, 0.280, 0.290, 0.300, 0.300, 0.350, 0.300),
    "snow": (0.850, 0.850, 0.840, 0.820, 0.800, 0.780, 0.760, 0.740, 0.720, 0.650, 0.080, 0.060),
    # vegetation: (dormant spectrum, green spectrum) mixed by the phenology fraction
    "forest": (0.040, 0.045, 0.060, 0.070, 0.090, 0.140, 0.170, 0.180, 0.190, 0.190, 0.200, 0.130),
    "forest_green": (0.025, 0.030, 0.050, 0.030, 0.070, 0.200, 0.260, 0.280, 0.290, 0.290, 0.140, 0.060),
    "cropland": (0.100, 0.110, 0.140, 0.180, 0.210, 0.230, 0.250, 0.260, 0.270, 0.280, 0.340, 0.280),
    "cropland_green": _GREEN,
    "grassland": (0.060, 0.070, 0.100, 0.130, 0.170, 0.220, 0.250, 0.270, 0.280, 0.290, 0.330, 0.250),
    "grassland_green": _GREEN,
}
_CLOUD = (0.450, 0.450, 0.460, 0.470, 0.480, 0.480, 0.490, 0.490, 0.490, 0.400, 0.300, 0.220)
#: (base green fraction, amplitude, peak day of year (northern hemisphere), width in days)
_PHENOLOGY: dict[str, tuple[float, float, float, float]] = {
    "forest": (0.3, 0.7, 190.0, 55.0),
    "cropland": (0.0, 1.0, 170.0, 32.0),
    "grassland": (0.25, 0.75, 145.0, 50.0),
}
#: S1 gamma0 (linear) per class: (VV, VH); crops and grass scale with their green fraction.
_SAR: dict[str, tuple[float, float]] = {
    "water": (0.003, 0.0006),
    "forest": (0.09, 0.022),
    "cropland": (0.04, 0.006),
    "urban": (0.45, 0.07),
    "bare": (0.03, 0.004),
    "snow": (0.02, 0.003),
    "grassland": (0.045, 0.008),
}
#: SCL class of each land-cover class when clear (vegetation: 4 where NDVI >= 0.4, else 5).
_SCL_OF = {"water": 6, "urban": 5, "bare": 5, "snow": 11}

_S2_TITLES = {
    "B01": "Coastal - 60m", "B02": "Blue - 10m", "B03": "Green - 10m", "B04": "Red - 10m",
    "B05": "Red Edge 1 - 20m", "B06": "Red Edge 2 - 20m", "B07": "Red Edge 3 - 20m", "B08": "NIR 1 - 10m",
    "B8A": "NIR 2 - 20m", "B09": "NIR 3 - 60m", "B11": "SWIR 1.6\u03bcm - 20m",
    "B12": "SWIR 2.2\u03bcm - 20m",
}  # fmt: skip
_S2_FWHM = {
    "B01": 0.027, "B02": 0.098, "B03": 0.045, "B04": 0.038, "B05": 0.019, "B06": 0.018, "B07": 0.028,
    "B08": 0.145, "B8A": 0.033, "B09": 0.026, "B11": 0.143, "B12": 0.242,
}  # fmt: skip

#: Radiometry conventions cycled over the S2 scenes of a tile.
BOA_MODES = ("offset", "legacy", "harmonised")
_BASELINE = {"offset": "05.10", "legacy": "03.01", "harmonised": "05.10"}

COG_MIME = "image/tiff; application=geotiff; profile=cloud-optimized"
#: DEFLATE effort when writing (decoding speed does not depend on it; 1 keeps test archives quick to make).
DEFLATE_LEVEL = 1
S1_NODATA = float(S1.bands[0].nodata)

_S2_EXTENSIONS = [
    "https://stac-extensions.github.io/eo/v1.1.0/schema.json",
    "https://stac-extensions.github.io/file/v2.1.0/schema.json",
    "https://stac-extensions.github.io/grid/v1.1.0/schema.json",
    "https://stac-extensions.github.io/mgrs/v1.0.0/schema.json",
    "https://stac-extensions.github.io/projection/v1.1.0/schema.json",
    "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
    "https://stac-extensions.github.io/sentinel-2/v1.0.0/schema.json",
    "https://stac-extensions.github.io/view/v1.0.0/schema.json",
]
_S1_EXTENSIONS = [
    "https://stac-extensions.github.io/sar/v1.0.0/schema.json",
    "https://stac-extensions.github.io/sat/v1.0.0/schema.json",
    "https://stac-extensions.github.io/projection/v1.1.0/schema.json",
    "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
]
_S1_EXTENSIONS_PROJ2 = [e.replace("projection/v1.1.0", "projection/v2.0.0") for e in _S1_EXTENSIONS]

# ---------------------------------------------------------------------------------------- the grid


@dataclass(frozen=True)
class TileGrid:
    """An MGRS-like S2 tile: a square of ``size_px`` 10 m pixels with top-left corner (x0, y0) in ``epsg``.

    ``size_px`` must be a multiple of 6 so the 20 m and 60 m grids cover exactly the same extent
    (real tiles: 10980 px). Every scene of the tile shares these grids.
    """

    name: str  # e.g. "33TXM"
    epsg: int
    x0: float
    y0: float
    size_px: int

    def shape(self, res: int) -> tuple[int, int]:
        n = self.size_px * 10 // res
        return (n, n)

    def transform(self, res: float) -> Affine:
        return Affine(res, 0.0, self.x0, 0.0, -res, self.y0)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        e = self.size_px * 10.0
        return (self.x0, self.y0 - e, self.x0 + e, self.y0)

    @property
    def crs(self) -> CRS:
        return CRS.from_epsg(self.epsg)


#: Default tiles: a northern one near the east edge of zone 33 (so the neighbouring zone is close) and a
#: southern one (the Earth Search fixture's 20HNJ area). Origins follow the real MGRS pattern (…9960/…0040).
DEFAULT_TILES: dict[int, tuple[str, float, float]] = {
    32633: ("33TXM", 699960.0, 5100000.0),
    32720: ("20HNJ", 499980.0, 6400000.0),
}


def default_tile(epsg: int, size_px: int) -> TileGrid:
    """The tile used for ``epsg``: a named default, else ``<zone>TSY``/``<zone>HSY`` at x0 = 499980 m."""
    if epsg in DEFAULT_TILES:
        name, x0, y0 = DEFAULT_TILES[epsg]
    else:
        zone, south = epsg % 100, epsg >= 32700
        if not (32601 <= epsg <= 32660 or 32701 <= epsg <= 32760):
            raise ValueError(f"epsg must be a WGS84/UTM code (326zz or 327zz), got {epsg}")
        name, x0, y0 = f"{zone:02d}{'H' if south else 'T'}SY", 499980.0, 6400000.0 if south else 5100000.0
    return TileGrid(name, epsg, x0, y0, size_px)


# ------------------------------------------------------------------------------------------- noise


def _rng(seed: int, *keys: int | str) -> np.random.Generator:
    """A generator derived from ``seed`` and a path of keys (stable across runs and platforms)."""
    words = [int(seed)] + [
        int.from_bytes(hashlib.sha256(str(k).encode()).digest()[:4], "little") for k in keys
    ]
    return np.random.default_rng(np.random.SeedSequence(words))


def _value_noise(rng: np.random.Generator, shape: tuple[int, int], scale_px: float, octaves: int = 3):
    """Smooth noise, zero mean and unit std: octaves of random lattices upsampled with smoothstep weights."""
    h, w = shape
    out = np.zeros(shape, np.float32)
    amp = 1.0
    for o in range(octaves):
        s = max(scale_px / 2**o, 1.0)
        gh, gw = int(math.ceil(h / s)) + 2, int(math.ceil(w / s)) + 2
        g = rng.standard_normal((gh, gw)).astype(np.float32)
        ys, xs = np.arange(h, dtype=np.float32) / s, np.arange(w, dtype=np.float32) / s
        y0, x0 = ys.astype(np.int64), xs.astype(np.int64)
        fy, fx = ys - y0, xs - x0
        fy, fx = (fy * fy * (3 - 2 * fy))[:, None], (fx * fx * (3 - 2 * fx))[None, :]
        top = g[y0][:, x0] * (1 - fx) + g[y0][:, x0 + 1] * fx
        bot = g[y0 + 1][:, x0] * (1 - fx) + g[y0 + 1][:, x0 + 1] * fx
        out += amp * (top * (1 - fy) + bot * fy)
        amp *= 0.5
    out -= out.mean()
    out /= out.std() + 1e-9
    return out


def _upsample(a: np.ndarray, k: int) -> np.ndarray:
    """Nearest-neighbour upsampling by an integer factor (each pixel becomes a k x k block)."""
    return np.repeat(np.repeat(a, k, axis=0), k, axis=1) if k > 1 else a


# -------------------------------------------------------------------------------------- land cover


def make_landcover(tile: TileGrid, seed: int) -> np.ndarray:
    """The land-cover map of a tile (uint8, 10 m, ``tile.shape(10)``) with ids of :data:`LANDCOVER_CLASSES`.

    Elevation-like noise puts water in the lowest ~10 % and snow on the highest ~4 %; urban patches come
    from a fine noise field; the rest splits into forest / cropland / grassland / bare by a moisture field.
    """
    shape = tile.shape(10)
    n = shape[0]
    r = _rng(seed, "landcover", tile.name)
    elev = _value_noise(r, shape, max(n / 3.0, 8.0))
    moist = _value_noise(r, shape, max(n / 6.0, 6.0))
    urb = _value_noise(r, shape, max(n / 20.0, 4.0), octaves=2)
    q = lambda a, p: np.quantile(a, p)
    lc = np.full(shape, _CLS["grassland"], np.uint8)
    lc[moist > q(moist, 0.55)] = _CLS["forest"]
    lc[(moist > q(moist, 0.2)) & (moist <= q(moist, 0.55)) & (elev < q(elev, 0.7))] = _CLS["cropland"]
    lc[moist < q(moist, 0.08)] = _CLS["bare"]
    lc[urb > q(urb, 0.94)] = _CLS["urban"]
    lc[elev > q(elev, 0.96)] = _CLS["snow"]
    lc[elev < q(elev, 0.10)] = _CLS["water"]
    return lc


def _parcel_shift(tile: TileGrid, seed: int, parcel_px: int = 32) -> np.ndarray:
    """Per-pixel phenology peak shift (days) of crop parcels: one sowing-date offset per parcel."""
    n = tile.size_px
    k = int(math.ceil(n / parcel_px))
    shifts = _rng(seed, "parcels", tile.name).uniform(-35.0, 35.0, (k, k)).astype(np.float32)
    return _upsample(shifts, parcel_px)[:n, :n]


def green_fraction(cls: str, doy: float, south: bool = False, shift: float | np.ndarray = 0.0):
    """Phenology: the green (leaf-on) fraction 0..1 of a vegetation class on day of year ``doy``.

    ``base + amp * exp(-0.5 * (d / width)^2)`` with ``d`` the circular distance in days from the class's
    peak day (+ ``shift``; + 182.5 days south of the equator). Non-vegetation classes return 0.
    """
    if cls not in _PHENOLOGY:
        return np.zeros_like(np.asarray(shift, np.float32)) if np.ndim(shift) else 0.0
    base, amp, peak, width = _PHENOLOGY[cls]
    peak = peak + (182.5 if south else 0.0) + shift
    d = (doy - peak + 182.5) % 365.0 - 182.5
    return base + amp * np.exp(-0.5 * (d / width) ** 2)


class _Surface:
    """Clear-sky reflectance of one acquisition, produced one band at a time (peak memory: a few (H, W)
    float32 arrays, not twelve)."""

    def __init__(self, lc: np.ndarray, doy: float, south: bool, parcel: np.ndarray, r: np.random.Generator):
        n = max(LANDCOVER_CLASSES) + 1
        self.lo = np.zeros((12, n), np.float32)  # dormant (or only) spectrum per class id
        self.hi = np.zeros((12, n), np.float32)  # green spectrum (= lo for non-vegetation)
        self.green = np.zeros(lc.shape, np.float32)
        for cid, name in LANDCOVER_CLASSES.items():
            self.lo[:, cid] = _SPECTRA[name]
            self.hi[:, cid] = _SPECTRA.get(name + "_green", _SPECTRA[name])
            if name in _PHENOLOGY:
                m = lc == cid
                self.green[m] = green_fraction(name, doy, south, parcel[m] if name == "cropland" else 0.0)
        self.lc, self.r = lc, r
        texture = _value_noise(r, lc.shape, 12.0, octaves=2)
        illum = np.float32(r.uniform(0.97, 1.03))  # scene-level illumination
        self.gain = (1.0 + 0.06 * texture) * illum

    def band(self, i: int) -> np.ndarray:
        """(H, W) float32 reflectance of band ``i`` (S2 order); call in order 0..11 (the noise stream)."""
        g = self.green
        refl = self.lo[i][self.lc] * (1 - g) + self.hi[i][self.lc] * g
        refl *= self.gain
        refl += np.float32(0.003) * self.r.standard_normal(refl.shape, dtype=np.float32)
        return refl


# ------------------------------------------------------------------------------------ clouds, edges


def _cloud_masks(shape20: tuple[int, int], cloud_frac: float, r) -> dict[str, np.ndarray]:
    """Boolean masks on the 20 m grid: ``high`` (SCL 9), ``medium`` (8), ``cirrus`` (10), ``shadow`` (3)."""
    z = np.zeros(shape20, bool)
    if cloud_frac <= 0:
        return {"high": z, "medium": z.copy(), "cirrus": z.copy(), "shadow": z.copy(), "field": None}
    n = shape20[0]
    f = _value_noise(r, shape20, max(n / 8.0, 4.0))
    if cloud_frac >= 1:
        cloud = np.ones(shape20, bool)
        high = f > np.quantile(f, 0.4)
        return {"high": high, "medium": cloud & ~high, "cirrus": z, "shadow": z.copy(), "field": f}
    cloud = f > np.quantile(f, 1 - cloud_frac)
    high = f > np.quantile(f, 1 - 0.6 * cloud_frac)
    ci = _value_noise(r, shape20, max(n / 5.0, 4.0))
    cirrus = (ci > np.quantile(ci, 1 - 0.25 * cloud_frac)) & ~cloud
    dy, dx = max(n // 40, 2), max(n // 25, 3)  # shadow cast away from the sun
    shifted = np.zeros(shape20, bool)
    shifted[dy:, dx:] = cloud[:-dy, :-dx]
    shadow = shifted & ~cloud & ~cirrus
    return {"high": high, "medium": cloud & ~high, "cirrus": cirrus, "shadow": shadow, "field": f}


def _edge_mask60(shape60: tuple[int, int], kind: str) -> np.ndarray:
    """Nodata (True) on the 60 m grid: a diagonal swath-edge wedge ``west``, ``east`` or ``none``/``all``."""
    h, w = shape60
    v = (np.arange(h, dtype=np.float64)[:, None] + 0.5) / h
    u = (np.arange(w, dtype=np.float64)[None, :] + 0.5) / w
    if kind == "west":
        return u < 0.5 - 0.6 * v
    if kind == "east":
        return u > 0.75 + 0.4 * v
    if kind == "all":
        return np.ones(shape60, bool)
    return np.zeros(shape60, bool)


def _edge_polygon(kind: str) -> list[tuple[float, float]]:
    """Valid-data footprint in normalised tile coordinates (u right, v down)."""
    if kind == "west":
        return [(0.5, 0.0), (0.0, 0.5 / 0.6), (0.0, 1.0), (1.0, 1.0), (1.0, 0.0)]
    if kind == "east":
        return [(0.0, 0.0), (0.0, 1.0), (1.0, 1.0), (1.0, 0.625), (0.75, 0.0)]
    return [(0.0, 0.0), (0.0, 1.0), (1.0, 1.0), (1.0, 0.0)]


# --------------------------------------------------------------------------------------- COG writer


def cog_profile(dtype: str, blocksize: int, nodata: float | None) -> dict:
    """Creation options of every COG here: DEFLATE (level :data:`DEFLATE_LEVEL`), predictor 2 (ints) / 3
    (floats), overviews (AUTO: halvings until one block), no BigTIFF."""
    return {
        "driver": "COG",
        "dtype": dtype,
        "count": 1,
        "nodata": nodata,
        "blocksize": blocksize,
        "compress": "DEFLATE",
        "level": DEFLATE_LEVEL,
        "predictor": 3 if dtype.startswith("float") else 2,
        "overviews": "AUTO",
        "resampling": "nearest" if dtype == "uint8" else "average",
        "bigtiff": "NO",
    }


def write_cog(
    path: str | Path, array: np.ndarray, crs: CRS | int, transform: Affine, *, nodata, blocksize: int
):
    """Write one single-band COG (see :func:`cog_profile`); deterministic: no timestamps in TIFF tags."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    crs = CRS.from_epsg(crs) if isinstance(crs, int) else crs
    prof = cog_profile(str(array.dtype), blocksize, nodata)
    h, w = array.shape
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
        with rasterio.open(path, "w", width=w, height=h, crs=crs, transform=transform, **prof) as dst:
            dst.write(array, 1)


def auto_blocksize(size_px: int) -> int:
    """COG block edge for a scene of ``size_px`` 10 m pixels: 1024 (real scenes), 512 or 256 (small ones)."""
    return 1024 if size_px >= 4096 else 512 if size_px >= 2048 else 256


# ------------------------------------------------------------------------------------------- items


def _lonlat_polygon(tile: TileGrid, poly_uv: Sequence[tuple[float, float]]) -> list[list[float]]:
    e = tile.size_px * 10.0
    xs = [tile.x0 + u * e for u, _ in poly_uv]
    ys = [tile.y0 - v * e for _, v in poly_uv]
    lon, lat = warp_transform(tile.crs, "EPSG:4326", xs, ys)
    ring = [[round(a, 8), round(b, 8)] for a, b in zip(lon, lat)]
    return ring + [ring[0]]


def _bbox(ring: list[list[float]]) -> list[float]:
    lons, lats = [p[0] for p in ring], [p[1] for p in ring]
    return [min(lons), min(lats), max(lons), max(lats)]


def _iso(t: _dt.datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _file_fields(path: Path) -> dict:
    data = path.read_bytes()
    return {"file:checksum": "1220" + hashlib.sha256(data).hexdigest(), "file:size": len(data)}


def _join(root: str, rel: str) -> str:
    return root.rstrip("/") + "/" + rel


def _s2_item(
    *,
    item_id: str,
    tile: TileGrid,
    when: _dt.datetime,
    boa: str,
    hrefs: Mapping[str, str],
    local: Mapping[str, Path],
    scl: np.ndarray,
    edge: str,
    platform: str,
) -> dict:
    """An Earth Search v1 style S2 L2A item for files written at ``local`` that will live at ``hrefs``."""
    valid = scl != 0
    nvalid = max(int(valid.sum()), 1)
    pct = lambda *c: round(100.0 * float(np.isin(scl, c).sum()) / nvalid, 6)
    offset_in_dn = boa == "offset"
    zone, band, sq = tile.name[:2], tile.name[2], tile.name[3:]
    ring = _lonlat_polygon(tile, _edge_polygon(edge))
    cx, cy = tile.x0 + tile.size_px * 5.0, tile.y0 - tile.size_px * 5.0
    (clon,), (clat,) = warp_transform(tile.crs, "EPSG:4326", [cx], [cy])
    stamp = when.strftime("%Y%m%dT%H%M%S")
    gen = (when + _dt.timedelta(hours=5)).strftime("%Y%m%dT%H%M%S")
    bl = _BASELINE[boa]
    sat = f"S2{platform[-1].upper()}"
    props = {
        "created": _iso(when + _dt.timedelta(hours=8)),
        "platform": platform,
        "constellation": "sentinel-2",
        "instruments": ["msi"],
        "eo:cloud_cover": pct(8, 9, 10),
        "proj:epsg": tile.epsg,
        "proj:centroid": {"lat": round(clat, 5), "lon": round(clon, 5)},
        "mgrs:utm_zone": int(zone),
        "mgrs:latitude_band": band,
        "mgrs:grid_square": sq,
        "grid:code": f"MGRS-{tile.name}",
        "view:sun_elevation": 45.0,
        "s2:tile_id": f"{sat}_OPER_MSI_L2A_TL_SYNT_{gen}_T{tile.name}_N{bl}",
        "s2:nodata_pixel_percentage": round(100.0 * float((~valid).mean()), 6),
        "s2:saturated_defective_pixel_percentage": pct(1),
        "s2:dark_features_percentage": pct(2),
        "s2:cloud_shadow_percentage": pct(3),
        "s2:vegetation_percentage": pct(4),
        "s2:not_vegetated_percentage": pct(5),
        "s2:water_percentage": pct(6),
        "s2:unclassified_percentage": pct(7),
        "s2:medium_proba_clouds_percentage": pct(8),
        "s2:high_proba_clouds_percentage": pct(9),
        "s2:thin_cirrus_percentage": pct(10),
        "s2:snow_ice_percentage": pct(11),
        "s2:product_type": "S2MSI2A",
        "s2:processing_baseline": bl,
        "s2:product_uri": f"{sat}_MSIL2A_{stamp}_N{bl.replace('.', '')}_R022_T{tile.name}_{gen}.SAFE",
        "s2:generation_time": _iso(when + _dt.timedelta(hours=5)),
        "datetime": _iso(when),
        "updated": _iso(when + _dt.timedelta(hours=8)),
    }
    if boa == "harmonised":
        props["earthsearch:boa_offset_applied"] = True
    assets: dict[str, dict] = {}
    for b in S2.bands:
        key = b.keys[0]
        res = b.resolution_m
        assets[key] = {
            "href": hrefs[b.name],
            "type": COG_MIME,
            "title": _S2_TITLES[b.name],
            "eo:bands": [
                {
                    "name": b.name,
                    "common_name": key
                    if key in ("coastal", "blue", "green", "red", "nir", "nir08", "nir09", "swir16", "swir22")
                    else "rededge",
                    "center_wavelength": b.wavelength_um,
                    "full_width_half_max": _S2_FWHM[b.name],
                }
            ],
            "gsd": res,
            "proj:shape": list(tile.shape(res)),
            "proj:transform": list(tile.transform(res))[:6],
            "raster:bands": [
                {
                    "nodata": 0,
                    "data_type": "uint16",
                    "spatial_resolution": res,
                    "scale": 0.0001,
                    "offset": -0.1 if offset_in_dn else 0,
                }
            ],
            **_file_fields(local[b.name]),
            "roles": ["data", "reflectance"],
        }
    assets[S2_SCL.keys[0]] = {
        "href": hrefs["SCL"],
        "type": COG_MIME,
        "title": "Scene classification map (SCL)",
        "gsd": 20,
        "proj:shape": list(tile.shape(20)),
        "proj:transform": list(tile.transform(20))[:6],
        "raster:bands": [{"nodata": 0, "data_type": "uint8", "spatial_resolution": 20}],
        **_file_fields(local["SCL"]),
        "roles": ["data"],
    }
    collection = "sentinel-2-l2a" if boa == "harmonised" else "sentinel-2-c1-l2a"
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "id": item_id,
        "properties": props,
        "geometry": {"type": "Polygon", "coordinates": [ring]},
        "links": [],
        "assets": assets,
        "bbox": _bbox(ring),
        "stac_extensions": list(_S2_EXTENSIONS),
        "collection": collection,
    }


def s2_item_id(tile: TileGrid, when: _dt.datetime, platform: str = "sentinel-2a") -> str:
    """Earth Search v1 style id: ``S2A_T33TXM_20220311T101021_L2A``."""
    return f"S2{platform[-1].upper()}_T{tile.name}_{when.strftime('%Y%m%dT%H%M%S')}_L2A"


def s2_scene_dir(tile: TileGrid, when: _dt.datetime, item_id: str, boa: str) -> str:
    """Archive-relative folder of an S2 scene (Earth Search layout)."""
    coll = "sentinel-2-l2a" if boa == "harmonised" else "sentinel-2-c1-l2a"
    zone, band, sq = tile.name[:2], tile.name[2], tile.name[3:]
    return f"{coll}/{int(zone)}/{band}/{sq}/{when.year}/{when.month}/{item_id}"


def write_s2_scene(
    root_local: Path,
    root_uri: str,
    tile: TileGrid,
    when: _dt.datetime,
    bands_dn: Mapping[str, np.ndarray],
    scl: np.ndarray,
    *,
    boa: str = "offset",
    edge: str = "none",
    blocksize: int | None = None,
    item_id: str | None = None,
    platform: str = "sentinel-2a",
) -> dict:
    """Write the 12 band COGs + SCL of one S2 scene and return its STAC item (hrefs under ``root_uri``).

    ``bands_dn``: canonical band name -> uint16 array on that band's native grid (``tile.shape(res)``),
    already in the DN convention ``boa`` says ("offset": +1000 carried; "legacy"/"harmonised": none).
    ``scl``: uint8 on the 20 m grid. ``edge`` only shapes the item geometry.
    """
    if boa not in BOA_MODES:
        raise ValueError(f"boa must be one of {BOA_MODES}, got {boa!r}")
    blocksize = blocksize or auto_blocksize(tile.size_px)
    item_id = item_id or s2_item_id(tile, when, platform)
    rel = s2_scene_dir(tile, when, item_id, boa)
    local: dict[str, Path] = {}
    hrefs: dict[str, str] = {}
    for b in (*S2.bands, S2_SCL):
        arr = scl if b is S2_SCL else bands_dn[b.name]
        want = tile.shape(b.resolution_m)
        if arr.shape != want:
            raise ValueError(f"{b.name}: shape {arr.shape} != {want} for {b.resolution_m} m")
        p = root_local / rel / f"{b.name}.tif"
        write_cog(p, arr, tile.crs, tile.transform(b.resolution_m), nodata=0, blocksize=blocksize)
        local[b.name], hrefs[b.name] = p, _join(root_uri, f"{rel}/{b.name}.tif")
    return _s2_item(
        item_id=item_id,
        tile=tile,
        when=when,
        boa=boa,
        hrefs=hrefs,
        local=local,
        scl=scl,
        edge=edge,
        platform=platform,
    )


def _s1_item(
    *,
    item_id: str,
    epsg: int,
    transform: Affine,
    shape: tuple[int, int],
    when: _dt.datetime,
    hrefs: Mapping[str, str],
    local: Mapping[str, Path],
    ring: list[list[float]],
    orbit: str,
    proj_code: bool,
    platform: str,
) -> dict:
    """A Planetary Computer ``sentinel-1-rtc`` style item."""
    h, w = shape
    x0, y0 = transform.c, transform.f
    pbbox = [x0, y0 + transform.e * h, x0 + transform.a * w, y0]
    props = {
        "datetime": _iso(when),
        "start_datetime": _iso(when - _dt.timedelta(seconds=12)),
        "end_datetime": _iso(when + _dt.timedelta(seconds=12)),
        "platform": platform.upper(),
        "constellation": "sentinel-1",
        "instruments": ["c-sar"],
        "sar:instrument_mode": "IW",
        "sar:frequency_band": "C",
        "sar:center_frequency": 5.405,
        "sar:polarizations": ["VV", "VH"],
        "sar:product_type": "GRD",
        "sar:resolution_range": 20,
        "sar:resolution_azimuth": 22,
        "sar:pixel_spacing_range": 10,
        "sar:pixel_spacing_azimuth": 10,
        "sar:looks_range": 5,
        "sar:looks_azimuth": 1,
        "sar:looks_equivalent_number": 4.4,
        "sar:observation_direction": "right",
        "sat:orbit_state": orbit,
        "sat:relative_orbit": 22 if orbit == "descending" else 117,
        "sat:platform_international_designator": "2014-016A",
        "s1:processing_level": "1",
        "s1:product_timeliness": "Fast-24h",
        "s1:resolution": "high",
    }
    if proj_code:
        props["proj:code"] = f"EPSG:{epsg}"
    else:
        props["proj:epsg"] = epsg
    assets = {}
    for b in S1.bands:
        key = b.keys[0]
        pol = b.name
        assets[key] = {
            "href": hrefs[b.name],
            "type": COG_MIME,
            "title": f"{pol}: {'vertical' if pol[0] == 'V' else 'horizontal'} transmit, "
            f"{'vertical' if pol[1] == 'V' else 'horizontal'} receive",
            "description": f"Terrain-corrected gamma naught values of signal transmitted with {pol} "
            "polarization. Linear power, not dB.",
            "proj:shape": [h, w],
            "proj:transform": list(transform)[:6],
            "proj:bbox": pbbox,
            "raster:bands": [
                {
                    "nodata": S1_NODATA,
                    "data_type": "float32",
                    "spatial_resolution": 10,
                    "scale": 1.0,
                    "offset": 0.0,
                }
            ],
            **_file_fields(local[b.name]),
            "roles": ["data"],
        }
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "id": item_id,
        "properties": props,
        "geometry": {"type": "Polygon", "coordinates": [ring]},
        "links": [],
        "assets": assets,
        "bbox": _bbox(ring),
        "stac_extensions": list(_S1_EXTENSIONS_PROJ2 if proj_code else _S1_EXTENSIONS),
        "collection": "sentinel-1-rtc",
    }


def s1_item_id(when: _dt.datetime, platform: str = "sentinel-1a", absolute_orbit: int = 42302) -> str:
    """Planetary Computer RTC style id, e.g.
    ``S1A_IW_GRDH_1SDV_20220312T050102_20220312T050127_042302_050AD9_rtc``."""
    t0, t1 = when - _dt.timedelta(seconds=12), when + _dt.timedelta(seconds=13)
    f = "%Y%m%dT%H%M%S"
    dt_id = f"{(absolute_orbit * 7919) % 0xFFFFFF:06X}"
    sat = f"S1{platform[-1].upper()}"
    return f"{sat}_IW_GRDH_1SDV_{t0.strftime(f)}_{t1.strftime(f)}_{absolute_orbit:06d}_{dt_id}_rtc"


def write_s1_scene(
    root_local: Path,
    root_uri: str,
    epsg: int,
    transform: Affine,
    when: _dt.datetime,
    vv: np.ndarray,
    vh: np.ndarray,
    *,
    blocksize: int = 256,
    orbit: str = "descending",
    proj_code: bool = False,
    item_id: str | None = None,
    platform: str = "sentinel-1a",
) -> dict:
    """Write vv/vh float32 COGs (nodata :data:`S1_NODATA`) and return the ``sentinel-1-rtc`` item.

    The item geometry is the raster's extent in WGS84 (the nodata wedge is not cut out of it, as for the
    real RTC items whose footprints are the swath's).
    """
    item_id = item_id or s1_item_id(when, platform, 40000 + when.timetuple().tm_yday)
    rel = f"sentinel-1-rtc/{when.year}/{when.month}/{item_id}/measurement"
    h, w = vv.shape
    local, hrefs = {}, {}
    for name, arr in (("VV", vv), ("VH", vh)):
        p = root_local / rel / f"{name.lower()}.tif"
        write_cog(p, arr.astype(np.float32), epsg, transform, nodata=S1_NODATA, blocksize=blocksize)
        local[name], hrefs[name] = p, _join(root_uri, f"{rel}/{name.lower()}.tif")
    xs = [transform.c, transform.c, transform.c + w * transform.a, transform.c + w * transform.a]
    ys = [transform.f, transform.f + h * transform.e, transform.f + h * transform.e, transform.f]
    lon, lat = warp_transform(CRS.from_epsg(epsg), "EPSG:4326", xs, ys)
    ring = [[round(a, 8), round(b, 8)] for a, b in zip(lon, lat)]
    ring.append(ring[0])
    return _s1_item(
        item_id=item_id,
        epsg=epsg,
        transform=transform,
        shape=(h, w),
        when=when,
        hrefs=hrefs,
        local=local,
        ring=ring,
        orbit=orbit,
        proj_code=proj_code,
        platform=platform,
    )


def item_collection(items: Sequence[dict]) -> dict:
    """A GeoJSON FeatureCollection of STAC items (what an Earth Search / PC search is saved as)."""
    return {"type": "FeatureCollection", "features": list(items)}


def _dump(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1, sort_keys=False, ensure_ascii=False) + "\n")


# -------------------------------------------------------------------------------------- rendering


def _to_dn(refl: np.ndarray, boa: str) -> np.ndarray:
    """Reflectance -> uint16 DN (x10000, +1000 when ``boa == "offset"``), valid pixels >= 1."""
    add = 1000.0 if boa == "offset" else 0.0
    return np.clip(np.rint(refl * 10000.0 + add), 1, 65535).astype(np.uint16)


def _downsample_mean(a: np.ndarray, k: int) -> np.ndarray:
    if k == 1:
        return a
    *lead, h, w = a.shape
    return a.reshape(*lead, h // k, k, w // k, k).mean(axis=(-3, -1))


@dataclass(frozen=True)
class S2Render:
    """What :func:`render_s2` painted: DN per band, SCL, and the masks the tests check against."""

    bands_dn: dict[str, np.ndarray]
    scl: np.ndarray  # (H20, W20) uint8
    cloud20: np.ndarray  # SCL 8, 9, 10 (bool, 20 m)
    shadow20: np.ndarray  # SCL 3
    nodata20: np.ndarray  # SCL 0
    green10: np.ndarray  # phenology green fraction (10 m)


def render_s2(
    tile: TileGrid,
    lc: np.ndarray,
    when: _dt.datetime,
    *,
    seed: int,
    scene_key: str,
    cloud_frac: float,
    edge: str,
    boa: str,
) -> S2Render:
    """Render one S2 acquisition of ``tile`` from its land cover: reflectance, clouds, shadows, SCL, edges.

    Surface and clouds draw from separate seeded streams, so the same scene rendered with ``cloud_frac=0``
    is its exact clear-sky version (what the tests compare against).
    """
    r_surface = _rng(seed, "s2", tile.name, scene_key, "surface")
    r_cloud = _rng(seed, "s2", tile.name, scene_key, "cloud")
    doy = when.timetuple().tm_yday
    south = tile.epsg >= 32700
    surface = _Surface(lc, doy, south, _parcel_shift(tile, seed), r_surface)
    s20, s60 = tile.shape(20), tile.shape(60)
    masks = _cloud_masks(s20, cloud_frac, r_cloud)
    nod60 = _edge_mask60(s60, edge)
    nod20 = _upsample(nod60, 3)
    up = lambda m: _upsample(m, 2)
    cloudy = masks["field"] is not None
    if cloudy:
        bright = up(0.85 + 0.15 * np.tanh(masks["field"])).astype(np.float32)  # thicker clouds are brighter
        paint = [(up(masks["high"]), 1.0), (up(masks["medium"]), 0.6)]
        cirrus, shadow = up(masks["cirrus"]), up(masks["shadow"])
    bands: dict[str, np.ndarray] = {}
    clear: dict[str, np.ndarray] = {}
    for i, b in enumerate(S2.bands):
        refl = surface.band(i)
        if b.name in ("B04", "B08"):
            clear[b.name] = refl[::2, ::2].copy()  # for the SCL's vegetation test (20 m)
        if cloudy:
            for m, w in paint:
                refl[m] = (1 - w) * refl[m] + w * _CLOUD[i] * bright[m]
            if i < 10:
                refl[cirrus] += 0.06
            refl[shadow] *= 0.35
        np.clip(refl, 0.0001, 1.5, out=refl)
        k = b.resolution_m // 10
        dn = _to_dn(_downsample_mean(refl, k), boa)
        dn[_upsample(nod60, 6 // k)] = 0
        bands[b.name] = dn
        del refl
    # SCL from land cover (20 m: top-left 10 m pixel of each 2x2) and clear-sky NDVI, then clouds on top.
    lc20 = lc[::2, ::2]
    ndvi20 = (clear["B08"] - clear["B04"]) / (clear["B08"] + clear["B04"] + 1e-6)
    scl = np.full(s20, 5, np.uint8)
    for cid, name in LANDCOVER_CLASSES.items():
        m = lc20 == cid
        if name in _SCL_OF:
            scl[m] = _SCL_OF[name]
        else:
            scl[m & (ndvi20 >= 0.4)] = 4
    scl[masks["shadow"]] = 3
    scl[masks["cirrus"]] = 10
    scl[masks["medium"]] = 8
    scl[masks["high"]] = 9
    scl[nod20] = 0
    cloud20 = masks["high"] | masks["medium"] | masks["cirrus"]
    return S2Render(bands, scl, cloud20 & ~nod20, masks["shadow"] & ~nod20, nod20, surface.green)


def render_s1(
    lc: np.ndarray,
    tile: TileGrid,
    epsg: int,
    transform: Affine,
    shape: tuple[int, int],
    when: _dt.datetime,
    *,
    seed: int,
    scene_key: str,
    edge: str,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render S1 (VV, VH) linear gamma0 on an arbitrary 10 m grid from the tile's land cover.

    The land cover is reprojected (nearest) onto the S1 grid; outside the tile and inside the swath-edge
    wedge the value is :data:`S1_NODATA`. Returns (vv, vh, lc_on_s1_grid).
    """
    r = _rng(seed, "s1", scene_key)
    lc1 = np.zeros(shape, np.uint8)
    reproject(
        lc,
        lc1,
        src_transform=tile.transform(10),
        src_crs=tile.crs,
        dst_transform=transform,
        dst_crs=CRS.from_epsg(epsg),
        resampling=Resampling.nearest,
        src_nodata=0,
        dst_nodata=0,
    )
    doy = when.timetuple().tm_yday
    south = tile.epsg >= 32700
    vv = np.zeros(shape, np.float32)
    vh = np.zeros(shape, np.float32)
    for cid, name in LANDCOVER_CLASSES.items():
        m = lc1 == cid
        if not m.any():
            continue
        a, b = _SAR[name]
        if name in ("cropland", "grassland"):
            g = float(green_fraction(name, doy, south))
            a, b = a * (0.6 + 0.9 * g), b * (0.4 + 1.6 * g)
        vv[m], vh[m] = a, b
    looks = 4.0
    vv *= r.gamma(looks, 1 / looks, shape).astype(np.float32)
    vh *= r.gamma(looks, 1 / looks, shape).astype(np.float32)
    nod = (lc1 == 0) | _edge_mask60(shape, edge)
    vv[nod] = S1_NODATA
    vh[nod] = S1_NODATA
    return vv, vh, lc1


# ------------------------------------------------------------------------------------ the archive


@dataclass(frozen=True)
class SceneInfo:
    """One written scene: enough for tests to know what to expect without re-reading the items."""

    item_id: str
    sensor: str  # "s2" | "s1"
    tile: str  # the S2 tile it was rendered from
    epsg: int
    datetime: str  # ISO, UTC
    hrefs: Mapping[str, str]  # canonical band name ("B01".."B12", "B8A", "SCL" / "VV", "VH") -> URI
    boa: str | None = None  # S2: one of BOA_MODES
    cloud_fraction: float | None = None  # S2: fraction of valid SCL pixels in 3, 8, 9, 10
    nodata_fraction: float | None = None  # fraction of pixels that are nodata
    edge: str = "none"


@dataclass(frozen=True)
class ArchiveInfo:
    """What :func:`make_archive` wrote. URIs are absolute paths (local output) or ``s3://`` URIs."""

    root: str
    items: str  # the ItemCollection (items.json)
    scenes: tuple[SceneInfo, ...]
    tiles: tuple[TileGrid, ...]
    truth: Mapping[str, str]  # tile name -> land-cover COG (uint8, 10 m, tile grid)
    classes: str  # classes.json: land-cover ids, names, colours
    seed: int
    storage_options: Mapping[str, object] = field(default_factory=dict)

    @property
    def s2(self) -> tuple[SceneInfo, ...]:
        return tuple(s for s in self.scenes if s.sensor == "s2")

    @property
    def s1(self) -> tuple[SceneInfo, ...]:
        return tuple(s for s in self.scenes if s.sensor == "s1")

    def scene(self, item_id: str) -> SceneInfo:
        for s in self.scenes:
            if s.item_id == item_id:
                return s
        raise KeyError(item_id)

    def item_collection(self) -> dict:
        """The ItemCollection as a dict (read back through fsspec, so it works for s3:// too)."""
        with _open(self.items, "rb", self.storage_options) as f:
            return json.load(f)


def scene_dates(n: int, year: int, seed: int) -> list[_dt.datetime]:
    """``n`` acquisition times spread over ``year`` (one per ~365/n days, a few days of seeded jitter)."""
    r = _rng(seed, "dates", year, n)
    start = _dt.datetime(year, 1, 1, 10, 0, 0, tzinfo=UTC)
    out = []
    for i in range(n):
        d = (i + 0.5) * 365.0 / n + float(r.uniform(-0.2, 0.2)) * min(365.0 / n, 20.0)
        out.append(start + _dt.timedelta(days=int(d), seconds=int(r.integers(0, 1800))))
    return sorted(out)


#: Cloud fractions cycled over scenes (a clear one, a partly cloudy one, a fairly cloudy one, ...).
CLOUD_FRACTIONS = (0.05, 0.25, 0.12, 0.45, 0.0, 0.3)
#: Swath-edge wedges cycled over S2 scenes.
EDGES = ("west", "none", "east")


def make_archive(
    output: str | os.PathLike,
    *,
    scenes: int = 3,
    s1_scenes: int = 2,
    seed: int = 0,
    size_px: int = 1536,
    epsg: int | Sequence[int] = 32633,
    blocksize: int | None = None,
    year: int = 2022,
    cloud_fractions: Sequence[float] = CLOUD_FRACTIONS,
    boa_modes: Sequence[str] = BOA_MODES,
    edges: Sequence[str] = EDGES,
    storage_options: Mapping[str, object] | None = None,
    workers: int = 1,
) -> ArchiveInfo:
    """Write a synthetic archive under ``output`` (local path or ``s3://bucket/prefix``); see module doc.

    ``scenes`` / ``s1_scenes`` are per tile; one tile per ``epsg`` (:func:`default_tile`). ``size_px``
    (10 m pixels per side) must be a multiple of 6. S2 scene ``i`` of a tile gets cloud fraction
    ``cloud_fractions[i % len]``, radiometry ``boa_modes[i % len]``, swath edge ``edges[i % len]``; dates
    spread over ``year``. S1 scene ``j`` is dated 2 days after S2 scene ``j % scenes``; even ``j``: same
    zone with a grid shifted by (+3 m, -4 m) and ~5 % larger; odd ``j``: neighbouring UTM zone
    (``proj:code``). ``workers`` > 1 renders scenes in that many processes (same bytes as serial).
    Returns an :class:`ArchiveInfo`.
    """
    if size_px % 6 or size_px < 12:
        raise ValueError(f"size_px must be a positive multiple of 6 (20 m and 60 m grids), got {size_px}")
    if scenes < 0 or s1_scenes < 0:
        raise ValueError("scenes and s1_scenes must be >= 0")
    for m in boa_modes:
        if m not in BOA_MODES:
            raise ValueError(f"boa mode must be one of {BOA_MODES}, got {m!r}")
    for e in edges:
        if e not in EDGES:
            raise ValueError(f"edge must be one of {EDGES}, got {e!r}")
    epsgs = [epsg] if isinstance(epsg, int) else list(epsg)
    storage_options = dict(storage_options or {})
    root_uri = _absolute_uri(output)
    blocksize = blocksize or auto_blocksize(size_px)
    with _local_staging(root_uri) as local_root:
        tiles, jobs, truth = [], [], {}
        for e in epsgs:
            tile = default_tile(e, size_px)
            tiles.append(tile)
            lc = make_landcover(tile, seed)
            tpath = local_root / "truth" / f"{tile.name}_landcover.tif"
            write_cog(tpath, lc, tile.crs, tile.transform(10), nodata=0, blocksize=blocksize)
            truth[tile.name] = _join(root_uri, f"truth/{tile.name}_landcover.tif")
            dates = scene_dates(scenes, year, seed)
            common = dict(
                tile=tile, lc=lc, seed=seed, local_root=local_root, root_uri=root_uri, blocksize=blocksize
            )
            for i, when in enumerate(dates):
                jobs.append(
                    (
                        _s2_job,
                        dict(
                            common,
                            i=i,
                            when=when,
                            boa=boa_modes[i % len(boa_modes)],
                            edge=edges[i % len(edges)],
                            cloud_frac=float(cloud_fractions[i % len(cloud_fractions)]),
                        ),
                    )
                )
            for j in range(s1_scenes):
                base = dates[j % len(dates)] if dates else _dt.datetime(year, 6, 1, 5, tzinfo=UTC)
                when = base.replace(hour=5, minute=1, second=2)
                when += _dt.timedelta(days=2 + 12 * (j // max(len(dates), 1)))
                jobs.append((_s1_job, dict(common, j=j, when=when)))
        if workers > 1 and len(jobs) > 1:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            ctx = multiprocessing.get_context("spawn")  # safe beside threads (Ray, s3fs)
            with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
                futures = [pool.submit(fn, **kw) for fn, kw in jobs]
                results = [f.result() for f in futures]
        else:
            results = [fn(**kw) for fn, kw in jobs]
        items = [it for it, _ in results]
        infos = [info for _, info in results]
        classes = {
            "classes": [
                {"id": k, "name": v, "scl_when_clear": _SCL_OF.get(v, 4)}
                for k, v in LANDCOVER_CLASSES.items()
            ],
            "nodata": 0,
            "source": "pipeline.synthetic.make_landcover",
            "seed": seed,
        }
        _dump(classes, local_root / "truth" / "classes.json")
        _dump(item_collection(items), local_root / "items.json")
        _publish(local_root, root_uri, storage_options)
    return ArchiveInfo(
        root=root_uri,
        items=_join(root_uri, "items.json"),
        scenes=tuple(infos),
        tiles=tuple(tiles),
        truth=truth,
        classes=_join(root_uri, "truth/classes.json"),
        seed=seed,
        storage_options=storage_options,
    )


def _s2_job(
    *,
    tile: TileGrid,
    lc,
    seed: int,
    local_root: Path,
    root_uri: str,
    blocksize: int,
    i: int,
    when: _dt.datetime,
    boa: str,
    edge: str,
    cloud_frac: float,
) -> tuple[dict, SceneInfo]:
    """Render and write S2 scene ``i`` of ``tile``; returns (item, info). Top level: runs in processes."""
    rend = render_s2(tile, lc, when, seed=seed, scene_key=f"{i}", cloud_frac=cloud_frac, edge=edge, boa=boa)
    item = write_s2_scene(
        local_root,
        root_uri,
        tile,
        when,
        rend.bands_dn,
        rend.scl,
        boa=boa,
        edge=edge,
        blocksize=blocksize,
        platform="sentinel-2a" if i % 2 == 0 else "sentinel-2b",
    )
    valid = ~rend.nodata20
    cloud = float((rend.cloud20 | rend.shadow20)[valid].mean()) if valid.any() else 0.0
    info = SceneInfo(
        item_id=item["id"],
        sensor="s2",
        tile=tile.name,
        epsg=tile.epsg,
        datetime=_iso(when),
        hrefs=_hrefs_of(item, S2.bands + (S2_SCL,)),
        boa=boa,
        cloud_fraction=cloud,
        nodata_fraction=float(rend.nodata20.mean()),
        edge=edge,
    )
    return item, info


def _s1_job(
    *,
    tile: TileGrid,
    lc,
    seed: int,
    local_root: Path,
    root_uri: str,
    blocksize: int,
    j: int,
    when: _dt.datetime,
) -> tuple[dict, SceneInfo]:
    """Render and write S1 scene ``j`` over ``tile`` (grid from :func:`_s1_grid`); returns (item, info)."""
    s1_epsg, tr, shp = _s1_grid(tile, j)
    edge = "east" if j % 2 == 0 else "west"
    vv, vh, _ = render_s1(
        lc, tile, s1_epsg, tr, shp, when, seed=seed, scene_key=f"{tile.name}/{j}", edge=edge
    )
    platform = "sentinel-1a" if j % 2 == 0 else "sentinel-1b"
    item = write_s1_scene(
        local_root,
        root_uri,
        s1_epsg,
        tr,
        when,
        vv,
        vh,
        blocksize=blocksize,
        orbit="descending" if j % 2 == 0 else "ascending",
        proj_code=j % 2 == 1,
        item_id=s1_item_id(when, platform, 40000 + 100 * j + when.timetuple().tm_yday),
        platform=platform,
    )
    info = SceneInfo(
        item_id=item["id"],
        sensor="s1",
        tile=tile.name,
        epsg=s1_epsg,
        datetime=_iso(when),
        hrefs=_hrefs_of(item, S1.bands),
        nodata_fraction=float((vv == S1_NODATA).mean()),
        edge=edge,
    )
    return item, info


def _hrefs_of(item: dict, bands) -> dict[str, str]:
    from pipeline.sensors import find_asset_key

    out = {}
    for b in bands:
        k = find_asset_key(b, item["assets"])
        if k is not None:
            out[b.name] = item["assets"][k]["href"]
    return out


def _s1_grid(tile: TileGrid, j: int) -> tuple[int, Affine, tuple[int, int]]:
    """S1 scene ``j``'s grid: even j: same zone, shifted (+3 m, -4 m), padded; odd j: next zone east."""
    n = tile.size_px
    if j % 2 == 0:
        pad = max(n // 40, 2) * 10.0
        tr = Affine(10.0, 0.0, tile.x0 - pad + 3.0, 0.0, -10.0, tile.y0 + pad - 4.0)
        m = n + int(2 * pad / 10)
        return tile.epsg, tr, (m, m)
    zone = tile.epsg % 100
    other = tile.epsg - zone + (zone % 60) + 1
    bx0, by0, bx1, by1 = transform_bounds(tile.crs, CRS.from_epsg(other), *tile.bounds, densify_pts=21)
    x0, y0 = (
        math.floor(bx0 / 10) * 10 + 3.0,
        math.ceil(by1 / 10) * 10 - 7.0,
    )  # off the 10 m lattice on purpose
    w, h = int(math.ceil((bx1 - x0) / 10)), int(math.ceil((y0 - by0) / 10))
    return other, Affine(10.0, 0.0, x0, 0.0, -10.0, y0), (h, w)


# ------------------------------------------------------------------------------------ storage glue


def _absolute_uri(output: str | os.PathLike) -> str:
    s = os.fspath(output)
    if s.startswith("s3://"):
        return s.rstrip("/")
    if s.startswith("file://"):
        s = s[len("file://") :]
    if "://" in s:
        raise ValueError(f"unsupported output URI {s!r}: use a local path or s3://bucket/prefix")
    return str(Path(s).expanduser().resolve())


class _local_staging:
    """Context manager: the local directory to write into (the output itself, or a temp dir for s3://)."""

    def __init__(self, root_uri: str):
        self.root_uri = root_uri
        self.tmp: str | None = None

    def __enter__(self) -> Path:
        if self.root_uri.startswith("s3://"):
            self.tmp = tempfile.mkdtemp(prefix="skyray-synth-")
            return Path(self.tmp)
        p = Path(self.root_uri)
        p.mkdir(parents=True, exist_ok=True)
        return p

    def __exit__(self, *exc):
        if self.tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)
        return False


def s3_filesystem(storage_options: Mapping[str, object] | None = None):
    """An s3fs filesystem; ``AWS_ENDPOINT_URL`` (if set and not overridden) is passed as the endpoint."""
    import fsspec

    opts = dict(storage_options or {})
    ep = os.environ.get("AWS_ENDPOINT_URL")
    if ep and "endpoint_url" not in opts and "endpoint_url" not in opts.get("client_kwargs", {}):
        opts["endpoint_url"] = ep
    return fsspec.filesystem("s3", skip_instance_cache=True, **opts)


def _publish(local_root: Path, root_uri: str, storage_options: Mapping[str, object]) -> None:
    """Upload the staged tree to ``root_uri`` when it is s3:// (sorted, one PUT per file)."""
    if not root_uri.startswith("s3://"):
        return
    fs = s3_filesystem(storage_options)
    for p in sorted(local_root.rglob("*")):
        if p.is_file():
            fs.put_file(str(p), _join(root_uri, p.relative_to(local_root).as_posix()))


def _open(uri: str, mode: str, storage_options: Mapping[str, object] | None = None):
    if uri.startswith("s3://"):
        return s3_filesystem(storage_options).open(uri, mode)
    return open(uri, mode)


# -------------------------------------------------------------------------------- known patterns


def pattern_value(band: str, row: int | np.ndarray, col: int | np.ndarray):
    """DN of a 10 m band pixel (row, col) of :func:`write_pattern_scene` (before any harmonisation).

    B02 = 1 + row, B03 = 1 + col (exact position), B04 = 1 + (row * 257 + col * 7) % 65000 (a hash that
    catches transposes and flips), B08 = 1 + ((row + col) % 1000) + 10000 * band index of B08 (= 7).
    Every value is >= 1 (0 is nodata) and fits uint16 for scenes up to 65534 px.
    """
    row, col = np.asarray(row, np.int64), np.asarray(col, np.int64)
    if band == "B02":
        v = 1 + row + 0 * col
    elif band == "B03":
        v = 1 + col + 0 * row
    elif band == "B04":
        v = 1 + (row * 257 + col * 7) % 65000
    elif band == "B08":
        v = 1 + (row + col) % 1000 + 10000 * S2.band_names.index("B08")
    else:
        raise ValueError(f"{band} is not a 10 m band; use pattern_ramp for 20/60 m bands")
    return v.astype(np.uint16)


def pattern_ramp(band: str, x: float | np.ndarray, y: float | np.ndarray, x0: float, y0: float):
    """Value (float) of the 20/60 m band ``band`` of :func:`write_pattern_scene` at map point (x, y).

    A plane in map coordinates, ``1000 + 500 * i + (x - x0) / 20 + (y0 - y) / 40`` (``i`` = band index in
    :data:`pipeline.sensors.S2`, (x0, y0) the tile's top-left corner), sampled at pixel centres and rounded.
    Bilinear resampling of a plane is the plane, so after resampling to 10 m the value at a 10 m pixel
    centre equals this function within rounding (+-1 DN) away from the scene border.
    """
    i = S2.band_names.index(band)
    return 1000.0 + 500.0 * i + (np.asarray(x) - x0) / 20.0 + (y0 - np.asarray(y)) / 40.0


def write_pattern_scene(
    output: str | os.PathLike,
    *,
    epsg: int = 32633,
    size_px: int = 1032,
    when: _dt.datetime = _dt.datetime(2022, 6, 15, 10, 0, tzinfo=UTC),
    boa: str = "harmonised",
    blocksize: int | None = None,
    cloud_box: tuple[int, int, int, int] | None = None,
    x0: float | None = None,
    y0: float | None = None,
    items_name: str | None = "items.json",
    storage_options: Mapping[str, object] | None = None,
) -> dict:
    """Write a KNOWN-PATTERN S2 scene for pixel-exact placement tests; return its STAC item.

    10 m bands hold :func:`pattern_value` (B02 = 1 + row, B03 = 1 + col, ...), 20/60 m bands the plane of
    :func:`pattern_ramp`; SCL is 4 (vegetation, clear) everywhere except ``cloud_box`` = (row0, col0, row1,
    col1) in 10 m pixels (half-open, even numbers so it is whole 20 m pixels), where SCL is 9 and the pixels
    keep their pattern values. ``boa="offset"`` adds +1000 to every DN (baseline 05.10 without flag) so tests
    can check it is removed exactly once. The tile is :func:`default_tile` unless ``x0``/``y0`` are given.
    Also writes ``<output>/<items_name>`` (an ItemCollection of this one item) unless ``items_name`` is None.
    """
    if size_px % 6:
        raise ValueError(f"size_px must be a multiple of 6, got {size_px}")
    t = default_tile(epsg, size_px)
    tile = TileGrid(f"{t.name[:3]}PAT", epsg, t.x0 if x0 is None else x0, t.y0 if y0 is None else y0, size_px)
    add = 1000 if boa == "offset" else 0
    bands: dict[str, np.ndarray] = {}
    for b in S2.bands:
        res = b.resolution_m
        h, w = tile.shape(res)
        if res == 10:
            rr, cc = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
            v = pattern_value(b.name, rr, cc).astype(np.int64) + add
        else:
            xs = tile.x0 + (np.arange(w) + 0.5) * res
            ys = tile.y0 - (np.arange(h) + 0.5) * res
            v = (
                np.rint(pattern_ramp(b.name, xs[None, :], ys[:, None], tile.x0, tile.y0)).astype(np.int64)
                + add
            )
        bands[b.name] = np.clip(v, 1, 65535).astype(np.uint16)
    scl = np.full(tile.shape(20), 4, np.uint8)
    if cloud_box is not None:
        r0, c0, r1, c1 = cloud_box
        scl[r0 // 2 : r1 // 2, c0 // 2 : c1 // 2] = 9
    root_uri = _absolute_uri(output)
    with _local_staging(root_uri) as local_root:
        item = write_s2_scene(local_root, root_uri, tile, when, bands, scl, boa=boa, blocksize=blocksize)
        if items_name:
            _dump(item_collection([item]), local_root / items_name)
        _publish(local_root, root_uri, dict(storage_options or {}))
    return item


def pattern_s1_power(pol: str, x: float | np.ndarray, y: float | np.ndarray, x0: float, y0: float):
    """Linear power of :func:`write_pattern_s1_scene` at map point (x, y) of the S2 tile's CRS.

    ``VV = 0.02 + 1e-5 * (x - x0) + 5e-6 * (y0 - y)``, ``VH = VV / 5``: a plane in the *S2 tile's* CRS, so a
    warp onto the tile grid can be checked against it (to within the small curvature of the zone change).
    """
    vv = 0.02 + 1e-5 * (np.asarray(x) - x0) + 5e-6 * (y0 - np.asarray(y))
    return vv if pol == "VV" else vv / 5.0


def write_pattern_s1_scene(
    output: str | os.PathLike,
    *,
    epsg: int = 32633,
    size_px: int = 1032,
    when: _dt.datetime = _dt.datetime(2022, 6, 16, 5, 1, 2, tzinfo=UTC),
    neighbour_zone: bool = False,
    blocksize: int = 256,
    items_name: str | None = "items_s1.json",
    storage_options: Mapping[str, object] | None = None,
) -> dict:
    """Write an S1 RTC scene whose VV/VH are :func:`pattern_s1_power` over the pattern tile; return its item.

    Same zone (grid shifted by (+3 m, -4 m) and padded) or, with ``neighbour_zone``, the next UTM zone east
    (values evaluated at each S1 pixel centre transformed to the tile CRS). No nodata inside the footprint.
    """
    t = default_tile(epsg, size_px)
    tile = TileGrid(f"{t.name[:3]}PAT", epsg, t.x0, t.y0, size_px)
    s1_epsg, tr, (h, w) = _s1_grid(tile, 1 if neighbour_zone else 0)
    cols, rows = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
    xs, ys = tr.c + cols * tr.a, tr.f + rows * tr.e
    if s1_epsg != epsg:
        tx, ty = warp_transform(CRS.from_epsg(s1_epsg), tile.crs, xs.ravel(), ys.ravel())
        xs, ys = np.asarray(tx).reshape(h, w), np.asarray(ty).reshape(h, w)
    vv = pattern_s1_power("VV", xs, ys, tile.x0, tile.y0).astype(np.float32)
    vh = pattern_s1_power("VH", xs, ys, tile.x0, tile.y0).astype(np.float32)
    root_uri = _absolute_uri(output)
    with _local_staging(root_uri) as local_root:
        item = write_s1_scene(
            local_root,
            root_uri,
            s1_epsg,
            tr,
            when,
            vv,
            vh,
            blocksize=blocksize,
            proj_code=neighbour_zone,
        )
        if items_name:
            _dump(item_collection([item]), local_root / items_name)
        _publish(local_root, root_uri, dict(storage_options or {}))
    return item


# ------------------------------------------------------------------------------------- bad inputs


def truncate_cog(src: str | os.PathLike, dst: str | os.PathLike, keep: float = 0.6) -> Path:
    """Copy the first ``keep`` fraction of a COG's bytes to ``dst``: headers and IFDs (at the front of a COG)
    survive, so the file still *opens*, but reading full-resolution blocks fails — like an interrupted upload.
    """
    data = Path(src).read_bytes()
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(data[: max(16, int(len(data) * keep))])
    return dst


def corrupt_cog(dst: str | os.PathLike, size: int = 65536, seed: int = 0) -> Path:
    """Write ``size`` seeded garbage bytes named like a COG (not a TIFF at all: opening it fails)."""
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(_rng(seed, "garbage").integers(0, 256, size, dtype=np.uint8).tobytes())
    return dst


def item_missing_asset(item: dict, key: str = "red", new_id: str | None = None) -> dict:
    """A copy of ``item`` without asset ``key`` (a required band: reject reason ``missing_asset``)."""
    out = copy.deepcopy(item)
    out["assets"].pop(key)
    if new_id:
        out["id"] = new_id
    return out


def item_without_crs(item: dict, new_id: str | None = None) -> dict:
    """A copy of ``item`` with every ``proj:epsg`` / ``proj:code`` / ``proj:wkt2`` / ``proj:projjson`` removed
    (item and assets): reject reason ``missing_crs``."""
    out = copy.deepcopy(item)
    for d in [out["properties"], *out["assets"].values()]:
        for k in ("proj:epsg", "proj:code", "proj:wkt2", "proj:projjson"):
            d.pop(k, None)
    if new_id:
        out["id"] = new_id
    return out


def write_malformed_item(dst: str | os.PathLike, item: dict | None = None) -> Path:
    """Write a syntactically broken item JSON (a valid item cut mid-way): reject reason ``malformed_item``."""
    text = json.dumps(item or {"type": "Feature", "stac_version": "1.0.0", "id": "malformed", "assets": {}})
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_text(text[: len(text) // 2])
    return dst


def _uniform_scene(
    output: str | os.PathLike,
    *,
    kind: str,
    epsg: int,
    size_px: int,
    when: _dt.datetime,
    blocksize,
    seed: int,
    storage_options,
) -> dict:
    t = default_tile(epsg, size_px)
    # Away from the default tile (and from each other), so no other scene shares their grid cells.
    dx = {"cloud": 30720.0, "nodata": 61440.0}[kind]
    tile = TileGrid(t.name, epsg, t.x0 + dx, t.y0, size_px)
    lc = make_landcover(tile, seed)
    rend = render_s2(
        tile,
        lc,
        when,
        seed=seed,
        scene_key=kind,
        cloud_frac=1.0 if kind == "cloud" else 0.0,
        edge="all" if kind == "nodata" else "none",
        boa="legacy",
    )
    root_uri = _absolute_uri(output)
    with _local_staging(root_uri) as local_root:
        item = write_s2_scene(
            local_root,
            root_uri,
            tile,
            when,
            rend.bands_dn,
            rend.scl,
            boa="legacy",
            blocksize=blocksize,
            item_id=s2_item_id(tile, when).replace("_L2A", f"_ALL{kind.upper()}_L2A"),
        )
        _publish(local_root, root_uri, dict(storage_options or {}))
    return item


def write_all_cloud_scene(
    output: str | os.PathLike,
    *,
    epsg: int = 32633,
    size_px: int = 516,
    when: _dt.datetime = _dt.datetime(2022, 7, 1, 10, 0, tzinfo=UTC),
    blocksize: int | None = None,
    seed: int = 0,
    storage_options: Mapping[str, object] | None = None,
) -> dict:
    """An S2 scene whose SCL is cloud (8/9) everywhere: every tile it covers is rejected ``all_cloud``.

    It lies 30.72 km east of :func:`default_tile` (same zone), so it shares grid cells with no other scene
    written here; reflectance is bright cloud, never 0.
    """
    return _uniform_scene(
        output,
        kind="cloud",
        epsg=epsg,
        size_px=size_px,
        when=when,
        blocksize=blocksize,
        seed=seed,
        storage_options=storage_options,
    )


def write_all_nodata_scene(
    output: str | os.PathLike,
    *,
    epsg: int = 32633,
    size_px: int = 516,
    when: _dt.datetime = _dt.datetime(2022, 7, 3, 10, 0, tzinfo=UTC),
    blocksize: int | None = None,
    seed: int = 0,
    storage_options: Mapping[str, object] | None = None,
) -> dict:
    """An S2 scene that is 0 (nodata) in every band and the SCL: its tiles are rejected ``all_nodata``.

    It lies 61.44 km east of :func:`default_tile`, sharing grid cells with no other scene written here.
    """
    return _uniform_scene(
        output,
        kind="nodata",
        epsg=epsg,
        size_px=size_px,
        when=when,
        blocksize=blocksize,
        seed=seed,
        storage_options=storage_options,
    )


@dataclass(frozen=True)
class BadInputs:
    """What :func:`make_bad_inputs` wrote: a folder of item JSON files (good and bad) + expectations."""

    root: str
    items_dir: str  # one <id>.json per item (and one malformed file)
    items: str  # ItemCollection of every *parseable* item (the malformed one cannot be inside it)
    expected: Mapping[str, str]  # item id (file name for the malformed one) -> reject reason
    good: tuple[str, ...]  # ids of items that must ingest fine


def make_bad_inputs(
    output: str | os.PathLike,
    *,
    seed: int = 0,
    size_px: int = 516,
    epsg: int = 32633,
    storage_options: Mapping[str, object] | None = None,
) -> BadInputs:
    """One of every bad input beside one good scene, for reject tests.

    Writes under ``output``: a good S2 scene; items pointing at a truncated COG and at a garbage COG
    (``unreadable_cog``), an item missing its red asset (``missing_asset``), one without CRS
    (``missing_crs``), one with an href escaping via ``..`` (``bad_uri``), one with an ``ftp://`` href
    (``bad_uri``), a malformed JSON file (``malformed_item``), an all-cloud scene (``all_cloud``) and an
    all-nodata scene (``all_nodata``). ``items_dir`` holds one JSON file per item; ``items`` an
    ItemCollection of the parseable ones. ``expected`` maps item id -> reason (for the malformed file,
    which has no readable id, its file name ``BAD_MALFORMED_L2A.json``).

    The truncated / garbage items are copies of the good item (same tile and date) with their red href
    swapped, so the executor meets an unreadable scene inside a unit that also has a good one. The
    all-cloud / all-nodata scenes sit on their own grid cells (see their writers), so their rejects come
    at tile/unit level with sample/unit ids, every planned tile of theirs with that reason.
    """
    root_uri = _absolute_uri(output)
    with _local_staging(root_uri) as local_root:
        sub = local_root / "_scenes"
        good = make_archive(
            sub,
            scenes=1,
            s1_scenes=0,
            seed=seed,
            size_px=size_px,
            epsg=epsg,
            boa_modes=("legacy",),
            cloud_fractions=(0.0,),
            edges=("none",),
        )
        good_item = json.loads(Path(good.items).read_text())["features"][0]
        good_item = rebase_path(good_item, local_root, root_uri)
        cloud = rebase_path(
            write_all_cloud_scene(sub, epsg=epsg, size_px=size_px, seed=seed), local_root, root_uri
        )
        nodata = rebase_path(
            write_all_nodata_scene(sub, epsg=epsg, size_px=size_px, seed=seed), local_root, root_uri
        )
        gid = good_item["id"]
        red_local = Path(good.scene(gid).hrefs["B04"])
        trunc = truncate_cog(red_local, local_root / "bad" / "truncated_B04.tif")
        garbage = corrupt_cog(local_root / "bad" / "garbage_B04.tif", seed=seed)

        def with_red(new_id: str, href: str) -> dict:
            it = copy.deepcopy(good_item)
            it["id"] = new_id
            it["assets"]["red"]["href"] = href
            return it

        bad = {
            "BAD_TRUNCATED_L2A": (
                with_red("BAD_TRUNCATED_L2A", _join(root_uri, "bad/" + trunc.name)),
                "unreadable_cog",
            ),
            "BAD_GARBAGE_L2A": (
                with_red("BAD_GARBAGE_L2A", _join(root_uri, "bad/" + garbage.name)),
                "unreadable_cog",
            ),
            "BAD_MISSING_ASSET_L2A": (
                item_missing_asset(good_item, "red", "BAD_MISSING_ASSET_L2A"),
                "missing_asset",
            ),
            "BAD_NO_CRS_L2A": (item_without_crs(good_item, "BAD_NO_CRS_L2A"), "missing_crs"),
            "BAD_DOTDOT_L2A": (
                with_red("BAD_DOTDOT_L2A", _join(root_uri, "bad/../../../etc/B04.tif")),
                "bad_uri",
            ),
            "BAD_SCHEME_L2A": (with_red("BAD_SCHEME_L2A", "ftp://example.invalid/B04.tif"), "bad_uri"),
            cloud["id"]: (cloud, "all_cloud"),
            nodata["id"]: (nodata, "all_nodata"),
        }
        items_dir = local_root / "items"
        parseable = [good_item] + [it for it, _ in bad.values()]
        for it in parseable:
            _dump(it, items_dir / f"{it['id']}.json")
        write_malformed_item(items_dir / "BAD_MALFORMED_L2A.json", good_item)
        (local_root / "_scenes" / "items.json").unlink()
        _dump(item_collection(parseable), local_root / "items.json")
        _publish(local_root, root_uri, dict(storage_options or {}))
    expected = {k: reason for k, (_, reason) in bad.items()}
    expected["BAD_MALFORMED_L2A.json"] = "malformed_item"
    return BadInputs(root_uri, _join(root_uri, "items"), _join(root_uri, "items.json"), expected, (gid,))


def rebase_path(item: dict, local_root: Path, root_uri: str) -> dict:
    """A copy of ``item`` whose hrefs under ``local_root`` point to the same files under ``root_uri``."""
    item = copy.deepcopy(item)
    for a in item["assets"].values():
        a["href"] = _join(root_uri, Path(a["href"]).relative_to(local_root).as_posix())
    return item


# -------------------------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None, _print: Callable[[str], None] = print) -> ArchiveInfo:
    ap = argparse.ArgumentParser(
        prog="python -m pipeline.synthetic",
        description="Write a synthetic Sentinel-1/2 archive (COGs + STAC ItemCollection + land-cover truth).",
    )
    ap.add_argument("--output", required=True, help="local path or s3://bucket/prefix")
    ap.add_argument("--scenes", type=int, default=3, help="S2 scenes per tile (default 3)")
    ap.add_argument("--s1-scenes", type=int, default=2, help="S1 RTC scenes per tile (default 2)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--size-px", type=int, default=1536, help="tile edge in 10 m pixels, multiple of 6")
    ap.add_argument(
        "--epsg",
        type=int,
        action="append",
        help="UTM EPSG of a tile; repeat for several (default 32633; 32720 is a southern one)",
    )
    ap.add_argument("--blocksize", type=int, default=None, help="COG block edge (default: by size)")
    ap.add_argument("--year", type=int, default=2022)
    ap.add_argument("--workers", type=int, default=1, help="processes rendering scenes in parallel")
    args = ap.parse_args(argv)
    info = make_archive(
        args.output,
        scenes=args.scenes,
        s1_scenes=args.s1_scenes,
        seed=args.seed,
        size_px=args.size_px,
        epsg=args.epsg or [32633],
        blocksize=args.blocksize,
        year=args.year,
        workers=args.workers,
    )
    _print(f"wrote {len(info.s2)} S2 + {len(info.s1)} S1 scenes over {len(info.tiles)} tile(s)")
    _print(f"items: {info.items}")
    for t, p in info.truth.items():
        _print(f"truth {t}: {p}")
    return info


if __name__ == "__main__":
    main()
