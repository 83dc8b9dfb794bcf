"""STAC items as the archives publish them: Sentinel-2 L2A in the Earth Search v1 layout, Sentinel-1 RTC
in the Planetary Computer ``sentinel-1-rtc`` layout, and the ItemCollection a search is saved as.

S2 items carry ``proj:*`` per asset, ``raster:bands``, ``eo:bands``, ``eo:cloud_cover`` and the SCL class
percentages computed from the SCL actually written, ``s2:processing_baseline`` and (harmonised scenes)
``earthsearch:boa_offset_applied``; S1 items declare their nodata in ``raster:bands`` and their CRS as
``proj:epsg`` or, with ``proj_code``, the projection v2 ``proj:code``. Every asset has ``file:checksum``
(sha256 multihash) and ``file:size`` of the file it points to.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from rasterio.transform import Affine
from rasterio.warp import transform as warp_transform

from pipeline.sensors import S1, S2, S2_SCL
from pipeline.synthetic.cog import COG_MIME
from pipeline.synthetic.render import S1_NODATA, edge_polygon
from pipeline.synthetic.tile import TileGrid

UTC = _dt.UTC

_S2_TITLES = {
    "B01": "Coastal - 60m", "B02": "Blue - 10m", "B03": "Green - 10m", "B04": "Red - 10m",
    "B05": "Red Edge 1 - 20m", "B06": "Red Edge 2 - 20m", "B07": "Red Edge 3 - 20m", "B08": "NIR 1 - 10m",
    "B8A": "NIR 2 - 20m", "B09": "NIR 3 - 60m", "B11": "SWIR 1.6\u03bcm - 20m",
    "B12": "SWIR 2.2\u03bcm - 20m",
}  # fmt: skip
_S2_FWHM = {
    "B01": 0.027, "B02": 0.098, "B03": 0.045, "B04": 0.038, "B05": 0.019, "B06": 0.018, "B07": 0.028,
    "B08": 0.145, "B8A": 0.033, "B09": 0.026, "B11": 0.143, "B12": 0.242,
}  # fmt: skip

#: Radiometry conventions cycled over the S2 scenes of a tile.
BOA_MODES = ("offset", "legacy", "harmonised")
_BASELINE = {"offset": "05.10", "legacy": "03.01", "harmonised": "05.10"}


_S2_EXTENSIONS = [
    "https://stac-extensions.github.io/eo/v1.1.0/schema.json",
    "https://stac-extensions.github.io/file/v2.1.0/schema.json",
    "https://stac-extensions.github.io/grid/v1.1.0/schema.json",
    "https://stac-extensions.github.io/mgrs/v1.0.0/schema.json",
    "https://stac-extensions.github.io/projection/v1.1.0/schema.json",
    "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
    "https://stac-extensions.github.io/sentinel-2/v1.0.0/schema.json",
    "https://stac-extensions.github.io/view/v1.0.0/schema.json",
]
_S1_EXTENSIONS = [
    "https://stac-extensions.github.io/sar/v1.0.0/schema.json",
    "https://stac-extensions.github.io/sat/v1.0.0/schema.json",
    "https://stac-extensions.github.io/projection/v1.1.0/schema.json",
    "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
]
_S1_EXTENSIONS_PROJ2 = [e.replace("projection/v1.1.0", "projection/v2.0.0") for e in _S1_EXTENSIONS]


def _lonlat_polygon(tile: TileGrid, poly_uv: Sequence[tuple[float, float]]) -> list[list[float]]:
    e = tile.size_px * 10.0
    xs = [tile.x0 + u * e for u, _ in poly_uv]
    ys = [tile.y0 - v * e for _, v in poly_uv]
    lon, lat = warp_transform(tile.crs, "EPSG:4326", xs, ys)
    ring = [[round(a, 8), round(b, 8)] for a, b in zip(lon, lat)]
    return ring + [ring[0]]


def _bbox(ring: list[list[float]]) -> list[float]:
    lons, lats = [p[0] for p in ring], [p[1] for p in ring]
    return [min(lons), min(lats), max(lons), max(lats)]


def iso_time(t: _dt.datetime) -> str:
    """``2022-03-11T10:10:21.000Z``: UTC with milliseconds, as the STAC APIs write it."""
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _feature(item_id: str, props: dict, ring: list[list[float]], assets: dict, extensions, collection: str):
    """A STAC 1.0 Item (GeoJSON Feature) with the footprint polygon ``ring`` (lon/lat, closed)."""
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "id": item_id,
        "properties": props,
        "geometry": {"type": "Polygon", "coordinates": [ring]},
        "links": [],
        "assets": assets,
        "bbox": _bbox(ring),
        "stac_extensions": list(extensions),
        "collection": collection,
    }


def _file_fields(path: Path) -> dict:
    data = path.read_bytes()
    return {"file:checksum": "1220" + hashlib.sha256(data).hexdigest(), "file:size": len(data)}


def s2_item(
    *,
    item_id: str,
    tile: TileGrid,
    when: _dt.datetime,
    boa: str,
    hrefs: Mapping[str, str],
    local: Mapping[str, Path],
    scl: np.ndarray,
    edge: str,
    platform: str,
) -> dict:
    """An Earth Search v1 style S2 L2A item for files written at ``local`` that will live at ``hrefs``."""
    valid = scl != 0
    nvalid = max(int(valid.sum()), 1)
    pct = lambda *c: round(100.0 * float(np.isin(scl, c).sum()) / nvalid, 6)
    offset_in_dn = boa == "offset"
    zone, band, sq = tile.name[:2], tile.name[2], tile.name[3:]
    ring = _lonlat_polygon(tile, edge_polygon(edge))
    cx, cy = tile.x0 + tile.size_px * 5.0, tile.y0 - tile.size_px * 5.0
    (clon,), (clat,) = warp_transform(tile.crs, "EPSG:4326", [cx], [cy])
    stamp = when.strftime("%Y%m%dT%H%M%S")
    gen = (when + _dt.timedelta(hours=5)).strftime("%Y%m%dT%H%M%S")
    bl = _BASELINE[boa]
    sat = f"S2{platform[-1].upper()}"
    props = {
        "created": iso_time(when + _dt.timedelta(hours=8)),
        "platform": platform,
        "constellation": "sentinel-2",
        "instruments": ["msi"],
        "eo:cloud_cover": pct(8, 9, 10),
        "proj:epsg": tile.epsg,
        "proj:centroid": {"lat": round(clat, 5), "lon": round(clon, 5)},
        "mgrs:utm_zone": int(zone),
        "mgrs:latitude_band": band,
        "mgrs:grid_square": sq,
        "grid:code": f"MGRS-{tile.name}",
        "view:sun_elevation": 45.0,
        "s2:tile_id": f"{sat}_OPER_MSI_L2A_TL_SYNT_{gen}_T{tile.name}_N{bl}",
        "s2:nodata_pixel_percentage": round(100.0 * float((~valid).mean()), 6),
        "s2:saturated_defective_pixel_percentage": pct(1),
        "s2:dark_features_percentage": pct(2),
        "s2:cloud_shadow_percentage": pct(3),
        "s2:vegetation_percentage": pct(4),
        "s2:not_vegetated_percentage": pct(5),
        "s2:water_percentage": pct(6),
        "s2:unclassified_percentage": pct(7),
        "s2:medium_proba_clouds_percentage": pct(8),
        "s2:high_proba_clouds_percentage": pct(9),
        "s2:thin_cirrus_percentage": pct(10),
        "s2:snow_ice_percentage": pct(11),
        "s2:product_type": "S2MSI2A",
        "s2:processing_baseline": bl,
        "s2:product_uri": f"{sat}_MSIL2A_{stamp}_N{bl.replace('.', '')}_R022_T{tile.name}_{gen}.SAFE",
        "s2:generation_time": iso_time(when + _dt.timedelta(hours=5)),
        "datetime": iso_time(when),
        "updated": iso_time(when + _dt.timedelta(hours=8)),
    }
    if boa == "harmonised":
        props["earthsearch:boa_offset_applied"] = True
    assets: dict[str, dict] = {}
    for b in S2.bands:
        key = b.keys[0]
        res = b.resolution_m
        assets[key] = {
            "href": hrefs[b.name],
            "type": COG_MIME,
            "title": _S2_TITLES[b.name],
            "eo:bands": [
                {
                    "name": b.name,
                    "common_name": key
                    if key in ("coastal", "blue", "green", "red", "nir", "nir08", "nir09", "swir16", "swir22")
                    else "rededge",
                    "center_wavelength": b.wavelength_um,
                    "full_width_half_max": _S2_FWHM[b.name],
                }
            ],
            "gsd": res,
            "proj:shape": list(tile.shape(res)),
            "proj:transform": list(tile.transform(res))[:6],
            "raster:bands": [
                {
                    "nodata": 0,
                    "data_type": "uint16",
                    "spatial_resolution": res,
                    "scale": 0.0001,
                    "offset": -0.1 if offset_in_dn else 0,
                }
            ],
            **_file_fields(local[b.name]),
            "roles": ["data", "reflectance"],
        }
    assets[S2_SCL.keys[0]] = {
        "href": hrefs["SCL"],
        "type": COG_MIME,
        "title": "Scene classification map (SCL)",
        "gsd": 20,
        "proj:shape": list(tile.shape(20)),
        "proj:transform": list(tile.transform(20))[:6],
        "raster:bands": [{"nodata": 0, "data_type": "uint8", "spatial_resolution": 20}],
        **_file_fields(local["SCL"]),
        "roles": ["data"],
    }
    collection = "sentinel-2-l2a" if boa == "harmonised" else "sentinel-2-c1-l2a"
    return _feature(item_id, props, ring, assets, _S2_EXTENSIONS, collection)


def s2_item_id(tile: TileGrid, when: _dt.datetime, platform: str = "sentinel-2a") -> str:
    """Earth Search v1 style id: ``S2A_T33TXM_20220311T101021_L2A``."""
    return f"S2{platform[-1].upper()}_T{tile.name}_{when.strftime('%Y%m%dT%H%M%S')}_L2A"


def s2_scene_dir(tile: TileGrid, when: _dt.datetime, item_id: str, boa: str) -> str:
    """Archive-relative folder of an S2 scene (Earth Search layout)."""
    coll = "sentinel-2-l2a" if boa == "harmonised" else "sentinel-2-c1-l2a"
    zone, band, sq = tile.name[:2], tile.name[2], tile.name[3:]
    return f"{coll}/{int(zone)}/{band}/{sq}/{when.year}/{when.month}/{item_id}"


def s1_item(
    *,
    item_id: str,
    epsg: int,
    transform: Affine,
    shape: tuple[int, int],
    when: _dt.datetime,
    hrefs: Mapping[str, str],
    local: Mapping[str, Path],
    ring: list[list[float]],
    orbit: str,
    proj_code: bool,
    platform: str,
) -> dict:
    """A Planetary Computer ``sentinel-1-rtc`` style item."""
    h, w = shape
    x0, y0 = transform.c, transform.f
    pbbox = [x0, y0 + transform.e * h, x0 + transform.a * w, y0]
    props = {
        "datetime": iso_time(when),
        "start_datetime": iso_time(when - _dt.timedelta(seconds=12)),
        "end_datetime": iso_time(when + _dt.timedelta(seconds=12)),
        "platform": platform.upper(),
        "constellation": "sentinel-1",
        "instruments": ["c-sar"],
        "sar:instrument_mode": "IW",
        "sar:frequency_band": "C",
        "sar:center_frequency": 5.405,
        "sar:polarizations": ["VV", "VH"],
        "sar:product_type": "GRD",
        "sar:resolution_range": 20,
        "sar:resolution_azimuth": 22,
        "sar:pixel_spacing_range": 10,
        "sar:pixel_spacing_azimuth": 10,
        "sar:looks_range": 5,
        "sar:looks_azimuth": 1,
        "sar:looks_equivalent_number": 4.4,
        "sar:observation_direction": "right",
        "sat:orbit_state": orbit,
        "sat:relative_orbit": 22 if orbit == "descending" else 117,
        "sat:platform_international_designator": "2014-016A",
        "s1:processing_level": "1",
        "s1:product_timeliness": "Fast-24h",
        "s1:resolution": "high",
    }
    if proj_code:
        props["proj:code"] = f"EPSG:{epsg}"
    else:
        props["proj:epsg"] = epsg
    assets = {}
    for b in S1.bands:
        pol = b.name
        assets[b.keys[0]] = {
            "href": hrefs[b.name],
            "type": COG_MIME,
            "title": f"{pol}: {'vertical' if pol[0] == 'V' else 'horizontal'} transmit, "
            f"{'vertical' if pol[1] == 'V' else 'horizontal'} receive",
            "description": f"Terrain-corrected gamma naught values of signal transmitted with {pol} "
            "polarization. Linear power, not dB.",
            "proj:shape": [h, w],
            "proj:transform": list(transform)[:6],
            "proj:bbox": pbbox,
            "raster:bands": [
                {
                    "nodata": S1_NODATA,
                    "data_type": "float32",
                    "spatial_resolution": 10,
                    "scale": 1.0,
                    "offset": 0.0,
                }
            ],
            **_file_fields(local[b.name]),
            "roles": ["data"],
        }
    extensions = _S1_EXTENSIONS_PROJ2 if proj_code else _S1_EXTENSIONS
    return _feature(item_id, props, ring, assets, extensions, "sentinel-1-rtc")


def s1_item_id(when: _dt.datetime, platform: str = "sentinel-1a", absolute_orbit: int = 42302) -> str:
    """Planetary Computer RTC style id, e.g.
    ``S1A_IW_GRDH_1SDV_20220312T050102_20220312T050127_042302_050AD9_rtc``."""
    t0, t1 = when - _dt.timedelta(seconds=12), when + _dt.timedelta(seconds=13)
    f = "%Y%m%dT%H%M%S"
    dt_id = f"{(absolute_orbit * 7919) % 0xFFFFFF:06X}"
    sat = f"S1{platform[-1].upper()}"
    return f"{sat}_IW_GRDH_1SDV_{t0.strftime(f)}_{t1.strftime(f)}_{absolute_orbit:06d}_{dt_id}_rtc"


def item_collection(items: Sequence[dict]) -> dict:
    """A GeoJSON FeatureCollection of STAC items (what an Earth Search / PC search is saved as)."""
    return {"type": "FeatureCollection", "features": list(items)}
