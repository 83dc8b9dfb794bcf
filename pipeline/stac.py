"""STAC items -> :class:`Scene` records (pure metadata, no pixel reads).

Inputs, as users have them (see :func:`load_scenes`): an ItemCollection (GeoJSON FeatureCollection saved
from an Earth Search / Planetary Computer search), a directory or ``s3://`` prefix of item JSON files, or a
small search spec for a STAC API. Catalogue conventions are data (:data:`SENSOR_RULES` here, asset keys in
:mod:`pipeline.sensors`): Earth Search v1 common-name keys (``blue``, ``nir08``, ``scl``) and the Earth
Search v0 / Planetary Computer band ids (``B02``, ``B8A``, ``SCL``); Sentinel-1 RTC ``vv``/``vh``.

Radiometry: from processing baseline 04.00 (25 Jan 2022) L2A DN carry a +1000 BOA offset. A scene's
``boa_offset`` is the DN to *add* on read (:data:`pipeline.sensors.S2_BOA_OFFSET` = -1000) so it is
harmonised exactly once: 0 when the catalogue already removed it (``earthsearch:boa_offset_applied: true``)
or the baseline is older; the baseline comes from ``s2:processing_baseline`` or an ``_Nxxyy`` product /
granule / datatake id, and only when none is given from the acquisition date.

Bad input is rejected, never raised: every item that cannot become a scene yields a :class:`Reject` with
one of :data:`REJECT_REASONS`, and details never hold credentials (URL queries and user info are cut).

Hot path note: items are parsed with plain ``json`` + light dict access, never pystac objects: building a
pystac ``Item`` costs ~100x more and the planner has to take 1 M items on one core.
"""

from __future__ import annotations

import datetime as _dt
import functools
import json
import logging
import math
import os
import posixpath
import re
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from pipeline.config import StorageConfig
from pipeline.grid import is_utm_epsg
from pipeline.sensors import S1, S2, S2_BOA_OFFSET, S2_OFFSET_BASELINE, S2_SCL, Band
from pipeline.storage import filesystem, redact

log = logging.getLogger("skyray.stac")

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
    # benchmark converters (pipeline.convert)
    "missing_file",
    "unreadable_file",
    "bad_shape",
    "unknown_class",
    "excluded",
)
REJECT_LEVELS = ("item", "scene", "unit", "tile", "sample")

#: Sensor detection as data: ``(item field, normalised value prefix, sensor or None)``; first match wins and
#: fields are tried in this order, so a collection id beats constellation and platform names. ``None``
#: marks products we know and do not ingest (L1C top-of-atmosphere, S1 GRD in radar geometry).
#: Values are normalised with ``lower()`` and spaces/underscores -> ``-`` ("Sentinel 2" -> "sentinel-2").
SENSOR_RULES: tuple[tuple[str, str, str | None], ...] = (
    ("collection", "sentinel-2-l1c", None),
    ("collection", "sentinel-s2-l1c", None),
    ("collection", "sentinel-1-grd", None),
    ("collection", "sentinel-2", "s2"),  # sentinel-2-l2a (PC, Earth Search v1), sentinel-2-c1-l2a
    ("collection", "sentinel-s2-l2a", "s2"),  # Earth Search v0 sentinel-s2-l2a-cogs
    ("collection", "sentinel-1-rtc", "s1"),
    ("constellation", "sentinel-2", "s2"),
    ("constellation", "sentinel-1", "s1"),
    ("platform", "sentinel-2", "s2"),
    ("platform", "sentinel-1", "s1"),
)

#: Assets a scene must have, per sensor (canonical name -> Band, in shard order, SCL last for S2).
REQUIRED_ASSETS: dict[str, tuple[Band, ...]] = {"s2": (*S2.bands, S2_SCL), "s1": S1.bands}
_NAME_INDEX = {k: {b.name: i for i, b in enumerate(v)} for k, v in REQUIRED_ASSETS.items()}

#: Used only when an S2 item states no processing baseline: baseline 04.00 went live on this date.
S2_OFFSET_START = _dt.datetime(2022, 1, 25, tzinfo=_dt.UTC)

_BASELINE_KEYS = ("s2:processing_baseline", "processing:version", "sentinel2:processing_baseline")
_BASELINE_ID_KEYS = ("s2:product_uri", "sentinel:product_id", "s2:datatake_id", "s2:granule_id", "s2:tile_id")
_BASELINE_RE = re.compile(r"_N(\d{2})\.?(\d{2})(?![0-9])")
_BASELINE_VALUE_RE = re.compile(r"^\s*(\d{1,2})\.(\d{1,2})\s*$")
_EPSG_CODE_RE = re.compile(r"^\s*EPSG:(\d+)\s*$", re.IGNORECASE)
_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_DUPLICATE = "duplicate item id (kept the first)"


# ---------------------------------------------------------------------------------- data records


@dataclass(frozen=True, slots=True)
class AssetRef:
    href: str  # as in the item, made absolute (relative hrefs resolved against the item's location)
    transform: tuple[float, ...]  # affine (a, b, c, d, e, f) from proj:transform (first 6)
    shape: tuple[int, int]  # (height, width) from proj:shape
    nodata: float | None

    def to_dict(self) -> dict:
        return {
            "href": self.href,
            "transform": list(self.transform),
            "shape": list(self.shape),
            "nodata": _enc_float(self.nodata),
        }

    @classmethod
    def from_dict(cls, d: Mapping) -> AssetRef:
        return cls(
            d["href"],
            tuple(float(v) for v in d["transform"]),
            (int(d["shape"][0]), int(d["shape"][1])),
            _dec_float(d["nodata"]),
        )


@dataclass(frozen=True, slots=True)
class Scene:
    scene_id: str
    sensor: str  # "s2" | "s1"
    datetime: _dt.datetime  # tz-aware UTC
    epsg: int  # proj:epsg (or parsed from proj:code "EPSG:32633")
    bounds: tuple[float, float, float, float]  # (x_min, y_min, x_max, y_max) in epsg, union of asset extents
    lonlat_bbox: tuple[float, float, float, float]  # item bbox in WGS84
    assets: Mapping[str, AssetRef]  # canonical band name -> asset: S2 "B01".."B12","B8A","SCL"; S1 "VV","VH"
    boa_offset: int  # DN to ADD on read: -1000 for baseline >= 04.00 not yet harmonised, else 0
    cloud_cover: float | None  # eo:cloud_cover

    def __hash__(self) -> int:  # assets is a dict: hash on identity fields
        return hash((self.scene_id, self.sensor, self.datetime))

    def to_dict(self) -> dict:
        """JSON-safe dict (ISO datetime, lists, non-finite nodata as "nan"/"inf"); see :meth:`from_dict`."""
        return {
            "scene_id": self.scene_id,
            "sensor": self.sensor,
            "datetime": self.datetime.isoformat(),
            "epsg": self.epsg,
            "bounds": list(self.bounds),
            "lonlat_bbox": list(self.lonlat_bbox),
            "assets": {k: a.to_dict() for k, a in self.assets.items()},
            "boa_offset": self.boa_offset,
            "cloud_cover": self.cloud_cover,
        }

    @classmethod
    def from_dict(cls, d: Mapping) -> Scene:
        return cls(
            scene_id=d["scene_id"],
            sensor=d["sensor"],
            datetime=_dt.datetime.fromisoformat(d["datetime"]).astimezone(_dt.UTC),
            epsg=int(d["epsg"]),
            bounds=tuple(float(v) for v in d["bounds"]),  # type: ignore[arg-type]
            lonlat_bbox=tuple(float(v) for v in d["lonlat_bbox"]),  # type: ignore[arg-type]
            assets={k: AssetRef.from_dict(a) for k, a in d["assets"].items()},
            boa_offset=int(d["boa_offset"]),
            cloud_cover=None if d["cloud_cover"] is None else float(d["cloud_cover"]),
        )


@dataclass(frozen=True, slots=True)
class Reject:
    """Something the job could not use, at any stage (items, plan, scenes, tiles): the one record of a
    reject from parsing to ``rejects.parquet`` (:func:`pipeline.shards.rejects_table`); sidecars hold its
    :meth:`to_dict`."""

    level: str  # "item" | "scene" | "unit" | "tile"
    id: str  # item id / scene id / unit id / sample id
    reason: str  # one of REJECT_REASONS
    detail: str  # human-readable, never contains credentials

    def __post_init__(self) -> None:
        if self.reason not in REJECT_REASONS:
            raise ValueError(f"unknown reject reason {self.reason!r}; expected one of {REJECT_REASONS}")
        if self.level not in REJECT_LEVELS:
            raise ValueError(f"unknown reject level {self.level!r}; expected one of {REJECT_LEVELS}")

    @property
    def sort_key(self) -> tuple[str, str, str]:
        return self.level, self.id, self.reason

    def to_dict(self) -> dict[str, str]:
        return {"level": self.level, "id": self.id, "reason": self.reason, "detail": self.detail}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Reject:
        return cls(level=d["level"], id=d["id"], reason=d["reason"], detail=d["detail"])


class _Assets(Mapping):
    """Read-only ``{band name: AssetRef}`` of a parsed scene, stored compactly.

    A plain dict of 13 AssetRefs costs ~3 KB per scene (4 GB for 1 M items); this keeps the hrefs' common
    prefix once, interned suffixes, and the per-band grids / nodata as tuples shared by every scene of the
    same MGRS tile (~0.4 KB). AssetRefs are built on access; equality is by content, like a dict's.
    """

    __slots__ = ("_names", "_prefix", "_suffixes", "_geo", "_nodata")

    def __init__(self, names, prefix, suffixes, geo, nodata):
        self._names = names  # name -> index (shared per sensor)
        self._prefix = prefix
        self._suffixes = suffixes
        self._geo = geo  # ((transform, shape), ...)
        self._nodata = nodata

    @classmethod
    def build(cls, sensor: str, hrefs: list[str], geos: list[tuple], nodatas: list) -> _Assets:
        h0 = hrefs[0]
        prefix = h0[: h0.rfind("/") + 1]
        if not all(h.startswith(prefix) for h in hrefs):
            common = os.path.commonprefix(hrefs)
            prefix = common[: common.rfind("/") + 1]
        n = len(prefix)
        suffixes = tuple(sys.intern(h[n:]) for h in hrefs)
        geo = _share(tuple(geos))
        nodata = _share(tuple(nodatas))
        return cls(_NAME_INDEX[sensor], prefix, suffixes, geo, nodata)

    def __getitem__(self, name: str) -> AssetRef:
        i = self._names[name]
        tr, sh = self._geo[i]
        return AssetRef(self._prefix + self._suffixes[i], tr, sh, self._nodata[i])

    def __iter__(self):
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def __contains__(self, name) -> bool:
        return name in self._names

    def __repr__(self) -> str:
        return f"_Assets({dict(self.items())!r})"

    def __reduce__(self):
        return (_Assets, (self._names, self._prefix, self._suffixes, self._geo, self._nodata))


_SHARED: dict[tuple, tuple] = {}


def _share(t: tuple) -> tuple:
    if len(_SHARED) >= 200_000:
        _SHARED.clear()
    return _SHARED.setdefault(t, t)


def _enc_float(v: float | None):
    if v is None or math.isfinite(v):
        return v
    return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")


def _dec_float(v) -> float | None:
    return None if v is None else float(v)


# ------------------------------------------------------------------------------------ radiometry


def processing_baseline(props: Mapping[str, Any], item_id: str = "") -> tuple[int, int] | None:
    """The S2 processing baseline ``(major, minor)`` stated by an item, or None.

    From ``s2:processing_baseline`` ("05.10"), else an ``_Nxxyy`` / ``_Nxx.yy`` token in the product URI,
    product / datatake / granule / tile ids or the item id (``..._N0400_...`` -> (4, 0)).
    """
    for k in _BASELINE_KEYS:
        v = props.get(k)
        if isinstance(v, str):
            m = _BASELINE_VALUE_RE.match(v)
            if m:
                return int(m.group(1)), int(m.group(2))
    for k in _BASELINE_ID_KEYS:
        v = props.get(k)
        if isinstance(v, str):
            m = _BASELINE_RE.search(v)
            if m:
                return int(m.group(1)), int(m.group(2))
    m = _BASELINE_RE.search(item_id)
    return (int(m.group(1)), int(m.group(2))) if m else None


def s2_boa_offset(props: Mapping[str, Any], item_id: str, when: _dt.datetime) -> int:
    """DN to add to an S2 L2A item's pixels so they are harmonised to the pre-04.00 convention exactly once.

    ``earthsearch:boa_offset_applied: true`` -> 0 (the catalogue already did it); else baseline >= 04.00
    -> -1000; an older baseline -> 0; no baseline stated -> by date (>= 2022-01-25 -> -1000).
    """
    if props.get("earthsearch:boa_offset_applied") is True:
        return 0
    baseline = processing_baseline(props, item_id)
    if baseline is None:
        return S2_BOA_OFFSET if when >= S2_OFFSET_START else 0
    return S2_BOA_OFFSET if baseline >= S2_OFFSET_BASELINE else 0


# -------------------------------------------------------------------------------------- sensors


def _norm(v: Any) -> str:
    return v.lower().replace(" ", "-").replace("_", "-") if isinstance(v, str) else ""


def detect_sensor(item: Mapping[str, Any]) -> str | None:
    """``"s2"`` / ``"s1"`` from collection, constellation or platform (:data:`SENSOR_RULES`), else None."""
    props = item.get("properties") or {}
    values = {
        "collection": _norm(item.get("collection")),
        "constellation": _norm(props.get("constellation")),
        "platform": _norm(props.get("platform")),
    }
    for field, prefix, sensor in SENSOR_RULES:
        if values[field].startswith(prefix):
            return sensor
    return None


# ----------------------------------------------------------------------------------------- hrefs


def href_scheme(href: str) -> str:
    """URI scheme of an href; plain paths are ``"file"``."""
    m = _SCHEME_RE.match(href)
    return m.group(1).lower() if m else "file"


def resolve_href(href: str, base: str | None, storage: StorageConfig) -> str:
    """Absolute href, or ValueError: empty, ``..`` segment (also %2e%2e), or scheme not allowed.

    Relative hrefs are joined to ``base`` (the directory or prefix of the item file); plain local paths
    become absolute filesystem paths.
    """
    if not isinstance(href, str) or not href.strip():
        raise ValueError("empty or non-string href")
    path_part = urlsplit(href).path if _SCHEME_RE.match(href) else href
    if ".." in unquote(path_part).replace("\\", "/").split("/"):
        raise ValueError(f"href escapes with '..': {redact(href)}")
    if _SCHEME_RE.match(href):
        out = href
    elif href.startswith("/"):
        out = href
    elif base is None:
        raise ValueError(f"relative href without a base location: {redact(href)}")
    elif _SCHEME_RE.match(base):
        out = base.rstrip("/") + "/" + posixpath.normpath(href).lstrip("/")
    else:
        out = os.path.normpath(os.path.join(os.path.abspath(base), href))
    scheme = href_scheme(out)
    if scheme not in storage.allowed_schemes:
        allowed = list(storage.allowed_schemes)
        raise ValueError(f"scheme {scheme!r} not in allowed_schemes {allowed}: {redact(out)}")
    return out


# ------------------------------------------------------------------------------------- item parse


@functools.lru_cache(maxsize=64)
def _fast_prefixes(schemes: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(f"{sc}://" for sc in schemes if sc != "file")


_GEO: dict[tuple, tuple] = {}
_GEO_MAX = 200_000


def _geo(tr, sh) -> tuple[tuple[float, ...], tuple[int, int], tuple[float, float, float, float]]:
    """(transform, shape, extent) of an asset, shared across scenes with the same grid (same MGRS tile).

    Keyed on the raw JSON values (``10 == 10.0`` hash alike), so repeat grids cost one dict lookup.
    """
    key = (*tr[:6], *sh)
    hit = _GEO.get(key)
    if hit is None:
        if len(tr) < 6 or len(sh) != 2:
            raise _Bad("missing_crs", f"bad proj:transform / proj:shape {tr!r} / {sh!r}")
        transform = tuple(float(v) for v in tr[:6])
        shape = (int(sh[0]), int(sh[1]))
        if not all(math.isfinite(v) for v in transform) or shape[0] <= 0 or shape[1] <= 0:
            raise _Bad("missing_crs", f"bad proj:transform / proj:shape {tr!r} / {sh!r}")
        if len(_GEO) >= _GEO_MAX:
            _GEO.clear()
        hit = _GEO[key] = (transform, shape, _extent(transform, shape))
    return hit


_BOUNDS: dict[tuple, tuple] = {}


def _bounds(b: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
    if len(_BOUNDS) >= _GEO_MAX:
        _BOUNDS.clear()
    return _BOUNDS.setdefault(b, b)


def _parse_datetime(v: Any) -> _dt.datetime:
    if not isinstance(v, str):
        raise ValueError("datetime is missing")
    s = v.strip()
    if s.endswith(("Z", "z")):
        s = s[:-1] + "+00:00"
    try:
        d = _dt.datetime.fromisoformat(s)
    except ValueError:
        # more than 6 fractional digits ("...:54.4630001Z"): trim to microseconds
        m = re.match(r"^(.*T\d{2}:\d{2}:\d{2})\.(\d+)(.*)$", s)
        if not m:
            raise ValueError(f"unparseable datetime {v!r}") from None
        d = _dt.datetime.fromisoformat(f"{m.group(1)}.{m.group(2)[:6].ljust(6, '0')}{m.group(3)}")
    return d.replace(tzinfo=_dt.UTC) if d.tzinfo is None else d.astimezone(_dt.UTC)


def _epsg_of(obj: Mapping[str, Any]) -> int | None:
    v = obj.get("proj:epsg")
    if isinstance(v, int) and not isinstance(v, bool):
        return v
    if isinstance(v, float) and v.is_integer():
        return int(v)
    if isinstance(v, str) and v.strip().isdigit():
        return int(v)
    code = obj.get("proj:code")
    if isinstance(code, str):
        m = _EPSG_CODE_RE.match(code)
        if m:
            return int(m.group(1))
    return None


def _extent(transform: tuple[float, ...], shape: tuple[int, int]) -> tuple[float, float, float, float]:
    a, b, c, d, e, f = transform
    h, w = shape
    xs = (c, c + a * w, c + b * h, c + a * w + b * h)
    ys = (f, f + d * w, f + e * h, f + d * w + e * h)
    return min(xs), min(ys), max(xs), max(ys)


class _Bad(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def _nodata(asset: Mapping[str, Any], default: float | None) -> float | None:
    rb = asset.get("raster:bands")
    if isinstance(rb, list) and rb and isinstance(rb[0], dict) and "nodata" in rb[0]:
        v = rb[0]["nodata"]
    elif "nodata" in asset:
        v = asset["nodata"]
    else:
        return None if default is None else float(default)
    if v is None:
        return None
    if isinstance(v, str):  # STAC allows "nan", "inf", "-inf"
        return float(v)
    return float(v)


def parse_item(item: Any, storage: StorageConfig, base: str | None = None, where: str = "") -> Scene | Reject:
    """One STAC item dict -> :class:`Scene`, or a :class:`Reject` (level "item") saying why not.

    ``base``: directory / prefix the item was read from (relative hrefs resolve against it);
    ``where``: a label for items without a usable id (file name and index).
    """
    if not isinstance(item, dict):
        what = type(item).__name__
        return Reject("item", where or "?", "malformed_item", f"item is a {what}, not an object")
    item_id = item.get("id")
    if not isinstance(item_id, str) or not item_id:
        return Reject("item", where or "?", "malformed_item", "item has no string id")
    try:
        return _parse(item, item_id, storage, base)
    except _Bad as e:
        return Reject("item", item_id, e.reason, e.detail)
    except (TypeError, ValueError, KeyError, IndexError, AttributeError) as e:
        return Reject("item", item_id, "malformed_item", f"{type(e).__name__}: {e}"[:300])


def _parse(item: dict, item_id: str, storage: StorageConfig, base: str | None) -> Scene:
    props = item.get("properties")
    if not isinstance(props, dict):
        raise _Bad("malformed_item", "item has no properties object")
    try:
        when = _parse_datetime(props.get("datetime") or props.get("start_datetime"))
    except ValueError as e:
        raise _Bad("malformed_item", str(e)) from None
    sensor = detect_sensor(item)
    if sensor is None:
        what = item.get("collection") or props.get("constellation") or props.get("platform")
        raise _Bad("unsupported_sensor", f"not a supported Sentinel-1 RTC / Sentinel-2 L2A item ({what!r})")
    assets = item.get("assets")
    if not isinstance(assets, dict):
        raise _Bad("missing_asset", "item has no assets")

    epsg = _epsg_of(props)
    fast = _fast_prefixes(storage.allowed_schemes)  # absolute hrefs of allowed schemes skip resolve_href
    hrefs: list[str] = []
    geos: list[tuple] = []
    nodatas: list[float | None] = []
    missing = []
    x0 = y0 = math.inf
    x1 = y1 = -math.inf
    for band in REQUIRED_ASSETS[sensor]:
        key = None
        for k in band.keys:  # pipeline.sensors.find_asset_key, inlined on the hot path
            if k in assets:
                key = k
                break
        if key is None:
            missing.append(band.name)
            continue
        a = assets[key]
        if not isinstance(a, dict):
            raise _Bad("malformed_item", f"asset {key!r} is not an object")
        if epsg is None:
            epsg = _epsg_of(a)
        tr = a.get("proj:transform") or props.get("proj:transform")
        sh = a.get("proj:shape") or props.get("proj:shape")
        if not tr or not sh:
            raise _Bad("missing_crs", f"asset {key!r} has no proj:transform / proj:shape")
        transform, shape, ex = _geo(tr, sh)
        href = a.get("href")
        if not (isinstance(href, str) and href.startswith(fast) and ".." not in href and "%" not in href):
            try:
                href = resolve_href(href, base, storage)
            except ValueError as e:
                raise _Bad("bad_uri", f"asset {key!r}: {e}") from None
        hrefs.append(href)
        geos.append((transform, shape))
        nodatas.append(_nodata(a, band.nodata))
        if ex[0] < x0:
            x0 = ex[0]
        if ex[1] < y0:
            y0 = ex[1]
        if ex[2] > x1:
            x1 = ex[2]
        if ex[3] > y1:
            y1 = ex[3]
    if missing:
        raise _Bad("missing_asset", f"{sensor} item lacks required assets: {', '.join(missing)}")
    if epsg is None:
        raise _Bad("missing_crs", "item has no proj:epsg / proj:code")
    if sensor == "s2" and not is_utm_epsg(epsg):
        raise _Bad("missing_crs", f"EPSG:{epsg} is not a UTM zone (S2 scenes define the UTM tile grid)")
    if not is_utm_epsg(epsg) and not _known_epsg(epsg):
        raise _Bad("missing_crs", f"EPSG:{epsg} is not a known CRS")
    if not (x1 > x0 and y1 > y0):
        raise _Bad("missing_crs", "assets have an empty extent")

    lonlat = _lonlat_bbox(item, epsg, (x0, y0, x1, y1))
    cc = props.get("eo:cloud_cover")
    cloud = float(cc) if isinstance(cc, int | float) and not isinstance(cc, bool) else None
    boa = s2_boa_offset(props, item_id, when) if sensor == "s2" else 0
    refs = _Assets.build(sensor, hrefs, geos, nodatas)
    return Scene(item_id, sensor, when, epsg, _bounds((x0, y0, x1, y1)), lonlat, refs, boa, cloud)


@functools.lru_cache(maxsize=256)
def _known_epsg(epsg: int) -> bool:
    """True if PROJ knows the code (checked once per code; S1 may come in any CRS, it is warped)."""
    from rasterio.crs import CRS
    from rasterio.errors import CRSError

    try:
        CRS.from_epsg(epsg)
        return True
    except (CRSError, ValueError):
        return False


def _lonlat_bbox(item: dict, epsg: int, bounds: tuple[float, float, float, float]):
    bb = item.get("bbox")
    if isinstance(bb, list | tuple) and len(bb) in (4, 6):
        v = [float(x) for x in bb]
        return (v[0], v[1], v[3], v[4]) if len(v) == 6 else (v[0], v[1], v[2], v[3])
    geom = item.get("geometry")
    if isinstance(geom, dict) and geom.get("coordinates"):
        pts = list(_coords(geom["coordinates"]))
        if pts:
            xs, ys = [p[0] for p in pts], [p[1] for p in pts]
            return (min(xs), min(ys), max(xs), max(ys))
    from pipeline.grid import transform_bounds

    return transform_bounds(epsg, 4326, bounds)


def _coords(c) -> Iterator[tuple[float, float]]:
    if isinstance(c, list | tuple) and c and isinstance(c[0], int | float):
        yield float(c[0]), float(c[1])
    elif isinstance(c, list | tuple):
        for x in c:
            yield from _coords(x)


def parse_items(
    items: Iterable[Any], storage: StorageConfig, base: str | None = None, where: str = ""
) -> tuple[list[Scene], list[Reject]]:
    """Parse many item dicts; duplicate ids keep the first and reject the rest (malformed_item)."""
    scenes: list[Scene] = []
    rejects: list[Reject] = []
    seen: set[str] = set()
    for i, it in enumerate(items):
        r = parse_item(it, storage, base, f"{where}#{i}")
        if isinstance(r, Reject):
            rejects.append(r)
        elif r.scene_id in seen:
            rejects.append(Reject("item", r.scene_id, "malformed_item", _DUPLICATE))
        else:
            seen.add(r.scene_id)
            scenes.append(r)
    return scenes, rejects


# ---------------------------------------------------------------------------------------- loading


def _items_of(doc: Any) -> tuple[list[Any], bool]:
    """Items in a parsed JSON document: a FeatureCollection's features, one Feature, or a list of items."""
    if isinstance(doc, dict) and doc.get("type") == "FeatureCollection":
        feats = doc.get("features")
        return (feats if isinstance(feats, list) else []), isinstance(feats, list)
    if isinstance(doc, list):
        return doc, True
    return [doc], True


def load_scenes(source: str, storage: StorageConfig) -> tuple[list[Scene], list[Reject]]:
    """Scenes from an ItemCollection file, a directory / prefix of item files, or a STAC API search spec.

    * ``*.json`` / ``*.geojson`` file (local, ``file://`` or ``s3://``): a FeatureCollection, one Feature
      or a list of items. A file holding ``{"stac_api": ...}`` (or a ``*.yaml``/``*.yml`` file) is a search
      spec: ``{"stac_api": url, "collections": [...], "bbox": [...], "datetime": "...", "query": {...},
      "max_items": n}``, run with pystac-client (needs a network; not exercised by the offline tests).
    * anything else: a directory / prefix, every ``*.json`` / ``*.geojson`` below it in sorted order.

    Relative asset hrefs resolve against the folder of the file that held the item. Files that are not
    JSON become ``malformed_item`` rejects named by file; a source that cannot be read at all raises
    (that is a usage error, not bad input). Scenes come back in input order.
    """
    fs, path = filesystem(source, storage)  # BadURIError (a ValueError) for schemes not allowed
    prefix = "s3://" if href_scheme(source) == "s3" else ""
    lower = path.lower()
    if fs.isfile(path):
        raw = fs.cat_file(path)
        if lower.endswith((".yaml", ".yml")):
            import yaml

            return search_scenes(yaml.safe_load(raw), storage)
        try:
            doc = json.loads(raw)
        except ValueError as e:
            return [], [Reject("item", os.path.basename(path), "malformed_item", f"not JSON: {e}"[:300])]
        if isinstance(doc, dict) and "stac_api" in doc:
            return search_scenes(doc, storage)
        items, _ = _items_of(doc)
        return parse_items(items, storage, prefix + posixpath.dirname(path), os.path.basename(path))
    if not fs.isdir(path):
        raise FileNotFoundError(f"no STAC items at {redact(source)}")
    files = sorted(p for p in fs.find(path) if p.lower().endswith((".json", ".geojson")))
    scenes: list[Scene] = []
    rejects: list[Reject] = []
    seen: set[str] = set()
    for chunk in range(0, len(files), 512):
        names = files[chunk : chunk + 512]
        blobs = fs.cat(names, on_error="return") if prefix else {n: _read_local(n) for n in names}
        for name in names:
            blob = blobs.get(name)
            label = name[len(path) :].lstrip("/") or os.path.basename(name)
            if isinstance(blob, BaseException) or blob is None:
                why = f"unreadable item file {label}: {type(blob).__name__}"
                rejects.append(Reject("item", label, "malformed_item", why))
                continue
            try:
                doc = json.loads(blob)
            except ValueError as e:
                rejects.append(Reject("item", label, "malformed_item", f"{label} is not JSON: {e}"[:300]))
                continue
            items, _ = _items_of(doc)
            s, r = parse_items(items, storage, prefix + posixpath.dirname(name), label)
            for sc in s:
                if sc.scene_id in seen:
                    r.append(Reject("item", sc.scene_id, "malformed_item", _DUPLICATE))
                else:
                    seen.add(sc.scene_id)
                    scenes.append(sc)
            rejects.extend(r)
    return scenes, rejects


def _read_local(name: str) -> bytes | BaseException:
    try:
        with open(name, "rb") as f:
            return f.read()
    except OSError as e:
        return e


def search_scenes(spec: Mapping[str, Any], storage: StorageConfig) -> tuple[list[Scene], list[Reject]]:
    """Run a STAC API search spec with pystac-client and parse the resulting item dicts.

    Spec keys: ``stac_api`` (URL, required), ``collections``, ``bbox``, ``datetime``, ``query``,
    ``max_items``. Item dicts are taken as JSON (``items_as_dicts``), not pystac objects. Asset hrefs must
    use schemes in ``storage.allowed_schemes`` (add ``https`` for public HTTP catalogues). Not covered by the
    offline tests: it needs a network.
    """
    if not isinstance(spec, Mapping) or not isinstance(spec.get("stac_api"), str):
        raise ValueError("a STAC search spec needs a 'stac_api' URL")
    allowed = {"stac_api", "collections", "bbox", "datetime", "query", "max_items"}
    extra = set(spec) - allowed
    if extra:
        raise ValueError(f"unknown STAC search spec keys: {sorted(extra)}; allowed: {sorted(allowed)}")
    from pystac_client import Client

    client = Client.open(spec["stac_api"])
    search = client.search(
        collections=spec.get("collections"),
        bbox=spec.get("bbox"),
        datetime=spec.get("datetime"),
        query=spec.get("query"),
        max_items=spec.get("max_items"),
    )
    return parse_items(search.items_as_dicts(), storage, None, "search")
