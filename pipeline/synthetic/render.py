"""One acquisition of a tile: clear-sky reflectance, clouds, shadows and SCL for S2, speckled backscatter
for S1, and the partial-nodata swath edges of both.

* clouds (SCL 8/9), thin cirrus (10) and their shadows (3) are painted into the reflectance exactly where
  the SCL says so (masks are drawn on the 20 m SCL grid; a 10 m pixel takes its 20 m parent's state;
  20/60 m bands are block means of the 10 m rendering);
* swath edges are a diagonal wedge where every band and the SCL are 0, drawn on the 60 m grid so all
  resolutions agree;
* DN follow the radiometry of the scene (``"offset"``: +1000 carried, else none).

Pure numpy/rasterio in memory: no files are written here.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass

import numpy as np
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.transform import Affine
from rasterio.warp import reproject

from pipeline.sensors import S1, S2
from pipeline.synthetic.surface import (
    LANDCOVER_CLASSES,
    SAR,
    SCL_OF,
    Surface,
    green_fraction,
    parcel_shift,
    upsample,
    value_noise,
)
from pipeline.synthetic.tile import TileGrid, seeded_rng

S1_NODATA = float(S1.bands[0].nodata)
#: Reflectance of a thick cloud in S2 band order (thinner ones are mixed with the surface).
_CLOUD = (0.450, 0.450, 0.460, 0.470, 0.480, 0.480, 0.490, 0.490, 0.490, 0.400, 0.300, 0.220)


def _cloud_masks(shape20: tuple[int, int], cloud_frac: float, r) -> dict[str, np.ndarray]:
    """Boolean masks on the 20 m grid: ``high`` (SCL 9), ``medium`` (8), ``cirrus`` (10), ``shadow`` (3)."""
    z = np.zeros(shape20, bool)
    if cloud_frac <= 0:
        return {"high": z, "medium": z.copy(), "cirrus": z.copy(), "shadow": z.copy(), "field": None}
    n = shape20[0]
    f = value_noise(r, shape20, max(n / 8.0, 4.0))
    if cloud_frac >= 1:
        cloud = np.ones(shape20, bool)
        high = f > np.quantile(f, 0.4)
        return {"high": high, "medium": cloud & ~high, "cirrus": z, "shadow": z.copy(), "field": f}
    cloud = f > np.quantile(f, 1 - cloud_frac)
    high = f > np.quantile(f, 1 - 0.6 * cloud_frac)
    ci = value_noise(r, shape20, max(n / 5.0, 4.0))
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


def edge_polygon(kind: str) -> list[tuple[float, float]]:
    """Valid-data footprint in normalised tile coordinates (u right, v down)."""
    if kind == "west":
        return [(0.5, 0.0), (0.0, 0.5 / 0.6), (0.0, 1.0), (1.0, 1.0), (1.0, 0.0)]
    if kind == "east":
        return [(0.0, 0.0), (0.0, 1.0), (1.0, 1.0), (1.0, 0.625), (0.75, 0.0)]
    return [(0.0, 0.0), (0.0, 1.0), (1.0, 1.0), (1.0, 0.0)]


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
    r_surface = seeded_rng(seed, "s2", tile.name, scene_key, "surface")
    r_cloud = seeded_rng(seed, "s2", tile.name, scene_key, "cloud")
    doy = when.timetuple().tm_yday
    south = tile.epsg >= 32700
    surface = Surface(lc, doy, south, parcel_shift(tile, seed), r_surface)
    s20, s60 = tile.shape(20), tile.shape(60)
    masks = _cloud_masks(s20, cloud_frac, r_cloud)
    nod60 = _edge_mask60(s60, edge)
    nod20 = upsample(nod60, 3)
    up = lambda m: upsample(m, 2)
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
        dn[upsample(nod60, 6 // k)] = 0
        bands[b.name] = dn
        del refl
    # SCL from land cover (20 m: top-left 10 m pixel of each 2x2) and clear-sky NDVI, then clouds on top.
    lc20 = lc[::2, ::2]
    ndvi20 = (clear["B08"] - clear["B04"]) / (clear["B08"] + clear["B04"] + 1e-6)
    scl = np.full(s20, 5, np.uint8)
    for cid, name in LANDCOVER_CLASSES.items():
        m = lc20 == cid
        if name in SCL_OF:
            scl[m] = SCL_OF[name]
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
    r = seeded_rng(seed, "s1", scene_key)
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
        a, b = SAR[name]
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
