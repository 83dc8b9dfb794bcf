"""Grid math: UTM zones, the fixed per-zone tile/unit grids, sample ids and periods. Pure functions.

Every UTM zone (EPSG 326zz north / 327zz south) carries one fixed grid of square cells of edge
``cell_m`` metres anchored at the zone's origin (x = 0, y = 0 of the projected CRS):

    cell (col, row) covers  x in [col * cell_m, (col + 1) * cell_m),  y in [row * cell_m, (row + 1) * cell_m)
    col = floor(x / cell_m),  row = floor(y / cell_m)
    x_min = col * cell_m,  y_max = (row + 1) * cell_m      (the tile's top-left corner in the raster sense)

Tiles use ``cell_m = tile_m = tile_px * 10``; work units use ``cell_m = unit_m = unit_tiles * tile_m``, so a
unit (ucol, urow) holds exactly the tiles col in [ucol * unit_tiles, (ucol + 1) * unit_tiles) and likewise
for rows: tile origins are multiples of ``tile_m`` and every date and modality of a cell lands on
identical pixels. Intersections are of half-open boxes: a cell that only touches a bounds edge does not
intersect it.

Periods group acquisitions: ``"2024-03"`` (month), ``"2024Q1"`` (quarter), ``"2024"`` (year); a period's
range is ``[start, end)`` in UTC.
"""

from __future__ import annotations

import datetime as _dt
import math
import re
from collections.abc import Iterator
from typing import Literal

import numpy as np

Bounds = tuple[float, float, float, float]  # (x_min, y_min, x_max, y_max)
PeriodKind = Literal["month", "quarter", "year"]
UTC = _dt.UTC

# --------------------------------------------------------------------------------------------- UTM

#: MGRS/UTM zone exceptions: (lat_min, lat_max, lon_min, lon_max, zone), half-open ranges.
#: Norway (zone 32V widened) and Svalbard (zones 31X, 33X, 35X, 37X widened; 32X/34X/36X unused).
_UTM_EXCEPTIONS: tuple[tuple[float, float, float, float, int], ...] = (
    (56.0, 64.0, 3.0, 12.0, 32),
    (72.0, 84.0, 0.0, 9.0, 31),
    (72.0, 84.0, 9.0, 21.0, 33),
    (72.0, 84.0, 21.0, 33.0, 35),
    (72.0, 84.0, 33.0, 42.0, 37),
)


def utm_zone(lon: float, lat: float) -> int:
    """UTM zone number 1..60 of a WGS84 point.

    ``zone = floor((lon + 180) / 6) + 1``, with lon = 180 folded into zone 60 and the Norway/Svalbard
    exceptions of the MGRS grid (which Sentinel-2 tiles follow).
    """
    if not (-180.0 <= lon <= 180.0) or not (-90.0 <= lat <= 90.0) or math.isnan(lon) or math.isnan(lat):
        raise ValueError(f"not a WGS84 coordinate: lon={lon}, lat={lat}")
    if not (-80.0 <= lat <= 84.0):
        raise ValueError(f"latitude {lat} is outside UTM coverage [-80, 84] (polar regions use UPS)")
    for la0, la1, lo0, lo1, zone in _UTM_EXCEPTIONS:
        if la0 <= lat < la1 and lo0 <= lon < lo1:
            return zone
    return min(int(math.floor((lon + 180.0) / 6.0)) + 1, 60)


def utm_epsg(lon: float, lat: float) -> int:
    """EPSG code of the UTM zone of a WGS84 point: ``32600 + zone`` for lat >= 0, ``32700 + zone`` south."""
    return (32600 if lat >= 0 else 32700) + utm_zone(lon, lat)


def is_utm_epsg(epsg: int) -> bool:
    """True for WGS84 / UTM codes 32601..32660 and 32701..32760."""
    return 32601 <= epsg <= 32660 or 32701 <= epsg <= 32760


# ------------------------------------------------------------------------------------------ cells


def cell_index(x: float, y: float, cell_m: float) -> tuple[int, int]:
    """The cell holding point (x, y): ``(floor(x / cell_m), floor(y / cell_m))``."""
    if cell_m <= 0:
        raise ValueError(f"cell_m must be > 0, got {cell_m}")
    return math.floor(x / cell_m), math.floor(y / cell_m)


def cell_bounds(col: int, row: int, cell_m: float) -> Bounds:
    """Bounds of cell (col, row): ``(col * cell_m, row * cell_m, (col + 1) * cell_m, (row + 1) * cell_m)``."""
    if cell_m <= 0:
        raise ValueError(f"cell_m must be > 0, got {cell_m}")
    return (col * cell_m, row * cell_m, (col + 1) * cell_m, (row + 1) * cell_m)


def cell_span(bounds: Bounds, cell_m: float) -> tuple[int, int, int, int]:
    """Half-open index ranges ``(col_start, col_stop, row_start, row_stop)`` of the cells intersecting bounds.

    ``col_start = floor(x_min / cell_m)``, ``col_stop = ceil(x_max / cell_m)`` (rows likewise), so a cell that
    only touches ``x_max``/``y_max`` is excluded. Empty (start == stop) for degenerate bounds.
    """
    x0, y0, x1, y1 = bounds
    if cell_m <= 0:
        raise ValueError(f"cell_m must be > 0, got {cell_m}")
    if not (x1 > x0 and y1 > y0):
        c = math.floor(x0 / cell_m) if math.isfinite(x0) else 0
        r = math.floor(y0 / cell_m) if math.isfinite(y0) else 0
        return c, c, r, r
    return (math.floor(x0 / cell_m), math.ceil(x1 / cell_m), math.floor(y0 / cell_m), math.ceil(y1 / cell_m))


def cell_spans(bounds: np.ndarray, cell_m: float) -> np.ndarray:
    """Vectorised :func:`cell_span`: ``(N, 4)`` bounds -> ``(N, 4)`` int64 ``[col_start, col_stop, row_start,
    row_stop]`` (degenerate rows give empty ranges)."""
    b = np.asarray(bounds, dtype=np.float64).reshape(-1, 4)
    out = np.empty((len(b), 4), dtype=np.int64)
    out[:, 0] = np.floor(b[:, 0] / cell_m)
    out[:, 1] = np.ceil(b[:, 2] / cell_m)
    out[:, 2] = np.floor(b[:, 1] / cell_m)
    out[:, 3] = np.ceil(b[:, 3] / cell_m)
    empty = ~((b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1]))
    out[empty, 1] = out[empty, 0]
    out[empty, 3] = out[empty, 2]
    return out


def cells_intersecting(bounds: Bounds, cell_m: float) -> list[tuple[int, int]]:
    """All cells (col, row) whose box intersects ``bounds`` with positive area, sorted (col, row)."""
    c0, c1, r0, r1 = cell_span(bounds, cell_m)
    return [(c, r) for c in range(c0, c1) for r in range(r0, r1)]


def bounds_intersect(a: Bounds, b: Bounds) -> bool:
    """Positive-area intersection of two boxes (touching edges do not count)."""
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def unit_of_tile(col: int, row: int, unit_tiles: int) -> tuple[int, int]:
    """The unit holding tile (col, row): ``(col // unit_tiles, row // unit_tiles)`` (floor division)."""
    if unit_tiles < 1:
        raise ValueError(f"unit_tiles must be >= 1, got {unit_tiles}")
    return col // unit_tiles, row // unit_tiles


def tiles_of_unit(ucol: int, urow: int, unit_tiles: int) -> list[tuple[int, int]]:
    """The ``unit_tiles**2`` tiles of unit (ucol, urow), sorted (col, row)."""
    if unit_tiles < 1:
        raise ValueError(f"unit_tiles must be >= 1, got {unit_tiles}")
    c0, r0 = ucol * unit_tiles, urow * unit_tiles
    return [(c, r) for c in range(c0, c0 + unit_tiles) for r in range(r0, r0 + unit_tiles)]


# ------------------------------------------------------------------------------------- sample ids

_ID_RE = re.compile(r"^(\d+)_(-?\d+)_(-?\d+)_(\d{4}(?:-\d{2}|Q[1-4])?)$")


def sample_id(epsg: int, col: int, row: int, period: str) -> str:
    """Deterministic sample id ``f"{epsg}_{col}_{row}_{period}"`` (also the unit id, with unit indices)."""
    return f"{epsg}_{col}_{row}_{period}"


def parse_sample_id(sid: str) -> tuple[int, int, int, str]:
    """Inverse of :func:`sample_id`: ``"32633_-1_40_2024Q1"`` -> ``(32633, -1, 40, "2024Q1")``."""
    m = _ID_RE.match(sid)
    if not m:
        raise ValueError(f"not a sample id (epsg_col_row_period): {sid!r}")
    return int(m.group(1)), int(m.group(2)), int(m.group(3)), m.group(4)


# ----------------------------------------------------------------------------------------- periods

_PERIOD_RE = re.compile(r"^(\d{4})(?:-(\d{2})|Q([1-4]))?$")


def period_of(when: _dt.datetime | _dt.date, kind: PeriodKind) -> str:
    """The period holding a date: month ``"2024-03"``, quarter ``"2024Q1"`` (``q = (month - 1) // 3 + 1``),
    year ``"2024"``. Aware datetimes are converted to UTC first; naive ones are taken as UTC."""
    if isinstance(when, _dt.datetime) and when.tzinfo is not None:
        when = when.astimezone(UTC)
    if kind == "month":
        return f"{when.year:04d}-{when.month:02d}"
    if kind == "quarter":
        return f"{when.year:04d}Q{(when.month - 1) // 3 + 1}"
    if kind == "year":
        return f"{when.year:04d}"
    raise ValueError(f"unknown period kind {kind!r}; expected month, quarter or year")


def period_range(period: str) -> tuple[_dt.datetime, _dt.datetime]:
    """``[start, end)`` of a period in UTC: ``"2024Q1"`` -> (2024-01-01, 2024-04-01)."""
    m = _PERIOD_RE.match(period)
    if not m:
        raise ValueError(f"not a period (YYYY, YYYY-MM or YYYYQn): {period!r}")
    year = int(m.group(1))
    if m.group(2) is not None:
        month = int(m.group(2))
        if not 1 <= month <= 12:
            raise ValueError(f"not a period (month {month} out of range): {period!r}")
        m0, n = month, 1
    elif m.group(3) is not None:
        m0, n = 3 * (int(m.group(3)) - 1) + 1, 3
    else:
        m0, n = 1, 12
    start = _dt.datetime(year, m0, 1, tzinfo=UTC)
    m1 = m0 + n
    end = _dt.datetime(year + (m1 - 1) // 12, (m1 - 1) % 12 + 1, 1, tzinfo=UTC)
    return start, end


def period_window(period: str, days: int) -> tuple[_dt.datetime, _dt.datetime]:
    """The period's range widened by ``days`` on each side: ``[start - days, end + days)``."""
    if days < 0:
        raise ValueError(f"days must be >= 0, got {days}")
    start, end = period_range(period)
    pad = _dt.timedelta(days=days)
    return start - pad, end + pad


def periods_between(start: _dt.datetime, end: _dt.datetime, kind: PeriodKind) -> Iterator[str]:
    """Every period of ``kind`` that overlaps ``[start, end)``, in order."""
    p = period_of(start, kind)
    while True:
        s, e = period_range(p)
        if s >= end:
            return
        yield p
        p = period_of(e, kind)


# ---------------------------------------------------------------------------------- reprojection


def transform_bounds(src_epsg: int, dst_epsg: int, bounds: Bounds, densify_pts: int = 21) -> Bounds:
    """Bounds reprojected between EPSG codes, edges densified so curved edges stay inside (GDAL/PROJ)."""
    if src_epsg == dst_epsg:
        return tuple(float(v) for v in bounds)  # type: ignore[return-value]
    from rasterio.warp import transform_bounds as _tb

    return tuple(_tb(f"EPSG:{src_epsg}", f"EPSG:{dst_epsg}", *bounds, densify_pts=densify_pts))  # type: ignore


def transform_bounds_many(
    src_epsg: int, dst_epsg: int, bounds: np.ndarray, densify_pts: int = 21
) -> np.ndarray:
    """Vectorised :func:`transform_bounds` for ``(N, 4)`` boxes: one PROJ call for every densified edge point.

    Each box's edges are sampled at ``densify_pts`` points per side; the result is the min/max of the
    transformed points (non-finite results, e.g. far outside the target zone, give NaN rows).
    """
    b = np.asarray(bounds, dtype=np.float64).reshape(-1, 4)
    if src_epsg == dst_epsg or len(b) == 0:
        return b.copy()
    from rasterio.warp import transform as _tr

    t = np.linspace(0.0, 1.0, densify_pts)
    x0, y0, x1, y1 = (b[:, i : i + 1] for i in range(4))
    xs = np.concatenate(
        [
            x0 + (x1 - x0) * t,
            x0 + (x1 - x0) * t,
            np.repeat(x0, densify_pts, 1),
            np.repeat(x1, densify_pts, 1),
        ],
        axis=1,
    )
    ys = np.concatenate(
        [
            np.repeat(y0, densify_pts, 1),
            np.repeat(y1, densify_pts, 1),
            y0 + (y1 - y0) * t,
            y0 + (y1 - y0) * t,
        ],
        axis=1,
    )
    tx, ty = _tr(f"EPSG:{src_epsg}", f"EPSG:{dst_epsg}", xs.ravel(), ys.ravel())
    tx = np.asarray(tx, dtype=np.float64).reshape(xs.shape)
    ty = np.asarray(ty, dtype=np.float64).reshape(ys.shape)
    ok = np.isfinite(tx).all(axis=1) & np.isfinite(ty).all(axis=1)
    out = np.full_like(b, np.nan)
    with np.errstate(invalid="ignore"):
        out[ok] = np.stack([tx[ok].min(1), ty[ok].min(1), tx[ok].max(1), ty[ok].max(1)], axis=1)
    return out


def tile_centres_lonlat(epsg: int, cols, rows, tile_m: float) -> tuple[np.ndarray, np.ndarray]:
    """WGS84 (lon, lat) of tile centres ``((col + 0.5) * tile_m, (row + 0.5) * tile_m)`` in ``epsg``."""
    from rasterio.warp import transform as _tr

    xs = (np.asarray(cols, dtype=np.float64) + 0.5) * tile_m
    ys = (np.asarray(rows, dtype=np.float64) + 0.5) * tile_m
    lon, lat = _tr(f"EPSG:{epsg}", "EPSG:4326", xs.ravel(), ys.ravel())
    return np.asarray(lon, dtype=np.float64), np.asarray(lat, dtype=np.float64)
