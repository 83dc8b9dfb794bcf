"""The ground a synthetic archive shows: land cover, class spectra and backscatter, phenology, texture.

* a land-cover map per tile from seeded smooth noise (:data:`LANDCOVER_CLASSES`: water, forest, cropland in
  parcels with their own sowing dates, urban, bare, snow, grassland);
* class spectra over the 12 S2 bands with realistic reflectance, vegetation mixed between a green and a
  dormant spectrum by a day-of-year phenology curve (NDVI follows the season; shifted by half a year south
  of the equator); texture and noise (:class:`Surface`);
* S1 gamma0 per class (:data:`SAR`), crops and grass scaled by their green fraction.

Pure numpy: no I/O. :mod:`pipeline.synthetic.render` turns this into acquisitions.
"""

from __future__ import annotations

import math

import numpy as np

from pipeline.synthetic.tile import TileGrid, seeded_rng

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
CLASS_ID = {v: k for k, v in LANDCOVER_CLASSES.items()}

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
#: (base green fraction, amplitude, peak day of year (northern hemisphere), width in days)
_PHENOLOGY: dict[str, tuple[float, float, float, float]] = {
    "forest": (0.3, 0.7, 190.0, 55.0),
    "cropland": (0.0, 1.0, 170.0, 32.0),
    "grassland": (0.25, 0.75, 145.0, 50.0),
}
#: S1 gamma0 (linear) per class: (VV, VH); crops and grass scale with their green fraction.
SAR: dict[str, tuple[float, float]] = {
    "water": (0.003, 0.0006),
    "forest": (0.09, 0.022),
    "cropland": (0.04, 0.006),
    "urban": (0.45, 0.07),
    "bare": (0.03, 0.004),
    "snow": (0.02, 0.003),
    "grassland": (0.045, 0.008),
}
#: SCL class of each land-cover class when clear (vegetation: 4 where NDVI >= 0.4, else 5).
SCL_OF = {"water": 6, "urban": 5, "bare": 5, "snow": 11}


def value_noise(rng: np.random.Generator, shape: tuple[int, int], scale_px: float, octaves: int = 3):
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


def upsample(a: np.ndarray, k: int) -> np.ndarray:
    """Nearest-neighbour upsampling by an integer factor (each pixel becomes a k x k block)."""
    return np.repeat(np.repeat(a, k, axis=0), k, axis=1) if k > 1 else a


def make_landcover(tile: TileGrid, seed: int) -> np.ndarray:
    """The land-cover map of a tile (uint8, 10 m, ``tile.shape(10)``) with ids of :data:`LANDCOVER_CLASSES`.

    Elevation-like noise puts water in the lowest ~10 % and snow on the highest ~4 %; urban patches come
    from a fine noise field; the rest splits into forest / cropland / grassland / bare by a moisture field.
    """
    shape = tile.shape(10)
    n = shape[0]
    r = seeded_rng(seed, "landcover", tile.name)
    elev = value_noise(r, shape, max(n / 3.0, 8.0))
    moist = value_noise(r, shape, max(n / 6.0, 6.0))
    urb = value_noise(r, shape, max(n / 20.0, 4.0), octaves=2)
    q = lambda a, p: np.quantile(a, p)
    lc = np.full(shape, CLASS_ID["grassland"], np.uint8)
    lc[moist > q(moist, 0.55)] = CLASS_ID["forest"]
    lc[(moist > q(moist, 0.2)) & (moist <= q(moist, 0.55)) & (elev < q(elev, 0.7))] = CLASS_ID["cropland"]
    lc[moist < q(moist, 0.08)] = CLASS_ID["bare"]
    lc[urb > q(urb, 0.94)] = CLASS_ID["urban"]
    lc[elev > q(elev, 0.96)] = CLASS_ID["snow"]
    lc[elev < q(elev, 0.10)] = CLASS_ID["water"]
    return lc


def parcel_shift(tile: TileGrid, seed: int, parcel_px: int = 32) -> np.ndarray:
    """Per-pixel phenology peak shift (days) of crop parcels: one sowing-date offset per parcel."""
    n = tile.size_px
    k = int(math.ceil(n / parcel_px))
    shifts = seeded_rng(seed, "parcels", tile.name).uniform(-35.0, 35.0, (k, k)).astype(np.float32)
    return upsample(shifts, parcel_px)[:n, :n]


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


class Surface:
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
        texture = value_noise(r, lc.shape, 12.0, octaves=2)
        illum = np.float32(r.uniform(0.97, 1.03))  # scene-level illumination
        self.gain = (1.0 + 0.06 * texture) * illum

    def band(self, i: int) -> np.ndarray:
        """(H, W) float32 reflectance of band ``i`` (S2 order); call in order 0..11 (the noise stream)."""
        g = self.green
        refl = self.lo[i][self.lc] * (1 - g) + self.hi[i][self.lc] * g
        refl *= self.gain
        refl += np.float32(0.003) * self.r.standard_normal(refl.shape, dtype=np.float32)
        return refl
