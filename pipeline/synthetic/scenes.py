"""Writing one scene: its band COGs under the archive's folder layout and the STAC item describing them.

Files go under a local directory (``root_local``) while the item's hrefs name where they will live
(``root_uri``, a local path or ``s3://`` prefix); :func:`pipeline.storage.staged` bridges the two.
"""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Callable, Mapping
from os import PathLike
from pathlib import Path

import numpy as np
from rasterio.crs import CRS
from rasterio.transform import Affine
from rasterio.warp import transform as warp_transform

from pipeline import storage as st
from pipeline.config import StorageConfig
from pipeline.sensors import S2, S2_SCL
from pipeline.synthetic.cog import auto_blocksize, write_cog
from pipeline.synthetic.items import (
    BOA_MODES,
    item_collection,
    s1_item,
    s1_item_id,
    s2_item,
    s2_item_id,
    s2_scene_dir,
)
from pipeline.synthetic.render import S1_NODATA
from pipeline.synthetic.tile import TileGrid


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
        write_cog(p, arr, tile.transform(b.resolution_m), tile.crs, 0, blocksize)
        local[b.name], hrefs[b.name] = p, st.join(root_uri, f"{rel}/{b.name}.tif")
    return s2_item(
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
        write_cog(p, arr.astype(np.float32), transform, epsg, S1_NODATA, blocksize)
        local[name], hrefs[name] = p, st.join(root_uri, f"{rel}/{name.lower()}.tif")
    xs = [transform.c, transform.c, transform.c + w * transform.a, transform.c + w * transform.a]
    ys = [transform.f, transform.f + h * transform.e, transform.f + h * transform.e, transform.f]
    lon, lat = warp_transform(CRS.from_epsg(epsg), "EPSG:4326", xs, ys)
    ring = [[round(a, 8), round(b, 8)] for a, b in zip(lon, lat)]
    ring.append(ring[0])
    return s1_item(
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


def write_json(obj, path: Path) -> None:
    """Write ``obj`` as indented UTF-8 JSON (one trailing newline) at the local ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1, sort_keys=False, ensure_ascii=False) + "\n")


def write_scene_to(
    output: str | PathLike,
    write: Callable[[Path, str], dict],
    items_name: str | None = None,
    storage: StorageConfig | None = None,
) -> dict:
    """Write one scene under ``output`` (local or ``s3://``) and return its item.

    ``write(local_root, root_uri)`` writes the files under the local staging directory and returns the
    item with hrefs under ``root_uri`` (see :func:`pipeline.storage.staged`); ``items_name``, unless None,
    is written beside them as an ItemCollection of that one item.
    """
    storage = storage or StorageConfig()
    root_uri = st.output_root(output, storage)
    with st.staged(root_uri, storage) as local_root:
        item = write(local_root, root_uri)
        if items_name:
            write_json(item_collection([item]), local_root / items_name)
    return item
