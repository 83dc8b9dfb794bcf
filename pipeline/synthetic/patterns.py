"""Known-pattern scenes: pixel values that encode where they are, so placement, resampling,
harmonisation and co-registration can be checked exactly.

Two families:

* **tile patterns as archives publish them** (COGs + STAC items under the archive layout, local or
  ``s3://``): :func:`write_pattern_scene` (10 m bands :func:`pattern_value` of the pixel's row/column,
  20/60 m bands the plane :func:`pattern_ramp`), :func:`write_pattern_s1_scene` (VV/VH the plane
  :func:`pattern_s1_power`, same zone or the next one);
* **unit-test scenes** returned as :class:`pipeline.stac.Scene` without any item, in seconds (no
  overviews): :func:`s2_scene` (10 m bands :func:`hash10` of the *global* 10 m pixel index, so any
  misplacement by one pixel changes the value; 20/60 m bands the ramp :func:`ramp`, exact under bilinear
  resampling away from edges), :func:`s1_scene` (linear power :func:`s1_power` over the coordinates of the
  *unit's* zone).
"""

from __future__ import annotations

import datetime as _dt
from os import PathLike
from pathlib import Path

import numpy as np
from rasterio.crs import CRS
from rasterio.transform import Affine
from rasterio.warp import transform as warp_transform

from pipeline.config import StorageConfig
from pipeline.sensors import S1, S2, S2_SCL
from pipeline.stac import AssetRef, Scene
from pipeline.synthetic.cog import write_cog
from pipeline.synthetic.scenes import write_s1_scene, write_s2_scene, write_scene_to
from pipeline.synthetic.tile import TileGrid, default_tile, s1_grid

UTC = _dt.UTC


def centres(transform: Affine, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Map coordinates ``(xs, ys)``, each (h, w), of the pixel centres of an (h, w) grid at ``transform``."""
    cols, rows = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
    return transform.c + cols * transform.a, transform.f + rows * transform.e


# ------------------------------------------------------------------------- tile patterns (with items)


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
    output: str | PathLike,
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
    storage: StorageConfig | None = None,
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
            xs, ys = centres(tile.transform(res), h, w)
            v = np.rint(pattern_ramp(b.name, xs, ys, tile.x0, tile.y0)).astype(np.int64) + add
        bands[b.name] = np.clip(v, 1, 65535).astype(np.uint16)
    scl = np.full(tile.shape(20), 4, np.uint8)
    if cloud_box is not None:
        r0, c0, r1, c1 = cloud_box
        scl[r0 // 2 : r1 // 2, c0 // 2 : c1 // 2] = 9
    return write_scene_to(
        output,
        lambda local, uri: write_s2_scene(local, uri, tile, when, bands, scl, boa=boa, blocksize=blocksize),
        items_name,
        storage,
    )


def pattern_s1_power(pol: str, x: float | np.ndarray, y: float | np.ndarray, x0: float, y0: float):
    """Linear power of :func:`write_pattern_s1_scene` at map point (x, y) of the S2 tile's CRS.

    ``VV = 0.02 + 1e-5 * (x - x0) + 5e-6 * (y0 - y)``, ``VH = VV / 5``: a plane in the *S2 tile's* CRS, so a
    warp onto the tile grid can be checked against it (to within the small curvature of the zone change).
    """
    vv = 0.02 + 1e-5 * (np.asarray(x) - x0) + 5e-6 * (y0 - np.asarray(y))
    return vv if pol == "VV" else vv / 5.0


def write_pattern_s1_scene(
    output: str | PathLike,
    *,
    epsg: int = 32633,
    size_px: int = 1032,
    when: _dt.datetime = _dt.datetime(2022, 6, 16, 5, 1, 2, tzinfo=UTC),
    neighbour_zone: bool = False,
    blocksize: int = 256,
    items_name: str | None = "items_s1.json",
    storage: StorageConfig | None = None,
) -> dict:
    """Write an S1 RTC scene whose VV/VH are :func:`pattern_s1_power` over the pattern tile; return its item.

    Same zone (grid shifted by (+3 m, -4 m) and padded) or, with ``neighbour_zone``, the next UTM zone east
    (values evaluated at each S1 pixel centre transformed to the tile CRS). No nodata inside the footprint.
    """
    t = default_tile(epsg, size_px)
    tile = TileGrid(f"{t.name[:3]}PAT", epsg, t.x0, t.y0, size_px)
    s1_epsg, tr, (h, w) = s1_grid(tile, 1 if neighbour_zone else 0)
    xs, ys = centres(tr, h, w)
    if s1_epsg != epsg:
        tx, ty = warp_transform(CRS.from_epsg(s1_epsg), tile.crs, xs.ravel(), ys.ravel())
        xs, ys = np.asarray(tx).reshape(h, w), np.asarray(ty).reshape(h, w)
    vv = pattern_s1_power("VV", xs, ys, tile.x0, tile.y0).astype(np.float32)
    vh = pattern_s1_power("VH", xs, ys, tile.x0, tile.y0).astype(np.float32)
    return write_scene_to(
        output,
        lambda local, uri: write_s1_scene(
            local, uri, s1_epsg, tr, when, vv, vh, blocksize=blocksize, proj_code=neighbour_zone
        ),
        items_name,
        storage,
    )


# ------------------------------------------------------------------- unit-test scenes (no items)


def hash10(x_m: np.ndarray, y_m: np.ndarray, band: int) -> np.ndarray:
    """DN of a 10 m band at pixel centres (x_m, y_m): a hash of the global 10 m pixel index, 1000..1996."""
    gx = np.floor(x_m / 10.0).astype(np.int64)
    gy = np.floor(y_m / 10.0).astype(np.int64)
    return (1000 + (gx * 7 + gy * 13 + band * 31) % 997).astype(np.uint16)


def ramp(x_m: np.ndarray, y_m: np.ndarray, band: int) -> np.ndarray:
    """Float DN of a 20/60 m band at (x_m, y_m): a linear ramp (exact under bilinear resampling)."""
    return 2000.0 + 100.0 * band + 0.05 * (x_m - 490000.0) + 0.03 * (y_m - 4990000.0)


def band_value(band_idx: int, res: int, x_m, y_m) -> np.ndarray:
    """uint16 DN of band ``band_idx`` (S2 order) at ``res`` m: :func:`hash10` at 10 m, else the rounded
    :func:`ramp`."""
    if res == 10:
        return hash10(x_m, y_m, band_idx)
    return np.round(ramp(x_m, y_m, band_idx)).astype(np.uint16)


def s1_power(x_m, y_m) -> np.ndarray:
    """Linear power ramp over unit-zone coordinates (positive everywhere near the tests' units)."""
    return 0.02 + 1e-5 * (x_m - 490000.0) + 2e-6 * (y_m - 4990000.0)


def _in_box(xs: np.ndarray, ys: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
    bx0, by0, bx1, by1 = box
    return (xs > bx0) & (xs < bx1) & (ys > by0) & (ys < by1)


def _scene(scene_id: str, sensor: str, when: _dt.datetime, epsg: int, bounds, assets, boa_offset: int = 0):
    return Scene(
        scene_id=scene_id,
        sensor=sensor,
        datetime=when,
        epsg=epsg,
        bounds=bounds,
        lonlat_bbox=(14.9, 45.0, 15.1, 45.2),
        assets=assets,
        boa_offset=boa_offset,
        cloud_cover=None,
    )


def s2_scene(
    root: Path,
    scene_id: str,
    when: _dt.datetime,
    *,
    epsg: int = 32633,
    x0: float = 499980.0,
    y_max: float = 5000040.0,
    size10: int = 768,
    stored_offset: int = 0,
    boa_offset: int = 0,
    scl_value: int = 4,
    cloud_box: tuple[float, float, float, float] | None = None,
    nodata_box: tuple[float, float, float, float] | None = None,
) -> Scene:
    """A 12-band + SCL scene under ``root/scene_id/``: true DN from :func:`band_value` (+ ``stored_offset``
    in the files), SCL ``scl_value``.

    ``cloud_box``/``nodata_box`` (x0, y0, x1, y1 in metres, multiples of 60 m) set SCL 9 / zero everything.
    """
    assets = {}
    for i, band in enumerate((*S2.bands, S2_SCL)):
        res = band.resolution_m
        n = size10 * 10 // res
        tr = Affine(res, 0, x0, 0, -res, y_max)
        xs, ys = centres(tr, n, n)
        if band is S2_SCL:
            arr = np.full((n, n), scl_value, np.uint8)
            if cloud_box is not None:
                arr[_in_box(xs, ys, cloud_box)] = 9
        else:
            arr = (band_value(i, res, xs, ys).astype(np.int32) + stored_offset).astype(np.uint16)
        if nodata_box is not None:
            arr[_in_box(xs, ys, nodata_box)] = 0
        path = write_cog(root / scene_id / f"{band.name}.tif", arr, tr, epsg, 0, overviews=False)
        assets[band.name] = AssetRef(str(path), tuple(tr)[:6], (n, n), 0)
    ext = size10 * 10.0
    return _scene(scene_id, "s2", when, epsg, (x0, y_max - ext, x0 + ext, y_max), assets, boa_offset)


def s1_scene(
    root: Path,
    scene_id: str,
    when: _dt.datetime,
    *,
    transform: Affine,
    shape: tuple[int, int],
    epsg: int = 32633,
    unit_epsg: int = 32633,
    nodata: float = -32768.0,
) -> Scene:
    """An S1 scene under ``root/scene_id/``: VV = :func:`s1_power` of the unit-zone coordinates of each
    pixel centre, VH = VV / 5."""
    h, w = shape
    xs, ys = centres(transform, h, w)
    if epsg != unit_epsg:
        ux, uy = warp_transform(f"EPSG:{epsg}", f"EPSG:{unit_epsg}", xs.ravel(), ys.ravel())
        xs, ys = np.asarray(ux).reshape(h, w), np.asarray(uy).reshape(h, w)
    vv = s1_power(xs, ys).astype(np.float32)
    assets = {}
    for band, arr in zip(S1.bands, (vv, vv / 5.0), strict=True):
        path = root / scene_id / f"{band.name.lower()}.tif"
        write_cog(path, arr.astype(np.float32), transform, epsg, nodata, overviews=False)
        assets[band.name] = AssetRef(str(path), tuple(transform)[:6], shape, nodata)
    x0, y1 = transform.c, transform.f
    bounds = (x0, y1 + h * transform.e, x0 + w * transform.a, y1)
    return _scene(scene_id, "s1", when, epsg, bounds, assets)
