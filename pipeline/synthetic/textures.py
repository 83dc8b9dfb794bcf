"""The labelled synthetic benchmark's ground: land-cover classes that share one mean spectrum and differ only
in texture, spatial layout, phenology and radar, so a probe on mean spectra cannot tell them apart.

Every pixel mixes two materials shared by all classes, ``A`` (green canopy) and ``B`` (soil), by a fraction
``f``: ``reflectance = f * A + (1 - f) * B``. Each class draws ``f`` from its own spatial process whose
mean is 0.5 on every date, so the mean spectrum of a class is the same on every date; what differs is
(:data:`TEXTURES`):

=========  ==================================  ==================================  ====================
class      S2 texture (one date)               over the dates                      S1 texture
=========  ==================================  ==================================  ====================
water      flat                                static                              flat
forest     smooth noise, 3 px                  static                              follows ``f``
cropland   stripes, period 4 px, random angle  stripes drift half a period a year  follows ``f``
urban      4 px blocks on a 6 px street grid   static                              bright blocks
bare       smooth noise, 8 px                  static                              follows ``f``
snow       flat                                static                              coarse noise, 6 px
grassland  smooth noise, 3 px                  a new field every date (mowing)     follows ``f``
=========  ==================================  ==================================  ====================

So one S2 date cannot separate water from snow nor forest from grassland: snow needs SAR, grassland the
time series (what SkySense's temporal and SAR inputs are for); a single date still separates the other
five by texture alone. The S1 mean (dB) is class-independent too.

Pure numpy: :func:`render_chip` renders the S2 time series and the S1 series of one chip from its land
cover (one map per date, for change pairs) and a seeded stream.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pipeline.synthetic.surface import _GREEN, _SPECTRA, LANDCOVER_CLASSES, value_noise

#: the two materials every class mixes (S2 band order B01 ... B12, reflectance 0..1)
MATERIAL_A = np.asarray(_GREEN, np.float32)
MATERIAL_B = np.asarray(_SPECTRA["bare"], np.float32)
#: std of the mixing fraction ``f`` of every textured class (same contrast, different structure)
CONTRAST = 0.18
#: class name -> (S2 texture, temporal behaviour, S1 texture)
TEXTURES: dict[str, tuple[str, str, str]] = {
    "water": ("flat", "static", "flat"),
    "forest": ("noise3", "static", "follow"),
    "cropland": ("stripes", "drift", "follow"),
    "urban": ("blocks", "static", "blocks"),
    "bare": ("noise8", "static", "follow"),
    "snow": ("flat", "static", "noise6"),
    "grassland": ("noise3", "renew", "follow"),
}
#: class-independent S1 backscatter mean (dB) of VV, VH and the contrast (dB) of its textures
S1_MEAN_DB = (-11.0, -17.5)
S1_CONTRAST_DB = 2.5


@dataclass(frozen=True)
class Chip:
    """A rendered chip: ``s2 (T, 12, H, W)`` reflectance DN (uint16, >= 1), ``s1 (T, 2, H, W)`` dB float32."""

    s2: np.ndarray
    s1: np.ndarray


def _unit(a: np.ndarray) -> np.ndarray:
    """Zero mean, unit std (a constant map stays 0)."""
    a = a - a.mean()
    s = a.std()
    return a / s if s > 1e-9 else a


def _noise(rng: np.random.Generator, n: int, scale: float) -> np.ndarray:
    return _unit(value_noise(rng, (n, n), scale, octaves=1))


def _stripes(n: int, angle: float, phase: float, period: float = 4.0) -> np.ndarray:
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32)
    return _unit(np.sin(2 * math.pi * (xx * math.cos(angle) + yy * math.sin(angle)) / period + phase))


def _blocks(n: int, oy: int, ox: int, block: int = 4, street: int = 2) -> np.ndarray:
    yy, xx = np.mgrid[0:n, 0:n]
    p = block + street
    return _unit((((yy + oy) % p) < block) & (((xx + ox) % p) < block)).astype(np.float32)


def _class_fields(name: str, rng: np.random.Generator, n: int, doys: np.ndarray):
    """(f (T, n, n) zero-mean unit texture of S2, s1 (T, n, n) zero-mean unit texture of S1) of one class
    over the whole chip (the caller keeps the class's pixels). Random draws happen in a fixed order."""
    s2_kind, time_kind, s1_kind = TEXTURES[name]
    t = len(doys)
    angle = float(rng.choice([0.0, 0.5, 1.0, 1.5])) * math.pi / 2 + float(rng.uniform(-0.2, 0.2))
    phase = float(rng.uniform(0, 2 * math.pi))
    oy, ox = (int(v) for v in rng.integers(0, 6, 2))
    static = {
        "flat": lambda: np.zeros((n, n), np.float32),
        "noise3": lambda: _noise(rng, n, 3.0),
        "noise8": lambda: _noise(rng, n, 8.0),
        "blocks": lambda: _blocks(n, oy, ox),
        "stripes": lambda: _stripes(n, angle, phase),
    }[s2_kind]
    if time_kind == "renew":
        f = np.stack([static() for _ in range(t)])
    elif time_kind == "drift":  # half a period per year: the parcels' rows green up one after the other
        f = np.stack([_stripes(n, angle, phase + math.pi * float(d) / 365.0) for d in doys])
    else:
        f = np.broadcast_to(static(), (t, n, n))
    if s1_kind == "follow":
        s1 = f
    elif s1_kind == "blocks":
        s1 = np.broadcast_to(_blocks(n, oy, ox), (t, n, n))
    elif s1_kind == "noise6":
        s1 = np.broadcast_to(_noise(rng, n, 6.0), (t, n, n))
    else:
        s1 = np.zeros((t, n, n), np.float32)
    return f, s1


def render_chip(lc: np.ndarray, doys: np.ndarray, rng: np.random.Generator) -> Chip:
    """Render one chip. ``lc (T, H, W)`` land-cover ids of :data:`LANDCOVER_CLASSES` per date (the same map
    repeated, or a changed one for the second date of a change pair); ``doys (T,)`` days of year.

    Per date: ``f = 0.5 + CONTRAST * texture`` (clipped to [0, 1]), reflectance ``f A + (1 - f) B`` times a
    per-chip illumination gain (0.92..1.08) + sensor noise (0.004); S1 ``S1_MEAN_DB + S1_CONTRAST_DB *
    texture`` + speckle (1 dB). All bands are rendered at 10 m; callers block-average the 20 m bands.
    """
    t, h, w = lc.shape
    if h != w:
        raise ValueError(f"chips are square, got {h}x{w}")
    f = np.zeros((t, h, w), np.float32)
    s1t = np.zeros((t, h, w), np.float32)
    for cid, name in LANDCOVER_CLASSES.items():
        fc, sc = _class_fields(name, rng, h, doys)  # drawn for every class: a fixed stream per chip
        m = lc == cid
        f[m], s1t[m] = fc[m], sc[m]
    f = np.clip(0.5 + CONTRAST * f, 0.0, 1.0)
    gain = np.float32(rng.uniform(0.92, 1.08))
    refl = f[:, None] * MATERIAL_A[None, :, None, None] + (1 - f[:, None]) * MATERIAL_B[None, :, None, None]
    refl = refl * gain + np.float32(0.004) * rng.standard_normal(refl.shape, dtype=np.float32)
    s2 = np.clip(np.rint(refl * 10000.0), 1, 65535).astype(np.uint16)
    mean = np.asarray(S1_MEAN_DB, np.float32)[None, :, None, None]
    s1 = mean + S1_CONTRAST_DB * s1t[:, None] + rng.standard_normal((t, 2, h, w), dtype=np.float32)
    return Chip(s2, s1.astype(np.float32))
