"""Where a synthetic scene lies: the S2 tile grid, the S1 grids derived from it, and seeded streams.

Every random draw of the generator comes from :func:`seeded_rng` (a seed plus a path of keys), so each
part of an archive is reproducible on its own, whatever else is rendered and in whatever process.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np
from rasterio.crs import CRS
from rasterio.transform import Affine
from rasterio.warp import transform_bounds


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


def s1_grid(tile: TileGrid, j: int) -> tuple[int, Affine, tuple[int, int]]:
    """S1 scene ``j``'s grid ``(epsg, transform, (h, w))`` over ``tile``: even j: same zone, shifted
    (+3 m, -4 m), padded by ``max(n // 40, 2)`` pixels; odd j: the next UTM zone east, off its 10 m
    lattice."""
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


def seeded_rng(seed: int, *keys: int | str) -> np.random.Generator:
    """A generator derived from ``seed`` and a path of keys (stable across runs and platforms)."""
    words = [int(seed)] + [
        int.from_bytes(hashlib.sha256(str(k).encode()).digest()[:4], "little") for k in keys
    ]
    return np.random.default_rng(np.random.SeedSequence(words))
