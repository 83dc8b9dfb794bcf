"""The planner: scenes -> work units (grid cell x period), on the driver, from metadata alone.

A work unit is one cell of the unit grid (``unit_tiles x unit_tiles`` tiles, :mod:`pipeline.grid`) of a
UTM zone and one period. Sentinel-2 scenes define the grid in their own zone: a unit exists where at least
one S2 scene of that zone and period intersects it, and its ``tiles`` are the tiles of the unit that some
of those scenes cover. Sentinel-1 scenes join every existing unit that their footprint (the bounding box
of their raster, reprojected into the unit's zone) intersects and whose period, widened by
``s1_window_days`` on each side, holds their date. S1 scenes that join no unit are rejected (level
"scene", reason "no_scenes"); scenes of other sensors likewise ("unsupported_sensor").

Cost: scenes are bucketed, never compared pairwise (no O(units x scenes)). S2 scenes of one MGRS tile share
one footprint, so they are grouped by ``(epsg, bounds, period)`` first and each group is spread over the
few hundred units it covers; a unit's scene list is the sorted merge of its groups (shared between units
that see the same groups). S1 footprints vary per acquisition, so their (scene, unit) candidates are
expanded with numpy and matched against the existing unit codes with ``searchsorted``, in chunks.
1 M items (900 k S2, 100 k S1 -> 2 M units) parse and plan in ~100 s of one core, 3.8 GB peak
(``bench/plan.py``, figures in bench/results/plan.md).

Every output is deterministic: units sorted by ``unit_id``, scenes by ``(datetime, scene_id)``, tiles by
``(col, row)``.
"""

from __future__ import annotations

import datetime as _dt
import heapq
import json
import os
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from pipeline.config import IngestConfig
from pipeline.grid import (
    cell_bounds,
    cell_span,
    cell_spans,
    period_of,
    periods_between,
    sample_id,
    transform_bounds_many,
)
from pipeline.stac import AssetRef, Reject, Scene, _dec_float, _enc_float


@dataclass(frozen=True, slots=True)
class WorkUnit:
    """One Ray Data task's input: a unit cell of one UTM zone and one period, with every scene to read."""

    unit_id: str  # f"{epsg}_{ucol}_{urow}_{period}" (ucol/urow: unit grid indices)
    epsg: int
    period: str
    bounds: tuple[float, float, float, float]  # unit bounds in epsg, multiples of unit_m
    tiles: tuple[tuple[int, int], ...]  # (col, row) tiles of the unit covered by >= 1 S2 scene, sorted
    s2: tuple[Scene, ...]  # S2 scenes of this zone intersecting the unit, dated in the period; (datetime, id)
    s1: tuple[Scene, ...]  # S1 scenes intersecting the unit, dated in the period +- s1_window_days

    def sample_ids(self) -> list[str]:
        """The planned samples of this unit, in ``tiles`` order."""
        return [sample_id(self.epsg, c, r, self.period) for c, r in self.tiles]

    def to_json(self) -> str:
        """Compact, deterministic JSON (sorted keys); :meth:`from_json` gives an equal unit back.

        Scenes are stored compactly (``{"v": 1}`` layout): each asset grid (transform + shape) once per unit
        in ``grids``, and each scene's hrefs as one common prefix plus short suffixes, so a unit of ~60 S2
        and ~30 S1 scenes is ~60 KB instead of ~200 KB of :meth:`Scene.to_dict` output.
        """
        grids: dict[tuple, int] = {}
        s2 = [_scene_enc(x, grids) for x in self.s2]
        s1 = [_scene_enc(x, grids) for x in self.s1]
        return json.dumps(
            {
                "v": 1,
                "unit_id": self.unit_id,
                "epsg": self.epsg,
                "period": self.period,
                "bounds": list(self.bounds),
                "tiles": [list(t) for t in self.tiles],
                "grids": [list(g) for g in grids],
                "s2": s2,
                "s1": s1,
            },
            sort_keys=True,
            separators=(",", ":"),
            allow_nan=False,
        )

    @classmethod
    def from_json(cls, s: str) -> WorkUnit:
        d = json.loads(s)
        if d.get("v") != 1:
            raise ValueError(f"unsupported WorkUnit JSON version {d.get('v')!r} (expected 1)")
        grids = [(tuple(float(v) for v in g[:6]), (int(g[6]), int(g[7]))) for g in d["grids"]]
        return cls(
            unit_id=d["unit_id"],
            epsg=int(d["epsg"]),
            period=d["period"],
            bounds=tuple(float(v) for v in d["bounds"]),  # type: ignore[arg-type]
            tiles=tuple((int(c), int(r)) for c, r in d["tiles"]),
            s2=tuple(_scene_dec(x, grids) for x in d["s2"]),
            s1=tuple(_scene_dec(x, grids) for x in d["s1"]),
        )


def _scene_enc(s: Scene, grids: dict[tuple, int]) -> dict:
    names = list(s.assets)
    refs = [s.assets[n] for n in names]
    hrefs = [r.href for r in refs]
    common = os.path.commonprefix(hrefs) if len(hrefs) > 1 else hrefs[0] if hrefs else ""
    n = common.rfind("/") + 1
    assets = []
    for name, r in zip(names, refs, strict=True):
        g = (*r.transform, *r.shape)
        gi = grids.get(g)
        if gi is None:
            gi = grids[g] = len(grids)
        assets.append([name, r.href[n:], gi, _enc_float(r.nodata)])
    return {
        "id": s.scene_id,
        "sensor": s.sensor,
        "datetime": s.datetime.isoformat(),
        "epsg": s.epsg,
        "bounds": list(s.bounds),
        "lonlat_bbox": list(s.lonlat_bbox),
        "boa_offset": s.boa_offset,
        "cloud_cover": s.cloud_cover,
        "prefix": common[:n],
        "assets": assets,
    }


def _scene_dec(d: dict, grids: list[tuple]) -> Scene:
    prefix = d["prefix"]
    assets = {}
    for name, suffix, gi, nodata in d["assets"]:
        tr, sh = grids[gi]
        assets[name] = AssetRef(prefix + suffix, tr, sh, _dec_float(nodata))
    return Scene(
        scene_id=d["id"],
        sensor=d["sensor"],
        datetime=_dt.datetime.fromisoformat(d["datetime"]).astimezone(_dt.UTC),
        epsg=int(d["epsg"]),
        bounds=tuple(float(v) for v in d["bounds"]),  # type: ignore[arg-type]
        lonlat_bbox=tuple(float(v) for v in d["lonlat_bbox"]),  # type: ignore[arg-type]
        assets=assets,
        boa_offset=int(d["boa_offset"]),
        cloud_cover=None if d["cloud_cover"] is None else float(d["cloud_cover"]),
    )


def _scene_key(s: Scene) -> tuple[_dt.datetime, str]:
    return s.datetime, s.scene_id


_OFF = 1 << 23  # ucol/urow offset so codes stay non-negative; |index| < 2**23 units (>= 1.3e6 km at 160 m)


def _code(pidx, ucol, urow):
    """int64 code of (period index, ucol, urow); works on ints and numpy arrays alike."""
    return (pidx << 48) | ((ucol + _OFF) << 24) | (urow + _OFF)


def plan_units(scenes: list[Scene], cfg: IngestConfig) -> tuple[list[WorkUnit], list[Reject]]:
    """Group scenes into work units (see module docstring); returns (units sorted by unit_id, rejects)."""
    unit_m, tile_m, ut = cfg.unit_m, cfg.tile_m, cfg.unit_tiles
    rejects: list[Reject] = []
    s2: list[Scene] = []
    s1: list[Scene] = []
    for s in scenes:
        if s.sensor == "s2":
            s2.append(s)
        elif s.sensor == "s1":
            s1.append(s)
        else:
            rejects.append(Reject("scene", s.scene_id, "unsupported_sensor", f"sensor {s.sensor!r}"))
    s2.sort(key=_scene_key)
    s1.sort(key=_scene_key)

    # ---- S2: group by footprint and period (scenes stay in (datetime, id) order inside a group)
    period_cache: dict[tuple[int, int], str] = {}
    groups: dict[tuple[int, tuple, str], list[Scene]] = {}
    for s in s2:
        d = s.datetime
        ym = (d.year, d.month)
        p = period_cache.get(ym)
        if p is None:
            p = period_cache[ym] = period_of(d, cfg.period)
        key = (s.epsg, s.bounds, p)
        g = groups.get(key)
        if g is None:
            groups[key] = [s]
        else:
            g.append(s)

    periods = sorted({p for (_, _, p) in groups})
    pidx = {p: i for i, p in enumerate(periods)}
    footprint_ids: dict[tuple[int, tuple], int] = {}
    tile_spans: list[tuple[int, int, int, int]] = []
    group_scenes: list[tuple[Scene, ...]] = []
    group_fp: list[int] = []
    # zone -> unit code (period index, ucol, urow; see _code) -> group ids (ascending); int keys keep the
    # millions of entries small
    unit_groups: dict[int, dict[int, list[int]]] = defaultdict(dict)
    for gi, ((epsg, bounds, p), members) in enumerate(groups.items()):
        fkey = (epsg, bounds)
        fid = footprint_ids.get(fkey)
        if fid is None:
            fid = footprint_ids[fkey] = len(tile_spans)
            tile_spans.append(cell_span(bounds, tile_m))
        group_scenes.append(tuple(members))
        group_fp.append(fid)
        c0, c1, r0, r1 = cell_span(bounds, unit_m)
        zone = unit_groups[epsg]
        pbase = pidx[p] << 48
        for uc in range(c0, c1):
            cbase = pbase | ((uc + _OFF) << 24)
            for ur in range(r0, r1):
                code = cbase | (ur + _OFF)
                g = zone.get(code)
                if g is None:
                    zone[code] = [gi]
                else:
                    g.append(gi)

    # ---- build units; tiles and merged scene tuples are shared between units that see the same groups
    tiles_cache: dict[tuple, tuple[tuple[int, int], ...]] = {}
    merge_cache: dict[tuple[int, ...], tuple[Scene, ...]] = {}
    built: list[tuple[int, int, int, int, tuple, tuple]] = []  # epsg, pi, uc, ur, tiles, s2
    mask = (1 << 24) - 1
    for epsg, code, gids in ((e, c, g) for e, zone in unit_groups.items() for c, g in zone.items()):
        pi, uc, ur = code >> 48, ((code >> 24) & mask) - _OFF, (code & mask) - _OFF
        fps = (group_fp[gids[0]],) if len(gids) == 1 else tuple(sorted({group_fp[g] for g in gids}))
        tkey = (epsg, uc, ur, fps)
        tiles = tiles_cache.get(tkey)
        if tiles is None:
            tiles = tiles_cache[tkey] = _unit_tiles(uc, ur, ut, [tile_spans[f] for f in fps])
        if len(gids) == 1:
            scenes_t = group_scenes[gids[0]]
        else:
            gk = tuple(gids)
            scenes_t = merge_cache.get(gk)
            if scenes_t is None:
                merged = heapq.merge(*(group_scenes[g] for g in gids), key=_scene_key)
                scenes_t = merge_cache[gk] = tuple(merged)
        built.append((epsg, pi, uc, ur, tiles, scenes_t))
    del unit_groups, merge_cache

    s1_of_unit = (
        _match_s1(s1, built, periods, pidx, _envelopes(s2), cfg, rejects) if s1 else [()] * len(built)
    )

    bounds_cache: dict[tuple[int, int], tuple[float, float, float, float]] = {}
    units = []
    for (epsg, pi, uc, ur, tiles, scenes_t), s1_t in zip(built, s1_of_unit, strict=True):
        ub = bounds_cache.get((uc, ur))
        if ub is None:
            ub = bounds_cache[(uc, ur)] = cell_bounds(uc, ur, unit_m)
        p = periods[pi]
        units.append(WorkUnit(f"{epsg}_{uc}_{ur}_{p}", epsg, p, ub, tiles, scenes_t, s1_t))
    del built, s1_of_unit
    units.sort(key=lambda u: u.unit_id)
    rejects.sort(key=lambda r: (r.level, r.id, r.reason))
    return units, rejects


def _unit_tiles(
    uc: int, ur: int, ut: int, spans: list[tuple[int, int, int, int]]
) -> tuple[tuple[int, int], ...]:
    """Tiles of unit (uc, ur) inside the union of tile-index rectangles ``spans``, sorted (col, row)."""
    uc0, ur0 = uc * ut, ur * ut
    rects = []
    for c0, c1, r0, r1 in spans:
        rect = (max(c0, uc0), min(c1, uc0 + ut), max(r0, ur0), min(r1, ur0 + ut))
        if rect[0] < rect[1] and rect[2] < rect[3]:
            rects.append(rect)
    if len(rects) == 1:
        c0, c1, r0, r1 = rects[0]
        return tuple((c, r) for c in range(c0, c1) for r in range(r0, r1))
    cells = {(c, r) for c0, c1, r0, r1 in rects for c in range(c0, c1) for r in range(r0, r1)}
    return tuple(sorted(cells))


_S1_CHUNK_PAIRS = 4_000_000  # (scene, unit) candidates expanded at once: bounds peak memory


def _match_s1(
    s1: list[Scene],
    built: list[tuple],
    periods: list[str],
    pidx: dict[str, int],
    envs: dict[int, tuple[float, float, float, float]],
    cfg: IngestConfig,
    rejects: list[Reject],
) -> list[tuple[Scene, ...]]:
    """Per built unit, the S1 scenes (sorted as ``s1`` is) that match it by footprint and date window."""
    n_units = len(built)
    out: list[tuple[Scene, ...]] = [()] * n_units
    if not built:
        for s in s1:
            rejects.append(
                Reject("scene", s.scene_id, "no_scenes", "no Sentinel-2 scene defines a unit here")
            )
        return out
    # periods each S1 scene may join: those overlapping [t - w, t + w] (only periods that have units)
    w = _dt.timedelta(days=cfg.s1_window_days)
    eps = _dt.timedelta(microseconds=1)
    rows_scene: list[int] = []
    rows_period: list[int] = []
    for i, s in enumerate(s1):
        t = s.datetime
        if w:
            ps = periods_between(t - w, t + w + eps, cfg.period)
        else:
            ps = (period_of(t, cfg.period),)
        for p in ps:
            j = pidx.get(p)
            if j is not None:
                rows_scene.append(i)
                rows_period.append(j)
    row_scene = np.asarray(rows_scene, dtype=np.int64)
    row_period = np.asarray(rows_period, dtype=np.int64)

    b_native = np.asarray([s.bounds for s in s1], dtype=np.float64).reshape(-1, 4)
    ll = np.asarray([s.lonlat_bbox for s in s1], dtype=np.float64).reshape(-1, 4)
    src_epsg = np.asarray([s.epsg for s in s1], dtype=np.int64)
    unit_epsg = np.asarray([b[0] for b in built], dtype=np.int64)
    unit_code = _code(
        np.asarray([b[1] for b in built], dtype=np.int64),
        np.asarray([b[2] for b in built], dtype=np.int64),
        np.asarray([b[3] for b in built], dtype=np.int64),
    )
    matched = np.zeros(len(s1), dtype=bool)
    s1_arr = np.empty(len(s1), dtype=object)
    s1_arr[:] = s1
    for epsg in np.unique(unit_epsg):  # one zone at a time: its (unit, scene) pairs are all in memory once
        pair_unit: list[np.ndarray] = []
        pair_scene: list[np.ndarray] = []
        sel_units = np.flatnonzero(unit_epsg == epsg)
        order = np.argsort(unit_code[sel_units], kind="stable")
        codes = unit_code[sel_units][order]
        uidx = sel_units[order]
        # WGS84 envelope of this zone's S2 scenes: a cheap prefilter before reprojecting S1 footprints
        cand = _lonlat_overlaps(ll, envs[int(epsg)])
        if not cand.any():
            continue
        fp = np.full((len(s1), 4), np.nan)
        for src in np.unique(src_epsg[cand]):
            m = cand & (src_epsg == src)
            fp[m] = transform_bounds_many(int(src), int(epsg), b_native[m], densify_pts=11)
        ok = np.isfinite(fp).all(axis=1)
        rows = np.flatnonzero(ok[row_scene])
        if not len(rows):
            continue
        spans = cell_spans(fp[row_scene[rows]], cfg.unit_m)
        ncol = spans[:, 1] - spans[:, 0]
        nrow = spans[:, 3] - spans[:, 2]
        count = ncol * nrow
        # chunk the rows so at most ~_S1_CHUNK_PAIRS candidates are expanded at once
        csum = np.cumsum(count)
        start = 0
        while start < len(rows):
            base = csum[start - 1] if start else 0
            stop = max(int(np.searchsorted(csum, base + _S1_CHUNK_PAIRS, side="right")), start + 1)
            sl = slice(start, stop)
            cnt = count[sl]
            total = int(cnt.sum())
            if total:
                rep = np.repeat(np.arange(stop - start), cnt)
                local = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(cnt) - cnt, cnt)
                nr = nrow[sl][rep]
                uc = spans[sl, 0][rep] + local // nr
                ur = spans[sl, 2][rep] + local % nr
                pc = row_period[rows[sl]][rep]
                c = _code(pc, uc, ur)
                pos = np.searchsorted(codes, c)
                pos[pos >= len(codes)] = 0
                hit = codes[pos] == c
                pair_unit.append(pos[hit].astype(np.int32))  # index into this zone's sorted codes
                pair_scene.append(row_scene[rows[sl]][rep[hit]].astype(np.int32))
            start = stop
        if pair_unit:
            _assign(out, uidx, np.concatenate(pair_unit), np.concatenate(pair_scene), s1_arr, matched)
    for i in np.flatnonzero(~matched).tolist():
        rejects.append(
            Reject(
                "scene",
                s1[i].scene_id,
                "no_scenes",
                "no Sentinel-2 unit matches its footprint and date window",
            )
        )
    return out


def _assign(
    out: list, uidx: np.ndarray, pu: np.ndarray, ps: np.ndarray, s1_arr: np.ndarray, matched: np.ndarray
) -> None:
    """Store each unit's S1 tuple in ``out[uidx[u]]`` from (unit, scene) pairs of one zone."""
    counts = np.bincount(pu, minlength=len(uidx))
    # A unit's pairs arrive in scene order (rows are scanned in scene order and a unit lies in one zone),
    # so a stable sort by unit alone gives (unit, datetime, id) order.
    ps = ps[np.argsort(pu, kind="stable")]
    del pu
    matched[ps] = True
    ends = np.cumsum(counts)
    starts = ends - counts
    hit = np.flatnonzero(counts)
    shared: dict[bytes, tuple[Scene, ...]] = {}  # units that see the same S1 scenes share one tuple
    i = 0
    while i < len(hit):  # blocks of units, so the list of scene references stays bounded
        j = int(np.searchsorted(ends[hit], starts[hit[i]] + _S1_CHUNK_PAIRS, side="right"))
        j = max(j, i + 1)
        off = int(starts[hit[i]])
        refs = s1_arr[ps[off : int(ends[hit[j - 1]])]].tolist()  # references only, no new objects
        for u, a, b in zip(
            uidx[hit[i:j]].tolist(), starts[hit[i:j]].tolist(), ends[hit[i:j]].tolist(), strict=True
        ):
            k = ps[a:b].tobytes()
            t = shared.get(k)
            if t is None:
                t = shared[k] = tuple(refs[a - off : b - off])
            out[u] = t
        i = j


def _envelopes(s2: list[Scene]) -> dict[int, tuple[float, float, float, float]]:
    """WGS84 envelope of each zone's S2 scenes (full longitude range if one crosses the antimeridian)."""
    epsg = np.asarray([s.epsg for s in s2], dtype=np.int64)
    ll = np.asarray([s.lonlat_bbox for s in s2], dtype=np.float64).reshape(-1, 4)
    out = {}
    for e in np.unique(epsg).tolist():
        b = ll[epsg == e]
        x0, x1 = (-180.0, 180.0) if (b[:, 0] > b[:, 2]).any() else (b[:, 0].min(), b[:, 2].max())
        out[e] = (float(x0), float(b[:, 1].min()), float(x1), float(b[:, 3].max()))
    return out


def _lonlat_overlaps(ll: np.ndarray, env: tuple[float, float, float, float], pad: float = 1.0) -> np.ndarray:
    """Boxes in ``ll`` (N, 4) overlapping ``env`` padded by ``pad`` degrees; antimeridian ones pass."""
    x0, y0, x1, y1 = env
    wraps = ll[:, 0] > ll[:, 2]
    lat_ok = (ll[:, 1] <= y1 + pad) & (ll[:, 3] >= y0 - pad)
    lon_ok = (ll[:, 0] <= x1 + pad) & (ll[:, 2] >= x0 - pad)
    return lat_ok & (lon_ok | wraps)


def count_samples(units: list[WorkUnit]) -> int:
    """Planned samples: every (unit, tile) pair."""
    return sum(len(u.tiles) for u in units)
