"""Reading a benchmark's small raster files (GeoTIFF, PNG) through fsspec, for the converters' ``read_item``.

Benchmark files are small (a few MB at most), so each is fetched whole (``fs.cat``, which s3fs batches
into concurrent GETs) and decoded from memory by GDAL: one code path for local and ``s3://`` sources.
Failures become :class:`~pipeline.convert.base.BadInput` (``missing_file``, ``unreadable_file``), which
the job records as rejects; transient storage errors raise
:class:`~pipeline.storage.TransientIOError`, so Ray retries the task instead of rejecting good data.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import rasterio
from affine import Affine
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.io import MemoryFile
from rasterio.warp import transform as warp_transform

from pipeline.convert.base import BadInput
from pipeline.storage import TransientIOError, is_transient

__all__ = ["Raster", "TileGeo", "fetch", "read_raster", "tile_geo", "to_dn"]


@dataclass(frozen=True)
class Raster:
    """One decoded raster file: ``data (C, H, W)`` as stored (rasterio's band-first order whatever the
    file's interleave), its EPSG code (0: none, or a CRS without one), the pixel -> CRS ``transform``
    (``None`` without a CRS), each band's colour interpretation (``gray``, ``red``, ``alpha``, ``palette``
    ...) and band 1's colour table when it is a palette band."""

    path: str
    data: np.ndarray
    epsg: int
    transform: Affine | None
    colorinterp: tuple[str, ...]
    palette: Mapping[int, tuple[int, ...]] | None = None


class TileGeo(NamedTuple):
    """A tile's georeference, as :class:`~pipeline.convert.base.Sample` takes it (``**geo._asdict()``)."""

    epsg: int
    x_min: float
    y_max: float
    lon: float
    lat: float


def fetch(fs, paths: Sequence[str]) -> dict[str, bytes]:
    """The bytes of ``paths`` on ``fs`` in one batched call; a missing file is ``BadInput(missing_file)``."""
    got = fs.cat(list(paths), on_error="return")
    if isinstance(got, bytes | Exception):  # a single path comes back unwrapped
        got = {paths[0]: got}
    out = {}
    for p in paths:
        v = got.get(p, FileNotFoundError(p))
        if isinstance(v, FileNotFoundError | IsADirectoryError):
            raise BadInput("missing_file", f"{p} not found")
        if isinstance(v, Exception):
            if is_transient(v):
                raise TransientIOError(f"{p}: {v}") from v
            raise BadInput("unreadable_file", f"{p}: {type(v).__name__}: {v}")
        out[p] = v
    return out


def read_raster(path: str, data: bytes) -> Raster:
    """Decode one raster file's bytes (any GDAL format: GeoTIFF, PNG); ``BadInput(unreadable_file)`` when GDAL
    cannot open or read it (corrupt, truncated, not a raster)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with MemoryFile(data) as mem, mem.open() as src:
                arr = src.read()
                crs = src.crs
                interp = tuple(c.name for c in src.colorinterp)
                palette = src.colormap(1) if interp and interp[0] == "palette" else None
                transform = src.transform if crs is not None else None
                epsg = (crs.to_epsg() or 0) if crs is not None else 0
    except RasterioError as e:
        raise BadInput("unreadable_file", f"{path}: {e}") from e
    return Raster(path, arr, int(epsg), transform, interp, palette)


def to_dn(a: np.ndarray, path: str) -> np.ndarray:
    """Pixel values -> uint16 DNs, exactly (no scaling): integers in ``[0, 65535]`` (in any integer or float
    dtype) pass; anything else is ``BadInput(unreadable_file)`` rather than a silent cast."""
    if a.dtype == np.uint16:
        return a
    if a.size and not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        raise BadInput("unreadable_file", f"{path}: pixel type {a.dtype} is not a DN")
    if a.size:
        lo, hi = a.min(), a.max()
        integral = np.issubdtype(a.dtype, np.integer) or bool(np.all(np.floor(a) == a))
        if not (integral and lo >= 0 and hi <= np.iinfo(np.uint16).max):
            raise BadInput("unreadable_file", f"{path}: {a.dtype} values in [{lo}, {hi}] are not uint16 DNs")
    return a.astype(np.uint16)


def tile_geo(r: Raster, y: int, x: int, side: int) -> TileGeo:
    """Georeference of the ``side x side`` tile whose top-left pixel is ``(y, x)`` of raster ``r``:
    ``x_min, y_max`` = its top-left corner in the raster's CRS, ``lon, lat`` = its centre in WGS84.
    A raster without an EPSG CRS gives the defaults of a dataset that ships none (``epsg`` 0, NaN lon/lat)."""
    if r.transform is None or r.epsg == 0:
        return TileGeo(0, 0.0, 0.0, math.nan, math.nan)
    x_min, y_max = r.transform @ (x, y)
    cx, cy = r.transform @ (x + side / 2, y + side / 2)
    lon, lat = warp_transform(rasterio.crs.CRS.from_epsg(r.epsg), "EPSG:4326", [cx], [cy])
    return TileGeo(r.epsg, float(x_min), float(y_max), float(lon[0]), float(lat[0]))
