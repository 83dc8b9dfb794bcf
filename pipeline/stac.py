"""STAC items -> :class:`Scene` records (pure metadata, no pixel reads).

Hot path note: items are parsed with plain ``json`` + light dict access, never pystac objects
(pystac's Item construction costs ~100x more and a planner must take 1 M items).
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping
from dataclasses import dataclass

from pipeline.config import StorageConfig

REJECT_REASONS = (
    "malformed_item",
    "missing_asset",
    "missing_crs",
    "unsupported_sensor",
    "bad_uri",
    "unreadable_cog",
    "all_cloud",
    "all_nodata",
    "no_scenes",
)
REJECT_LEVELS = ("item", "scene", "unit", "tile")


@dataclass(frozen=True, slots=True)
class AssetRef:
    href: str  # as in the item, made absolute (relative hrefs resolved against the item's location)
    transform: tuple[float, ...]  # affine (a, b, c, d, e, f) from proj:transform (first 6)
    shape: tuple[int, int]  # (height, width) from proj:shape
    nodata: float | None


@dataclass(frozen=True, slots=True)
class Scene:
    scene_id: str
    sensor: str  # "s2" | "s1"
    datetime: _dt.datetime  # tz-aware UTC
    epsg: int
    bounds: tuple[float, float, float, float]  # (x_min, y_min, x_max, y_max) in epsg, union of asset extents
    lonlat_bbox: tuple[float, float, float, float]  # item bbox in WGS84
    assets: Mapping[str, AssetRef]  # canonical band name -> asset: S2 "B01".."B12","B8A","SCL"; S1 "VV","VH"
    boa_offset: int  # DN to ADD on read: -1000 for baseline >= 04.00 not yet harmonised, else 0
    cloud_cover: float | None  # eo:cloud_cover

    def __hash__(self) -> int:
        return hash((self.scene_id, self.sensor, self.datetime))

    def to_dict(self) -> dict:
        raise NotImplementedError

    @classmethod
    def from_dict(cls, d: dict) -> Scene:
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class Reject:
    level: str  # "item" | "scene" | "unit" | "tile"
    id: str  # item id / scene id / unit id / sample id
    reason: str  # one of REJECT_REASONS
    detail: str  # human-readable, never contains credentials


def load_scenes(source: str, storage: StorageConfig) -> tuple[list[Scene], list[Reject]]:
    raise NotImplementedError
