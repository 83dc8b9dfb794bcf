"""The ingest graph: work units -> Ray Data tasks (groups of neighbouring units) -> Parquet shards, then
manifest + rejects.

Per unit (one Ray Data task, :func:`process_unit`), Sentinel-2 in two passes: pass 1 reads each scene's
SCL alone at its native 20 m onto the unit's 20 m grid and measures, per tile, its cloud+shadow and
nodata (SCL 0 or outside the scene) fractions; every tile keeps its best usable slots (least cloudy, then
earliest, then scene id). Pass 2 decodes the 12 bands of the scenes that won a slot — each once, over the
square spanning the tiles that chose it — and copies them at native resolution (shard contract v3: never
resampled on the 20 m lattice, 60 m pixels replicated 3 x 3) into preallocated ``(tiles, T, 4, H, W)``
and ``(tiles, T, 8, H/2, W/2)`` arrays in date order. Scenes that won nothing are never decoded beyond
their SCL, so memory is one scene window plus the output, and decode work follows what is kept. S1 is
read in one pass in date order (least nodata, then date), only for the tiles S2 keeps, each only until it
holds T nodata-free slots (no later scene could change them), over the 2 x 2-tile cells still open. Tiles
without ``min_s2_slots`` usable S2 slots are rejected (``all_cloud`` when some slot failed on cloud only,
else ``all_nodata``); unreadable scenes are rejected at scene level and the unit goes on without them (a
band that fails in pass 2 re-runs the choice without its scene). A scene that is never needed is never
decoded, so its faults go unseen.

Outputs, all written atomically (temp + rename locally, one PUT on S3):

* ``<out>/shards/<unit_id>.parquet`` — rows sorted by sample_id (absent when no tile survived); with
  ``shard_mb > 0`` files of at least ``shard_mb`` MiB (encoded) of a unit group's rows instead, named after
  their first unit (each unit's rows sorted by sample_id and its own row groups, units in the group's order);
* ``<out>/units/<unit_id>.json`` — the unit's sidecar, written *after* its shard: shard size and
  sha256, band sums, tile/scene rejects, bytes read. Its presence means "unit done": a re-run skips
  the unit, and the final manifest is built from sidecars alone (no re-read of pixels);
* ``<out>/manifest.json`` and ``<out>/rejects.parquet`` — rebuilt from the sidecars at the end,
  deterministic, rewritten only when their bytes change.

So an interrupted run, re-run, equals an uninterrupted one, and re-running a finished one writes
nothing. Ray Data settings live in :func:`configure_data_context` and nowhere else.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple

import numpy as np
import pyarrow as pa

from pipeline import shards as S
from pipeline.config import IngestConfig
from pipeline.grid import sample_id as make_sample_id
from pipeline.grid import tile_centres_lonlat
from pipeline.read import GSD, S2Out, SceneReadError, UnitGrid, block_cache, read_s1_scene, read_s2_scene
from pipeline.sensors import S1, S2, SCL_CLOUD, SCL_NODATA
from pipeline.stac import Reject
from pipeline.storage import (
    SpoolFile,
    TransientIOError,
    exists,
    join,
    list_names,
    rasterio_env,
    read_bytes,
    read_many,
    redact,
    write_bytes_atomic,
)

log = logging.getLogger("skyray.ingest")

SHARDS_DIR = "shards"
UNITS_DIR = "units"
MANIFEST = "manifest.json"
REJECTS = "rejects.parquet"


def sidecar_uri(out_uri: str, unit_id: str) -> str:
    return join(out_uri, UNITS_DIR, f"{unit_id}.json")


def shard_relpath(unit_id: str) -> str:
    return f"{SHARDS_DIR}/{unit_id}.parquet"


# ------------------------------------------------------------------------------------ slot selection


class S2Slot(NamedTuple):
    """A usable Sentinel-2 slot of one tile; slots compare as tuples, so smaller is better (least cloudy,
    then earliest, then scene id)."""

    cloud: float  # cloud+shadow fraction of the tile's valid pixels
    when: str  # acquisition datetime, ISO 8601 (UTC)
    scene_id: str
    doy: int
    scene: int  # index of the scene in ``unit.s2``


class S1Slot(NamedTuple):
    """A kept Sentinel-1 slot of one tile; smaller is better (least nodata, then earliest, then scene id)."""

    nodata: float  # nodata fraction of the tile
    when: str
    scene_id: str
    doy: int


def _date_order(key: S2Slot | S1Slot) -> tuple[str, str]:
    """Sort key of a kept slot in the sample: acquisition datetime, then scene id."""
    return key.when, key.scene_id


class _TopSlots:
    """Per tile, the best ``T`` slot keys seen so far (smaller is better); the caller holds the pixels."""

    def __init__(self, n_tiles: int, t: int):
        self.t = t
        self.keys: list[list[S1Slot | None]] = [[None] * t for _ in range(n_tiles)]

    def offer(self, tile: int, key: S1Slot) -> int | None:
        """Slot index to overwrite with a candidate of ``key``, or None if it does not make the top T."""
        ks = self.keys[tile]
        for j, k in enumerate(ks):
            if k is None:
                ks[j] = key
                return j
        worst = max(range(self.t), key=lambda j: ks[j])
        if key < ks[worst]:
            ks[worst] = key
            return worst
        return None

    def date_order(self, tile: int) -> list[int]:
        """Filled slots ordered by date (then scene id), then empty ones."""
        ks = self.keys[tile]
        filled = sorted((j for j in range(self.t) if ks[j] is not None), key=lambda j: _date_order(ks[j]))
        return filled + [j for j in range(self.t) if ks[j] is None]


def _tile_fraction(mask: np.ndarray, offsets: Sequence[tuple[int, int]], h: int) -> np.ndarray:
    """Fraction of True pixels of ``mask (N, N)`` in each tile whose top-left pixel is ``(px, py)``."""
    return _tile_count(mask, offsets, h) / (h * h)


def _tile_count(mask: np.ndarray, offsets: Sequence[tuple[int, int]], h: int) -> np.ndarray:
    return np.array([np.count_nonzero(mask[py : py + h, px : px + h]) for px, py in offsets], np.float64)


def _scene_reject(scene, e: SceneReadError) -> Reject:
    return Reject("scene", scene.scene_id, e.reason, e.detail)


def _doy(scene) -> int:
    return int(scene.datetime.timetuple().tm_yday)


# ------------------------------------------------------------------------------ S2 in two passes


def _s2_candidates(unit, grid: UnitGrid, offsets, cfg: IngestConfig, rejects: list):
    """Pass 1: read every S2 scene's SCL (one uint8 band, on the unit's 20 m grid: each 20 m pixel stands
    for its 2 x 2 10 m pixels, so tile fractions are those at 10 m) and list, per tile, the usable slots as
    :class:`S2Slot` keys — smaller is better.

    A slot is usable when its nodata fraction (SCL 0, or outside the scene) is at most ``max_nodata``
    and its cloud+shadow fraction (SCL 3, 8, 9, 10) of the valid pixels at most ``max_cloud``. Returns
    ``(candidates per tile, failed_on_cloud per tile, decoded bytes)``.
    """
    h, n = cfg.tile_px // 2, grid.size // 2
    offsets = [(px // 2, py // 2) for px, py in offsets]  # on the 20 m grid
    cands: list[list[S2Slot]] = [[] for _ in offsets]
    failed_on_cloud = np.zeros(len(offsets), bool)
    nbytes = 0
    scl = np.zeros((n, n), np.uint8)
    for si, scene in enumerate(unit.s2):
        try:
            nbytes += read_s2_scene(scene, grid, cfg.storage, None, scl)
        except SceneReadError as e:
            rejects.append(_scene_reject(scene, e))
            continue
        nodata_f = _tile_fraction(scl == SCL_NODATA, offsets, h)
        cloud_f = _tile_count(np.isin(scl, SCL_CLOUD), offsets, h) / np.maximum(h * h * (1.0 - nodata_f), 1.0)
        when = scene.datetime.isoformat()
        for i in range(len(offsets)):
            if nodata_f[i] > cfg.max_nodata:
                continue
            if cloud_f[i] > cfg.max_cloud:
                failed_on_cloud[i] = True
                continue
            cands[i].append(S2Slot(float(cloud_f[i]), when, scene.scene_id, _doy(scene), si))
    return cands, failed_on_cloud, nbytes


def _choose(cands: list[list[S2Slot]], t: int, bad: set[int]) -> list[list[S2Slot]]:
    """Per tile the best ``t`` candidates not from a ``bad`` scene, in date order (then scene id)."""
    return [sorted(sorted(k for k in c if k.scene not in bad)[:t], key=_date_order) for c in cands]


def _s2_fill(unit, grid: UnitGrid, offsets, cfg: IngestConfig, cands, out: S2Out, sums: np.ndarray,
             rejects: list):
    """Pass 2: read the bands of every chosen scene once, over the square spanning the tiles that chose
    it, and copy each tile's part into its date-ordered slot of ``out`` (``s10m (tiles, T, 4, H, W)``,
    ``s20m (tiles, T, 8, H/2, W/2)``); ``sums (tiles, T, 3, 12) int64`` receives each filled slot's band
    sums (:func:`pipeline.shards.s2_slot_sums`), taken right after its copy while the slot is in cache.
    Each chosen slot is written whole; the others are left as they are (the caller zeroes those it keeps).

    A scene whose bands turn out unreadable is rejected and the choice is made again without it (its
    slots go to the next candidates). Returns ``(chosen keys per tile, decoded bytes)``.
    """
    h = cfg.tile_px
    bad: set[int] = set()
    nbytes = 0
    while True:
        chosen = _choose(cands, cfg.max_slots, bad)
        users: dict[int, list[tuple[int, int]]] = {}
        for i, keys in enumerate(chosen):
            for j, k in enumerate(keys):
                users.setdefault(k.scene, []).append((i, j))
        failed = False
        for si in sorted(users):
            scene = unit.s2[si]
            xs = [offsets[i][0] for i, _ in users[si]]
            ys = [offsets[i][1] for i, _ in users[si]]
            x0, y0 = min(xs), min(ys)
            side = max(max(xs) - x0, max(ys) - y0) + h
            buf = S2Out(np.empty((len(S.S2_10M_BANDS), side, side), np.uint16),
                        np.empty((len(S.S2_20M_BANDS), side // 2, side // 2), np.uint16))
            try:
                nbytes += read_s2_scene(scene, grid.sub(x0, y0, side), cfg.storage, buf, None)
            except SceneReadError as e:
                rejects.append(_scene_reject(scene, e))
                bad.add(si)
                failed = True
                break
            h2 = h // 2
            for i, j in users[si]:
                px, py = offsets[i][0] - x0, offsets[i][1] - y0  # even: tiles are an even number of px
                out.s10m[i, j] = buf.s10m[:, py : py + h, px : px + h]
                out.s20m[i, j] = buf.s20m[:, py // 2 : py // 2 + h2, px // 2 : px // 2 + h2]
                sums[i, j] = S.s2_slot_sums(out.s10m[i, j], out.s20m[i, j])
        if not failed:
            return chosen, nbytes
        sums.fill(0)  # slots move to other scenes: start again (each chosen slot is then copied whole)


def _kept_tiles(unit, tiles, s2_keys, failed_on_cloud, cfg: IngestConfig, rejects: list) -> list[int]:
    """Indices of the tiles with at least ``min_s2_slots`` usable S2 slots; the others become tile
    rejects (``no_scenes``, ``all_cloud`` when some slot failed on cloud only, else ``all_nodata``)."""
    keep: list[int] = []
    for i, (c, r) in enumerate(tiles):
        n_ok = len(s2_keys[i])
        if n_ok >= cfg.min_s2_slots:
            keep.append(i)
            continue
        sid = make_sample_id(unit.epsg, c, r, unit.period)
        if not unit.s2:
            reason, detail = "no_scenes", "no Sentinel-2 scene covers the unit in the period"
        elif failed_on_cloud[i]:
            reason = "all_cloud"
            detail = f"{n_ok} usable S2 slots (< {cfg.min_s2_slots}); max_cloud={cfg.max_cloud}"
        else:
            reason = "all_nodata"
            detail = f"{n_ok} usable S2 slots (< {cfg.min_s2_slots}); max_nodata={cfg.max_nodata}"
        rejects.append(Reject("tile", sid, reason, detail))
    return keep


# ---------------------------------------------------------------------------------------------- S1


def _saturated(top: _TopSlots, tile: int) -> bool:
    """True when no scene dated after every kept one can enter ``tile``'s top T: all T slots are filled
    with nodata-free slots (a later scene ties on nodata at best and loses on date)."""
    return all(k is not None and k.nodata == 0.0 for k in top.keys[tile])


def _s1_fill(unit, grid: UnitGrid, offsets, cfg: IngestConfig, out: np.ndarray, rejects: list,
             need: Sequence[int]):
    """S1 in one pass, in date order: warp each scene onto the unit grid and keep, for each tile in
    ``need`` (those S2 keeps), the ``T`` slots with the least nodata (then earliest) in
    ``out (tiles, T, 2, H, W)`` (each kept slot written whole, the others left as they are).

    A tile is read only until it is :func:`_saturated` (no later scene could change its slots), and a
    scene only over the cells of a fixed lattice (2 x 2 tiles) that hold such tiles; once every needed
    tile is settled the remaining scenes are never decoded (nor their faults seen).
    Returns ``(slots, decoded bytes)``."""
    h, n = cfg.tile_px, grid.size
    top = _TopSlots(len(offsets), cfg.max_slots)
    nbytes = 0
    if not unit.s1 or not need:
        return top, nbytes
    cell = 2 * h if (n // h) % 2 == 0 else h
    buf = np.zeros((len(S1.bands), n, n), np.float32)
    scenes = sorted(unit.s1, key=lambda s: (s.datetime, s.scene_id))  # plan order; the early stop needs it
    for k, scene in enumerate(scenes):
        todo = [i for i in need if not _saturated(top, i)]
        if not todo:
            log.debug("unit %s: S1 slots settled after %d of %d scenes", unit.unit_id, k, len(scenes))
            break
        cells = sorted({(offsets[i][0] // cell * cell, offsets[i][1] // cell * cell, cell) for i in todo})
        try:
            nbytes += read_s1_scene(scene, grid, cfg.storage, buf, cells)
        except SceneReadError as e:
            rejects.append(_scene_reject(scene, e))
            continue
        when = scene.datetime.isoformat()
        for i in todo:
            px, py = offsets[i]
            tile = buf[:, py : py + h, px : px + h]
            nodata_f = 1.0 - np.count_nonzero(np.isfinite(tile).all(axis=0)) / (h * h)
            if nodata_f > cfg.max_nodata:
                continue
            j = top.offer(i, S1Slot(float(nodata_f), when, scene.scene_id, _doy(scene)))
            if j is not None:
                out[i, j] = tile
    return top, nbytes


# ---------------------------------------------------------------------------------------- one unit


def process_unit(unit, cfg: IngestConfig, out_uri: str) -> dict:
    """Read, select, write one unit's shard and sidecar; returns the sidecar dict.

    Raises :class:`~pipeline.storage.TransientIOError` on storage errors that survived client retries
    (:func:`make_process_unit_fn` re-runs the unit); every data problem ends in a reject instead.
    """
    t0 = time.perf_counter()
    table, sidecar = unit_rows(unit, cfg)
    if table is not None:
        data = S.table_to_parquet(table)
        del table
        write_bytes_atomic(join(out_uri, shard_relpath(unit.unit_id)), data, cfg.storage)
        sidecar["shard"] = {"path": shard_relpath(unit.unit_id), "rows": sidecar["tiles_written"],
                            "bytes": len(data), "sha256": S.sha256(data)}
    write_bytes_atomic(sidecar_uri(out_uri, unit.unit_id), _json_bytes(sidecar), cfg.storage)
    sidecar["seconds"] = time.perf_counter() - t0
    return sidecar


def unit_rows(unit, cfg: IngestConfig):
    """Read and select one unit: ``(its rows as a contract-v3 table sorted by sample_id, or None when no
    tile survived; its sidecar dict with ``shard`` None)``. Writes nothing."""
    h, t = cfg.tile_px, cfg.max_slots
    tile_m = cfg.tile_m
    grid = UnitGrid.from_bounds(unit.epsg, unit.bounds)
    n = grid.size
    # tiles in sample_id order from the start, so rows need no reordering later
    tiles = sorted(unit.tiles, key=lambda cr: make_sample_id(unit.epsg, cr[0], cr[1], unit.period))
    offsets = [
        (int(round((c * tile_m - grid.x_min) / GSD)), int(round((grid.y_max - (r + 1) * tile_m) / GSD)))
        for c, r in tiles
    ]
    for px, py in offsets:
        if not (0 <= px <= n - h and 0 <= py <= n - h):
            raise ValueError(f"unit {unit.unit_id}: tile offset {(px, py)} outside the {n}-px unit")
    nt = len(tiles)
    rejects: list[Reject] = []
    bytes_read = 0

    # every chosen slot is copied whole, so only the empty slots of kept tiles are zeroed (below), not all
    s2_out = S2Out(np.empty((nt, t, len(S.S2_10M_BANDS), h, h), np.uint16),
                   np.empty((nt, t, len(S.S2_20M_BANDS), h // 2, h // 2), np.uint16))
    s1_out = np.empty((nt, t, len(S1.bands), h, h), np.float16)  # kept tiles' empty slots: NaN (below)
    slot_sums = np.zeros((nt, t, 3, len(S2.bands)), np.int64)

    with rasterio_env(cfg.storage):
        # S2 pass 1: the SCL alone decides every tile's candidate slots (cloud, nodata)
        cands, failed_on_cloud, nb = _s2_candidates(unit, grid, offsets, cfg, rejects)
        bytes_read += nb
        # S2 pass 2: bands of the chosen scenes only, each read once over the tiles that chose it
        s2_keys, nb = _s2_fill(unit, grid, offsets, cfg, cands, s2_out, slot_sums, rejects)
        bytes_read += nb
        keep = _kept_tiles(unit, tiles, s2_keys, failed_on_cloud, cfg, rejects)
        for i in keep:  # slots fill from 0 in date order: the rest are empty, all 0 (nodata)
            for a in s2_out:
                a[i, len(s2_keys[i]) :] = 0
        # S1 only for the tiles kept, and only until no later scene could change their slots
        s1_top, nb = _s1_fill(unit, grid, offsets, cfg, s1_out, rejects, keep)
        bytes_read += nb

    ids = [make_sample_id(unit.epsg, tiles[i][0], tiles[i][1], unit.period) for i in keep]
    rows = len(keep)
    s2_sums = S.empty_sums(len(S2.bands), integer=True)
    s1_sums = S.empty_sums(len(S1.bands), integer=False)
    table = shard = None
    if rows:
        meta = {k: np.zeros((rows, t), dt) for k, dt in (("s2_doy", np.int16), ("s2_valid", bool),
                                                         ("s2_cloud", np.float32), ("s1_doy", np.int16),
                                                         ("s1_valid", bool))}
        sources = []
        for out_i, i in enumerate(keep):
            srcs = []
            slots = s1_top.date_order(i)
            if slots != list(range(t)):  # put the kept S1 slots in date order (in place, one tile)
                s1_out[i] = s1_out[i][slots]
                s1_top.keys[i] = [s1_top.keys[i][j] for j in slots]
            s1_out[i, sum(k is not None for k in s1_top.keys[i]) :] = np.nan  # the empty slots: nodata
            for mod, keys in (("s2", s2_keys[i]), ("s1", s1_top.keys[i])):
                for j, k in enumerate(keys):
                    if k is None:
                        continue
                    meta[f"{mod}_doy"][out_i, j] = k.doy
                    meta[f"{mod}_valid"][out_i, j] = True
                    if mod == "s2":
                        meta["s2_cloud"][out_i, j] = k.cloud
                    srcs.append(k.scene_id)
            sources.append(srcs)
        # rows are the kept tiles, already in sample_id order: moved to the front in place when tiles were
        # dropped (keep is increasing), so no second buffer is allocated and page-faulted
        for out_i, i in enumerate(keep):
            if out_i != i:
                for a in (*s2_out, s1_out):
                    a[out_i] = a[i]
        s2_rows = S2Out(*(a[:rows] for a in s2_out))
        s1_rows = s1_out[:rows]
        del s2_out, s1_out, s1_top
        cols = np.array([tiles[i][0] for i in keep])
        rws = np.array([tiles[i][1] for i in keep])
        lon, lat = tile_centres_lonlat(unit.epsg, cols, rws, tile_m)
        table = S.build_table(
            sample_id=ids, epsg=np.full(rows, unit.epsg), x_min=cols * tile_m, y_max=(rws + 1) * tile_m,
            gsd=np.full(rows, GSD), lon=lon, lat=lat, s2_10m=s2_rows.s10m, s2_20m=s2_rows.s20m, s1=s1_rows,
            sources=sources, **meta,
        )
        # slots fill from 0 in date order, so the kept tiles' filled slots are those their keys name
        s2_sums = S.sums_dict(sum(slot_sums[i, : len(s2_keys[i])].sum(axis=0) for i in keep))
        s1_sums = S.s1_band_sums(s1_rows, meta["s1_valid"])
    sidecar = {
        "schema_version": S.SCHEMA_VERSION,
        "unit_id": unit.unit_id,
        "shard": shard,
        "tiles_planned": nt,
        "tiles_written": rows,
        "rejects": [r.to_dict() for r in sorted(rejects, key=lambda r: r.sort_key)],
        "s2_sums": s2_sums,
        "s1_sums": s1_sums,
        "bytes_read": int(bytes_read),
    }
    return table, sidecar


def _json_bytes(d: dict) -> bytes:
    return (json.dumps(d, sort_keys=True, indent=1, allow_nan=False) + "\n").encode()


def make_process_unit_fn(cfg: IngestConfig, out_uri: str, backoff_s: float = 1.0) -> Callable[[dict], dict]:
    """The per-row function of the Ray Data graph: ``{"unit": WorkUnit JSON}`` -> a small summary row.

    Testable without a cluster. A unit whose sidecar already exists is skipped (a retried or
    resumed task writes nothing twice). A :class:`TransientIOError` that outlived the storage
    clients' own retries re-runs the whole unit, up to ``storage.max_retries`` times with exponential
    back-off; then it fails the job (Ray Data also re-runs tasks whose worker died).
    """
    from pipeline.plan import WorkUnit

    def process(row: dict) -> dict:
        unit = WorkUnit.from_json(row["unit"])
        side = sidecar_uri(out_uri, unit.unit_id)
        if exists(side, cfg.storage):
            done = json.loads(read_bytes(side, cfg.storage))
            return _summary_row(done, skipped=True, seconds=0.0)
        done = _with_retries(lambda: process_unit(unit, cfg, out_uri), cfg, backoff_s, f"unit {unit.unit_id}")
        return _summary_row(done, skipped=False, seconds=done["seconds"])

    return process


def _summary_row(side: dict, skipped: bool, seconds: float) -> dict:
    return {
        "unit_id": side["unit_id"],
        "skipped": skipped,
        "tiles_planned": int(side["tiles_planned"]),
        "tiles_written": int(side["tiles_written"]),
        "bytes_read": 0 if skipped else int(side["bytes_read"]),
        # a compacted file is counted once: by the unit it is named after
        "bytes_written": 0 if skipped or not side["shard"] or side["shard"]["path"] != shard_relpath(
            side["unit_id"]) else int(side["shard"]["bytes"]),
        "seconds": float(seconds),
    }


def unit_cell(unit, cfg: IngestConfig) -> tuple[int, int]:
    """``(ucol, urow)`` of a unit on its zone's unit grid (its lower-left corner over ``unit_m``)."""
    return int(round(unit.bounds[0] / cfg.unit_m)), int(round(unit.bounds[1] / cfg.unit_m))


def s2_tile_origin(unit) -> tuple[float, float] | None:
    """The block-grid origin ``(x, y)`` (top-left corner of B02) of the unit's Sentinel-2 tile: the smallest
    of its scenes' (all scenes of one MGRS tile share it; a unit in the overlap of two tiles takes the
    same one every time). None without S2 scenes."""
    origins = [(a.transform[2], a.transform[5]) for a in (s.assets.get("B02") for s in unit.s2) if a]
    return min(origins) if origins else None


def group_units(units: Sequence, g: int | None, cfg: IngestConfig) -> list[list]:
    """Units -> groups of neighbours that one task processes in turn (sharing decoded COG blocks).

    A group holds the units of one zone, period and Sentinel-2 tile (:func:`s2_tile_origin`: the scenes
    whose blocks they share), and with ``g`` only those whose cell lies in one ``g x g`` square of unit
    cells (``(ucol // g, urow // g)``), in serpentine order (rows from south to north, columns alternately
    east- and westwards) so that consecutive units touch the same blocks. A block is shared only by units
    of one tile, so whole-tile groups (``g=None``) decode each once within the cache budget; squares cut
    through blocks, whose neighbouring groups decode them again. Groups are sorted by their key; every
    unit lands in exactly one group.
    """
    squares: dict[tuple, list[tuple[int, int, object]]] = {}
    for u in units:
        c, r = unit_cell(u, cfg)
        origin = s2_tile_origin(u) or (math.inf, math.inf)
        square = (c // g, r // g) if g else (0, 0)
        squares.setdefault((u.epsg, u.period, origin, square), []).append((r, c, u))
    groups = []
    for key in sorted(squares):
        members = sorted(squares[key], key=lambda m: (m[0], m[1]))
        order = []
        for row in sorted({r for r, _, _ in members}):
            cells = [u for r, _, u in members if r == row]
            # the direction follows the row's own parity, so any subset of a group (a resumed one) keeps
            # the order of the whole
            order.extend(reversed(cells) if row % 2 else cells)
        groups.append(order)
    return groups


#: when set (a local directory), each unit group writes ``<dir>/<first unit id>.json``: how many times each
#: COG block was decoded and its bytes (for ``bench/ingest.py``; off in production)
BLOCK_TRACE_ENV = "SKYRAY_BLOCK_TRACE"


#: row groups of compacted shards: at most about this many bytes of rows (in memory) each, and never more
#: than one unit (streaming readers fetch one row group at a time)
ROW_GROUP_BYTES = 64 * 2**20


def make_process_group_fn(cfg: IngestConfig, out_uri: str, backoff_s: float = 1.0) -> Callable[[dict], list]:
    """The per-row function of the Ray Data graph: ``{"units": [WorkUnit JSON, ...]}`` (one group of
    :func:`group_units`) -> one summary row per unit.

    The units run in the given order inside one :func:`~pipeline.read.block_cache` of ``block_cache_mb``,
    so a COG block that several of them need is decoded once (within the budget). The rows' ``bytes_read``
    then counts the bytes actually decoded; sidecars keep the deterministic window bytes, so outputs do not
    depend on grouping or the cache. ``shard_mb = 0``: each unit through :func:`make_process_unit_fn` (its
    own shard). ``shard_mb > 0``: see :func:`_compacting`.
    """
    unit_fn = make_process_unit_fn(cfg, out_uri, backoff_s)
    budget = cfg.block_cache_mb * 2**20

    def process(row: dict) -> list[dict]:
        # one GDAL environment over the group: the cache keeps its rasters open from unit to unit
        with rasterio_env(cfg.storage), block_cache(budget) if budget else contextlib.nullcontext() as cache:
            prune = _pruner(row["units"], cache)
            if cfg.shard_mb:
                rows = _compacting(row["units"], cfg, out_uri, backoff_s, cache, prune)
            else:
                rows = []
                for k, js in enumerate(row["units"]):
                    prune(k)
                    before = (cache.window_bytes, cache.decoded_bytes) if cache else (0, 0)
                    r = unit_fn({"unit": js})
                    if cache is not None and not r["skipped"]:
                        # windows served by the cache are replaced by the blocks it decoded for them
                        r["bytes_read"] += _decoded_extra(cache, before)
                    rows.append(r)
            trace = os.environ.get(BLOCK_TRACE_ENV)
            if trace and cache is not None and row["units"]:
                first = json.loads(row["units"][0])["unit_id"]
                blocks = {"|".join(map(str, k)): [n, cache.sizes[k]] for k, n in cache.decoded.items()}
                os.makedirs(trace, exist_ok=True)
                with open(os.path.join(trace, f"{first}.json"), "w") as f:
                    json.dump(blocks, f)
        return rows

    return process


def _pruner(units_json: Sequence[str], cache) -> Callable[[int], None]:
    """``prune(k)``, called before the group's ``k``-th unit: the cache keeps of its blocks only what the
    units from ``k`` on cover (:meth:`~pipeline.read.BlockCache.keep_within`; the units of a group share
    one zone). In the serpentine order of :func:`group_units` that frees the used half of every block row
    two unit rows share, so a tile's frontier fits the budget at real density."""
    if cache is None or not units_json:
        return lambda k: None
    from pipeline.plan import WorkUnit

    units = [WorkUnit.from_json(js) for js in units_json]
    # the bounds of units[k:] for every k (suffix unions)
    suffix: list[tuple[float, float, float, float]] = [units[-1].bounds] * len(units)
    for k in range(len(units) - 2, -1, -1):
        b, n = units[k].bounds, suffix[k + 1]
        suffix[k] = (min(b[0], n[0]), min(b[1], n[1]), max(b[2], n[2]), max(b[3], n[3]))
    epsg = units[0].epsg
    assert all(u.epsg == epsg for u in units), "a unit group spans one zone (group_units)"

    def prune(k: int) -> None:
        if k:  # nothing is cached before the first unit
            cache.keep_within(suffix[k], epsg)

    return prune


def _decoded_extra(cache, before: tuple[int, int]) -> int:
    """Bytes decoded minus window bytes read through ``cache`` since ``before = (window, decoded)``."""
    return (cache.decoded_bytes - before[1]) - (cache.window_bytes - before[0])


def _with_retries(fn: Callable, cfg: IngestConfig, backoff_s: float, what: str):
    """``fn()``, re-run on :class:`TransientIOError` up to ``storage.max_retries`` times with exponential
    back-off, then raised."""
    retries = cfg.storage.max_retries
    for attempt in range(retries + 1):
        try:
            return fn()
        except TransientIOError as e:
            if attempt == retries:
                raise
            wait = min(backoff_s * 2**attempt, 30.0)
            log.warning("%s: transient storage error (%s); retry %d/%d in %.1f s", what, e, attempt + 1,
                        retries, wait)
            time.sleep(wait)
    raise AssertionError("unreachable")


def _compacting(units_json: Sequence[str], cfg: IngestConfig, out_uri: str, backoff_s: float, cache,
                prune: Callable[[int], None] = lambda k: None) -> list:
    """A group's units in order, their rows encoded into shard files of at least ``shard_mb`` MiB.

    Each unit's rows are appended to the open file as its own row groups (of at most
    ~:data:`ROW_GROUP_BYTES`); once the encoded file reaches ``shard_mb`` MiB (and after the last unit) the
    sidecar of every unit in it is written, each naming the file, then the file itself as
    ``shards/<first unit id>.parquet``. A unit is done only once its file is (:func:`unit_done`), so the
    done units of a group are always its first files: a retried or resumed group starts at a cut and writes
    the same files, byte for byte, as an uninterrupted one (cuts depend only on the units and their rows).
    Memory: one unit's rows; the open file streams to local disk (:class:`~pipeline.storage.SpoolFile`:
    beside its destination, or a temp file for object storage, ~``shard_mb`` + one unit).
    """
    from pipeline.plan import WorkUnit

    target = int(cfg.shard_mb * 2**20)
    out_rows: list[dict] = []
    # (sidecar, seconds, decoded - window bytes) of the units in the open file
    part: list[tuple[dict, float, int]] = []
    # the open file streams into a local spool file (no in-memory buffer regrown and copied as it fills)
    state: dict = {"spool": None, "sink": None, "writer": None, "rows": 0}

    def flush():
        shard = None
        if state["writer"] is not None:
            state["writer"].close()
            state["sink"].close()
            nbytes, digest = state["spool"].digest()
            path = shard_relpath(part[0][0]["unit_id"])
            shard = {"path": path, "rows": state["rows"], "bytes": nbytes, "sha256": digest}
        # the sidecars first, the file last: a unit is done once its sidecar and the file it names both
        # exist (:func:`unit_done`), so a kill anywhere in between leaves every unit of this file to do
        # again from the same cut, never some of them done and the rest written into a second file
        for side, seconds, extra in part:
            side["shard"] = shard
            write_bytes_atomic(sidecar_uri(out_uri, side["unit_id"]), _json_bytes(side), cfg.storage)
            r = _summary_row(side, skipped=False, seconds=seconds)
            r["bytes_read"] += extra  # windows served by the cache -> the blocks it decoded for them
            out_rows.append(r)
        if shard is not None:
            state["spool"].commit()
        part.clear()
        state.update(spool=None, sink=None, writer=None, rows=0)

    try:
        for k, js in enumerate(units_json):
            prune(k)
            unit = WorkUnit.from_json(js)
            side_uri = sidecar_uri(out_uri, unit.unit_id)
            done = json.loads(read_bytes(side_uri, cfg.storage)) if exists(side_uri, cfg.storage) else None
            if done is not None and unit_done(done, out_uri, cfg):
                out_rows.append(_summary_row(done, skipped=True, seconds=0.0))
                continue
            t0 = time.perf_counter()
            before = (cache.window_bytes, cache.decoded_bytes) if cache else (0, 0)
            table, side = _with_retries(lambda unit=unit: unit_rows(unit, cfg), cfg, backoff_s,
                                        f"unit {unit.unit_id}")
            extra = _decoded_extra(cache, before) if cache else 0
            if table is not None:
                if state["writer"] is None:
                    state["spool"] = SpoolFile(join(out_uri, shard_relpath(unit.unit_id)), cfg.storage)
                    state["sink"] = pa.OSFile(state["spool"].path, "wb")  # tell() is what is encoded so far
                    state["writer"] = S.parquet_writer(state["sink"], table.schema)
                per_row = max(1, table.nbytes // table.num_rows)
                state["writer"].write_table(table, row_group_size=max(1, ROW_GROUP_BYTES // per_row))
                state["rows"] += table.num_rows
                del table
            part.append((side, time.perf_counter() - t0, extra))
            if state["sink"] is not None and state["sink"].tell() >= target:
                flush()
        if part:
            flush()
    finally:  # a unit that failed for good leaves no spool file behind (its task is retried from a cut)
        if state["spool"] is not None:
            with contextlib.suppress(Exception):  # the file is dropped whatever state its writer is in
                state["writer"].close()
            state["sink"].close()
            state["spool"].discard()
    return out_rows


# -------------------------------------------------------------------------------------- Ray Data


def configure_data_context(cfg: IngestConfig | None = None):
    """Every Ray Data setting of the ingest and of the benchmark converter (``jobs.convert``), in one place:
    both emit one small summary row per unit of work and write the pixels themselves."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = True
    ctx.enable_operator_progress_bars = True
    ctx.max_errored_blocks = 0  # a unit that keeps failing fails the job: no silent holes
    ctx.execution_options.preserve_order = False
    ctx.execution_options.verbose_progress = False
    # output rows are a few hundred bytes (summaries); no pixel data ever goes through the object store
    ctx.target_max_block_size = 16 * 1024**2
    return ctx


#: units serialised per Ray Data dataset: a unit's JSON is up to ~60 KB, so a 1 M-item plan (~2 M units)
#: goes out in waves instead of ~100 GB of task payloads on the driver at once.
WAVE_UNITS = 20_000


def run_units(units: Sequence, cfg: IngestConfig, out_uri: str, wave_units: int = WAVE_UNITS) -> list[dict]:
    """Process ``units`` with Ray Data: one task per group of neighbouring units (:func:`group_units`,
    ``num_cpus_per_task`` each); one summary row per unit, sorted by unit id."""
    import ray.data

    if not units:
        return []
    configure_data_context(cfg)
    fn = make_process_group_fn(cfg, out_uri)
    groups = group_units(units, cfg.group_units, cfg)
    waves: list[list[list]] = [[]]
    for grp in groups:  # waves of about wave_units units, whole groups each
        if waves[-1] and sum(map(len, waves[-1])) + len(grp) > wave_units:
            waves.append([])
        waves[-1].append(grp)
    rows: list[dict] = []
    for w, wave in enumerate(waves):
        items = [{"units": [u.to_json() for u in grp]} for grp in wave]
        if len(waves) > 1:
            log.info("wave %d/%d: %d groups, %d units", w + 1, len(waves), len(items), sum(map(len, wave)))
        ds = ray.data.from_items(items, override_num_blocks=min(len(items), 10_000))
        ds = ds.flat_map(fn, num_cpus=cfg.num_cpus_per_task, concurrency=cfg.concurrency)
        rows.extend(ds.take_all())
        del items
    return sorted(rows, key=lambda r: r["unit_id"])


def remove_partial_files(out_uri: str, cfg: IngestConfig) -> int:
    """Delete temp files a killed run left behind (local outputs only: on S3 a PUT is all or nothing).

    Must not run while another job writes to the same output. Returns how many were removed.
    """
    from pipeline.storage import filesystem, scheme_of

    if scheme_of(out_uri) != "file":
        return 0
    fs, root = filesystem(out_uri, cfg.storage)
    n = 0
    for sub in (SHARDS_DIR, UNITS_DIR, ""):
        d = os.path.join(root, sub) if sub else root
        if not os.path.isdir(d):
            continue
        for name in os.listdir(d):
            if name.startswith(".") and name.endswith(".tmp"):
                os.unlink(os.path.join(d, name))
                n += 1
    return n


def unit_done(sidecar: dict, out_uri: str, cfg: IngestConfig, shard_names: set[str] | None = None) -> bool:
    """Whether a unit whose sidecar is ``sidecar`` is finished: it wrote no rows, or the shard file its
    sidecar names exists (compacted files are written after the sidecars of their units).
    ``shard_names``: the base names under ``shards/`` when already listed (else one existence check)."""
    shard = sidecar.get("shard")
    if not shard:
        return True
    if shard_names is not None:
        return shard["path"].rsplit("/", 1)[-1] in shard_names
    return exists(join(out_uri, shard["path"]), cfg.storage)


def pending_units(units: Iterable, cfg: IngestConfig, out_uri: str) -> tuple[list, list]:
    """Split planned units into (to do, already done): done when :func:`unit_done` says so of its
    sidecar. Reads only the sidecars that exist (none on a fresh output)."""
    have = {n[: -len(".json")] for n in list_names(join(out_uri, UNITS_DIR), cfg.storage, ".json")}
    units = list(units)
    found = [u for u in units if u.unit_id in have]
    done_ids = set()
    if found:
        shard_names = set(list_names(join(out_uri, SHARDS_DIR), cfg.storage, ".parquet"))
        for i in range(0, len(found), 10_000):  # concurrent GETs on S3, bounded memory
            chunk = found[i : i + 10_000]
            blobs = read_many([sidecar_uri(out_uri, u.unit_id) for u in chunk], cfg.storage)
            done_ids.update(u.unit_id for u, b in zip(chunk, blobs, strict=True)
                            if unit_done(json.loads(b), out_uri, cfg, shard_names))
    todo, done = [], []
    for u in units:
        (done if u.unit_id in done_ids else todo).append(u)
    return todo, done


def check_output_version(out_uri: str, cfg: IngestConfig, done: Sequence) -> None:
    """ValueError if ``out_uri`` already holds shards of another contract version (a resume would mix
    two layouts in one dataset). Looks at the manifest and at one finished unit's sidecar only."""
    found = None
    uri = join(out_uri, MANIFEST)
    if exists(uri, cfg.storage):
        found = json.loads(read_bytes(uri, cfg.storage)).get("schema_version")
    elif done:
        side = json.loads(read_bytes(sidecar_uri(out_uri, done[0].unit_id), cfg.storage))
        found = side.get("schema_version", 1)  # v1 sidecars carried no version
    if found is not None and found != S.SCHEMA_VERSION:
        raise ValueError(f"--output {redact(out_uri)} holds shards of contract v{found}; this ingest writes "
                         f"v{S.SCHEMA_VERSION}: use a new output (or delete the old one) instead of resuming")


# -------------------------------------------------------------------------------------- finalize


def finalize(units: Sequence, cfg: IngestConfig, out_uri: str, upstream_rejects: Iterable = (),
             counts: dict | None = None, extra: dict | None = None) -> dict:
    """Build manifest.json and rejects.parquet from the sidecars of ``units``; write them if changed.

    Returns ``{"manifest": dict, "rejects": pa.Table, "written": [names rewritten]}``.
    """
    uris = [sidecar_uri(out_uri, u.unit_id) for u in sorted(units, key=lambda u: u.unit_id)]
    sidecars = []
    for i in range(0, len(uris), 10_000):  # concurrent GETs on S3, bounded memory
        sidecars += [json.loads(b) for b in read_many(uris[i : i + 10_000], cfg.storage)]
    s2 = S.empty_sums(len(S2.bands), integer=True)
    s1 = S.empty_sums(len(S1.bands), integer=False)
    shard_list, rejects, seen = [], list(upstream_rejects), set()
    planned = written = 0
    for sc in sidecars:
        s2 = S.add_sums(s2, sc["s2_sums"])
        s1 = S.add_sums(s1, sc["s1_sums"])
        if sc["shard"] and sc["shard"]["path"] not in seen:  # the units of a compacted file all name it
            seen.add(sc["shard"]["path"])
            shard_list.append(sc["shard"])
        rejects.extend(Reject.from_dict(d) for d in sc["rejects"])
        planned += sc["tiles_planned"]
        written += sc["tiles_written"]
    table = S.rejects_table(rejects)
    levels, reasons = table["level"].to_pylist(), table["reason"].to_pylist()
    tile_rejects = Counter(r for lv, r in zip(levels, reasons, strict=True) if lv in ("tile", "unit"))
    other_rejects = Counter(f"{lv}:{r}" for lv, r in zip(levels, reasons, strict=True)
                            if lv in ("item", "scene"))
    all_counts = {
        "units": len(sidecars),
        "tiles_planned": planned,
        "tiles_written": written,
        "tiles_rejected": planned - written,
        "rejects_by_reason": dict(sorted(Counter(table["reason"].to_pylist()).items())),
        "tile_rejects_by_reason": dict(sorted(tile_rejects.items())),
        "item_scene_rejects_by_reason": dict(sorted(other_rejects.items())),
        **(counts or {}),
    }
    manifest = S.build_manifest(
        shards=shard_list, s2_sums=s2, s1_sums=s1, tile_px=cfg.tile_px, max_slots=cfg.max_slots,
        config=manifest_config(cfg), counts=all_counts, extra=extra,
    )
    out = {"manifest": manifest, "rejects": table, "written": []}
    for name, data in ((MANIFEST, S.manifest_bytes(manifest)), (REJECTS, S.rejects_to_parquet(table))):
        uri = join(out_uri, name)
        if exists(uri, cfg.storage) and read_bytes(uri, cfg.storage) == data:
            continue
        write_bytes_atomic(uri, data, cfg.storage)
        out["written"].append(name)
    return out


#: config fields that decide how the job runs, not what it writes: left out of the manifest, so re-running
#: with another parallelism or retry budget (e.g. resuming on a bigger cluster) leaves it byte-identical.
EXECUTION_ONLY = {"num_cpus_per_task": True, "concurrency": True, "group_units": True, "block_cache_mb": True,
                  "storage": {"max_retries": True}}


def manifest_config(cfg: IngestConfig) -> dict:
    """The resolved config as stored in the manifest (JSON-safe, no credentials, no execution-only fields)."""
    d = cfg.model_dump(mode="json", exclude=EXECUTION_ONLY)
    if d["storage"].get("endpoint_url"):
        d["storage"]["endpoint_url"] = redact(d["storage"]["endpoint_url"])
    return d


# --------------------------------------------------------------------------------------- summary


def format_summary(summary: dict) -> str:
    """A human-readable table of an ingest summary (see ``jobs.ingest.run``)."""
    rows = [
        ("items", summary["items"]),
        ("scenes (s2 / s1)", f"{summary['scenes_s2']} / {summary['scenes_s1']}"),
        ("units planned / processed / already done", f"{summary['units']} / {summary['units_processed']} / "
                                                     f"{summary['units_skipped']}"),
        ("tiles planned = written + rejected", f"{summary['tiles_planned']} = {summary['tiles_written']} + "
                                               f"{summary['tiles_rejected']}"),
        ("tiles written", summary["tiles_written"]),
        ("tiles rejected", summary["tiles_rejected"]),
    ]
    for reason, n in summary["tile_rejects_by_reason"].items():
        rows.append((f"  tile rejects: {reason}", n))
    for reason, n in summary.get("item_scene_rejects_by_reason", {}).items():
        rows.append((f"  {reason.split(':')[0]} rejects: {reason.split(':')[1]}", n))
    rows += [
        ("bytes read (decoded)", f"{summary['bytes_read'] / 1e6:.1f} MB"),
        ("bytes written", f"{summary['bytes_written'] / 1e6:.1f} MB"),
        ("wall time", f"{summary['seconds']:.1f} s"),
        ("unit task time (sum)", f"{summary.get('task_seconds', 0.0):.1f} s"),
        ("throughput (decoded)", f"{summary['mb_per_s']:.1f} MB/s"),
        ("shards / rows", f"{summary['shards']} / {summary['rows']} under {summary['output']}"),
    ]
    w = max(len(k) for k, _ in rows)
    lines = ["ingest summary", "-" * (w + 20)] + [f"{k:<{w}}  {v}" for k, v in rows]
    return "\n".join(lines)
