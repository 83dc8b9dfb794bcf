"""Tiny known-pattern COG scenes for read/ingest unit tests (seconds to write, real CRS and transforms).

10 m bands carry a position hash (any misplacement by one pixel changes the value); 20/60 m bands carry a
linear ramp of the pixel centre (bilinear resampling of a ramp is exact away from edges); S1 carries a
linear ramp of linear power over projected coordinates of the *unit* zone.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import Affine
from rasterio.warp import transform as warp_transform

from pipeline.sensors import S1, S2, S2_SCL
from pipeline.stac import AssetRef, Scene

UTC = _dt.UTC


def hash10(x_m: np.ndarray, y_m: np.ndarray, band: int) -> np.ndarray:
    """DN of a 10 m band at pixel centres (x_m, y_m): a hash of the global 10 m pixel index, 1000..1996."""
    gx = np.floor(x_m / 10.0).astype(np.int64)
    gy = np.floor(y_m / 10.0).astype(np.int64)
    return (1000 + (gx * 7 + gy * 13 + band * 31) % 997).astype(np.uint16)


def ramp(x_m: np.ndarray, y_m: np.ndarray, band: int) -> np.ndarray:
    """Float DN of a 20/60 m band at (x_m, y_m): a linear ramp (exact under bilinear resampling)."""
    return 2000.0 + 100.0 * band + 0.05 * (x_m - 490000.0) + 0.03 * (y_m - 4990000.0)


def band_value(band_idx: int, res: int, x_m, y_m) -> np.ndarray:
    if res == 10:
        return hash10(x_m, y_m, band_idx)
    return np.round(ramp(x_m, y_m, band_idx)).astype(np.uint16)


def centres(transform: Affine, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    cols, rows = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
    xs = transform.c + cols * transform.a
    ys = transform.f + rows * transform.e
    return xs, ys


def write_cog(
    path: Path, arr: np.ndarray, transform: Affine, epsg: int, nodata, blocksize: int = 256
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = arr.shape
    with rasterio.open(
        path,
        "w",
        driver="COG",
        width=w,
        height=h,
        count=1,
        dtype=arr.dtype.name,
        crs=f"EPSG:{epsg}",
        transform=transform,
        nodata=nodata,
        compress="DEFLATE",
        blocksize=blocksize,
        overviews="NONE",
    ) as dst:
        dst.write(arr, 1)


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
    """A 12-band + SCL scene: true DN from :func:`band_value` (+ ``stored_offset`` in the files).

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
                bx0, by0, bx1, by1 = cloud_box
                arr[(xs > bx0) & (xs < bx1) & (ys > by0) & (ys < by1)] = 9
        else:
            arr = (band_value(i, res, xs, ys).astype(np.int32) + stored_offset).astype(np.uint16)
        if nodata_box is not None:
            bx0, by0, bx1, by1 = nodata_box
            arr[(xs > bx0) & (xs < bx1) & (ys > by0) & (ys < by1)] = 0
        path = root / scene_id / f"{band.name}.tif"
        write_cog(path, arr, tr, epsg, 0)
        assets[band.name] = AssetRef(str(path), tuple(tr)[:6], (n, n), 0)
    ext = size10 * 10.0
    return Scene(
        scene_id=scene_id,
        sensor="s2",
        datetime=when,
        epsg=epsg,
        bounds=(x0, y_max - ext, x0 + ext, y_max),
        lonlat_bbox=(14.9, 45.0, 15.1, 45.2),
        assets=assets,
        boa_offset=boa_offset,
        cloud_cover=None,
    )


def s1_power(x_m, y_m) -> np.ndarray:
    """Linear power ramp over unit-zone coordinates (positive everywhere near the tests' units)."""
    return 0.02 + 1e-5 * (x_m - 490000.0) + 2e-6 * (y_m - 4990000.0)


def s1_scene(
    root: Path,
    scene_id: str,
    when: _dt.datetime,
    *,
    unit_epsg: int = 32633,
    epsg: int = 32633,
    transform: Affine,
    shape: tuple[int, int],
    nodata: float = -32768.0,
) -> Scene:
    """VV = :func:`s1_power` of the unit-zone coordinates of each pixel centre, VH = VV / 5."""
    h, w = shape
    xs, ys = centres(transform, h, w)
    if epsg != unit_epsg:
        ux, uy = warp_transform(f"EPSG:{epsg}", f"EPSG:{unit_epsg}", xs.ravel(), ys.ravel())
        xs, ys = np.asarray(ux).reshape(h, w), np.asarray(uy).reshape(h, w)
    vv = s1_power(xs, ys).astype(np.float32)
    assets = {}
    for band, arr in zip(S1.bands, (vv, vv / 5.0), strict=True):
        path = root / scene_id / f"{band.name.lower()}.tif"
        write_cog(path, arr.astype(np.float32), transform, epsg, nodata)
        assets[band.name] = AssetRef(str(path), tuple(transform)[:6], shape, nodata)
    x0, y1 = transform.c, transform.f
    return Scene(
        scene_id=scene_id,
        sensor="s1",
        datetime=when,
        epsg=epsg,
        bounds=(x0, y1 + h * transform.e, x0 + w * transform.a, y1),
        lonlat_bbox=(14.9, 45.0, 15.1, 45.2),
        assets=assets,
        boa_offset=0,
        cloud_cover=None,
    )
