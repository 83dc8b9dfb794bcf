"""Writing Cloud-Optimized GeoTIFFs as the archives ship them: one band per file, internal tiles,
DEFLATE with a predictor, overviews, nodata declared in the file.

GDAL writes no timestamps into these files, so the same array gives the same bytes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.transform import Affine

COG_MIME = "image/tiff; application=geotiff; profile=cloud-optimized"
#: DEFLATE effort when writing (decoding speed does not depend on it; 1 keeps test archives quick to make).
DEFLATE_LEVEL = 1


def cog_profile(dtype: str, blocksize: int, nodata: float | None, overviews: bool = True) -> dict:
    """Creation options of every COG here: DEFLATE (level :data:`DEFLATE_LEVEL`), predictor 2 (ints) / 3
    (floats), overviews (AUTO: halvings until one block; ``NONE`` when ``overviews`` is false), no BigTIFF."""
    return {
        "driver": "COG",
        "dtype": dtype,
        "count": 1,
        "nodata": nodata,
        "blocksize": blocksize,
        "compress": "DEFLATE",
        "level": DEFLATE_LEVEL,
        "predictor": 3 if dtype.startswith("float") else 2,
        "overviews": "AUTO" if overviews else "NONE",
        "resampling": "nearest" if dtype == "uint8" else "average",
        "bigtiff": "NO",
    }


def write_cog(
    path: str | Path,
    array: np.ndarray,
    transform: Affine,
    crs: CRS | int,
    nodata: float | None,
    blocksize: int = 256,
    *,
    overviews: bool = True,
) -> Path:
    """Write the (H, W) ``array`` as one single-band COG (see :func:`cog_profile`) at ``path``; return it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    crs = CRS.from_epsg(crs) if isinstance(crs, int) else crs
    prof = cog_profile(str(array.dtype), blocksize, nodata, overviews)
    h, w = array.shape
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
        with rasterio.open(path, "w", width=w, height=h, crs=crs, transform=transform, **prof) as dst:
            dst.write(array, 1)
    return path


def auto_blocksize(size_px: int) -> int:
    """COG block edge for a scene of ``size_px`` 10 m pixels: 1024 (real scenes), 512 or 256 (small ones)."""
    return 1024 if size_px >= 4096 else 512 if size_px >= 2048 else 256
