"""Which COG blocks an ingest output needs, and how the S3 requests of the ingest compare with them.

*Needed blocks* come from the output and the COG tile layout, not from what the ingest chose to read:

* for every planned tile, the SCL blocks of every Sentinel-2 scene of its unit that intersect the tile
  (slot selection must look at each candidate's SCL);
* for every written tile, the blocks of the 12 bands of each Sentinel-2 scene in its slots (``sources``,
  the first ``sum(s2_valid)`` entries) that intersect the tile.

A block's byte extent is its TIFF tile ``[BLOCK_OFFSET, BLOCK_OFFSET + BLOCK_SIZE)`` (GDAL's TIFF metadata
domain). Bytes of an object before its first tile of any resolution level are its header and IFDs; a GET
that starts there is a *header GET*, any other GET on a Sentinel-2 COG a *data GET*. Sentinel-1 objects
(warped, so no block-exact need) and everything else (item JSON, sidecars) are counted apart.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import rasterio
from affine import Affine

from bench._s3proxy import Request
from pipeline.config import IngestConfig, StorageConfig
from pipeline.sensors import S2, S2_SCL
from pipeline.storage import gdal_path, rasterio_env


class Block(NamedTuple):
    """A full-resolution tile of one COG: byte ``offset`` and ``size`` of its compressed data."""

    offset: int
    size: int


@dataclass(frozen=True)
class CogLayout:
    """Where the full-resolution blocks of one single-band COG lie; ``data_start``: the first byte of any
    tile of any level (header and IFDs end before it)."""

    href: str
    width: int
    height: int
    block_h: int
    block_w: int
    transform: Affine
    data_start: int
    blocks: Mapping[tuple[int, int], Block]  # (block row, block col) -> bytes

    def blocks_over(self, bounds: tuple[float, float, float, float]) -> set[tuple[int, int]]:
        """``(row, col)`` of the blocks holding a pixel of ``bounds = (x0, y0, x1, y1)`` (raster CRS):
        pixels that overlap it with a positive area, clipped to the raster."""
        x0, y0, x1, y1 = bounds
        inv = ~self.transform
        cols, rows = zip(*(inv @ (x, y) for x in (x0, x1) for y in (y0, y1)), strict=True)
        eps = 1e-6  # a bound on a pixel edge does not take the neighbouring pixel
        c0, c1 = max(math.floor(min(cols) + eps), 0), min(math.ceil(max(cols) - eps), self.width)
        r0, r1 = max(math.floor(min(rows) + eps), 0), min(math.ceil(max(rows) - eps), self.height)
        if c1 <= c0 or r1 <= r0:
            return set()
        return {(r, c) for r in range(r0 // self.block_h, (r1 - 1) // self.block_h + 1)
                for c in range(c0 // self.block_w, (c1 - 1) // self.block_w + 1)}


def _tile_offsets(ds) -> list[int]:
    bh, bw = ds.block_shapes[0]
    return [int(ds.get_tag_item(f"BLOCK_OFFSET_{c}_{r}", "TIFF", bidx=1))
            for r in range(-(-ds.height // bh)) for c in range(-(-ds.width // bw))]


def cog_layout(href: str, storage: StorageConfig) -> CogLayout:
    """The block layout of ``href`` (read with GDAL: header, IFDs and the overview IFDs only)."""
    path = gdal_path(href)
    with rasterio_env(storage), rasterio.open(path) as ds:
        bh, bw = ds.block_shapes[0]
        nr, nc = -(-ds.height // bh), -(-ds.width // bw)
        blocks = {}
        starts = []
        for r in range(nr):
            for c in range(nc):
                off = int(ds.get_tag_item(f"BLOCK_OFFSET_{c}_{r}", "TIFF", bidx=1))
                blocks[(r, c)] = Block(off, int(ds.block_size(1, r, c)))
                if off:  # an all-sparse tile has offset 0 and no bytes
                    starts.append(off)
        for level in range(len(ds.overviews(1))):
            with rasterio.open(path, overview_level=level) as ov:
                starts += [o for o in _tile_offsets(ov) if o]
        return CogLayout(href, ds.width, ds.height, bh, bw, ds.transform, min(starts), blocks)


#: the output columns the needed blocks depend on (not the pixels: a real output is many GB of them)
NEED_COLUMNS = ("sample_id", "x_min", "y_max", "s2_valid", "sources")


def output_rows(path) -> dict:
    """:data:`NEED_COLUMNS` of the shards under ``path`` (a file or a directory): ``sample_id``, ``sources``
    (lists), ``x_min``, ``y_max`` (N,), ``s2_valid`` (N, T)."""
    import numpy as np
    import pyarrow.parquet as pq

    t = pq.read_table(path, columns=list(NEED_COLUMNS))
    n = t.num_rows
    valid = t["s2_valid"].combine_chunks().flatten().to_numpy(zero_copy_only=False)
    return {"sample_id": t["sample_id"].to_pylist(), "sources": t["sources"].to_pylist(),
            "x_min": t["x_min"].to_numpy(), "y_max": t["y_max"].to_numpy(),
            "s2_valid": valid.reshape(n, -1) if n else np.zeros((0, 0), bool)}


def tile_bounds_needed(units: Iterable, rows: Mapping, scenes: Iterable, cfg: IngestConfig
                       ) -> dict[str, list[tuple[float, float, float, float]]]:
    """href -> the tile bounds over which the output needs it: the SCL of every S2 scene of a unit over
    each of the unit's planned tiles; the 12 bands of each S2 scene in a written tile's slots over that tile.
    ``rows``: the output as :func:`output_rows` (or :func:`pipeline.shards.read_shards`) returns it."""
    tm = cfg.tile_m
    by_id = {s.scene_id: s for s in scenes}
    need: dict[str, list[tuple[float, float, float, float]]] = {}
    for u in units:
        for c, r in u.tiles:
            b = (c * tm, r * tm, (c + 1) * tm, (r + 1) * tm)
            for s in u.s2:
                need.setdefault(s.assets[S2_SCL.name].href, []).append(b)
    for i in range(len(rows["sample_id"])):
        x0, y1 = float(rows["x_min"][i]), float(rows["y_max"][i])
        b = (x0, y1 - tm, x0 + tm, y1)
        for sid in rows["sources"][i][: int(rows["s2_valid"][i].sum())]:  # S2 slots come first
            s = by_id[sid]
            for band in S2.bands:
                need.setdefault(s.assets[band.name].href, []).append(b)
    return need


def needed_blocks(need: Mapping[str, Sequence[tuple]], layouts: Mapping[str, CogLayout]
                  ) -> dict[str, set[tuple[int, int]]]:
    """href -> the blocks of its layout under the bounds in ``need`` (:func:`tile_bounds_needed`)."""
    return {href: set().union(*(layouts[href].blocks_over(b) for b in bounds))
            for href, bounds in need.items()}


def _object(href: str) -> tuple[str, str]:
    """``s3://bucket/key`` -> ``(bucket, key)``."""
    bucket, _, key = href.split("://", 1)[1].partition("/")
    return bucket, key


@dataclass(frozen=True)
class RequestFigures:
    """What the S3 requests of one ingest fetched against what its output needs (module docstring).

    ``needed_bytes``: compressed bytes of the needed blocks; ``data_bytes``: body bytes of the S2 COG GETs
    past the headers (a header GET's bytes past ``data_start`` count here too); ``covered_bytes``: needed
    bytes inside some fetched range (equals ``needed_bytes`` when every needed block went over the wire).
    ``data_bytes`` splits into ``covered_bytes``, ``refetched_bytes`` (needed bytes fetched again),
    ``unneeded_bytes`` (full-resolution blocks the output does not need) and ``gap_bytes`` (the rest:
    overview tiles, block leaders/trailers, bytes past the end of the last block).
    """

    cogs: int  # S2 COG objects with a needed block
    needed_blocks: int
    needed_bytes: int
    data_gets: int
    data_bytes: int
    covered_bytes: int
    refetched_bytes: int
    unneeded_bytes: int
    gap_bytes: int
    header_gets: int
    header_bytes: int
    heads: int  # HEAD requests on S2 COGs
    s1_gets: int
    s1_bytes: int
    other_gets: int  # GETs on objects that are not COGs of the archive (items, sidecars, shards)
    failed: int  # responses that were not 2xx

    @property
    def gets_per_block(self) -> float:
        return self.data_gets / max(self.needed_blocks, 1)

    @property
    def bytes_ratio(self) -> float:
        return self.data_bytes / max(self.needed_bytes, 1)

    def lines(self) -> list[str]:
        """The figures as a person reads them."""
        return [
            f"needed: {self.needed_blocks} blocks of {self.cogs} S2 COGs, {self.needed_bytes / 1e6:.2f} MB",
            f"data GETs: {self.data_gets} = {self.gets_per_block:.3f} per needed block (goal <= 1.2)",
            f"data bytes fetched: {self.data_bytes / 1e6:.2f} MB = {self.bytes_ratio:.3f} x needed "
            f"(goal <= 1.1); needed bytes fetched: {self.covered_bytes / max(self.needed_bytes, 1):.3f}",
            f"  of which needed bytes again {self.refetched_bytes / 1e6:.2f} MB, unneeded blocks "
            f"{self.unneeded_bytes / 1e6:.2f} MB, overviews/leaders/gaps {self.gap_bytes / 1e6:.2f} MB",
            f"headers/IFDs: {self.header_gets} GETs, {self.header_bytes / 1e6:.2f} MB; HEAD: {self.heads}",
            f"S1 COGs: {self.s1_gets} GETs, {self.s1_bytes / 1e6:.2f} MB; "
            f"other objects: {self.other_gets} GETs; non-2xx: {self.failed}",
        ]


def _overlap(a: int, b: int, blocks: Iterable[Block]) -> int:
    """Bytes of ``blocks`` inside ``[a, b)``."""
    return sum(max(0, min(b, blk.offset + blk.size) - max(a, blk.offset)) for blk in blocks)


def _covered(ranges: list[tuple[int, int]], blocks: Iterable[Block]) -> int:
    """Bytes of ``blocks`` inside the union of the half-open ``ranges``."""
    merged: list[list[int]] = []
    for a, b in sorted(ranges):
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    total = 0
    for blk in blocks:
        lo, hi = blk.offset, blk.offset + blk.size
        total += sum(max(0, min(hi, b) - max(lo, a)) for a, b in merged)
    return total


def request_figures(requests: Sequence[Request], layouts: Mapping[str, CogLayout],
                    needed: Mapping[str, set[tuple[int, int]]], s1_hrefs: Iterable[str] = ()
                    ) -> RequestFigures:
    """Attribute every recorded request (see the module docstring); ``layouts`` holds every S2 COG of the
    archive (objects with no needed block count too: any GET on them is a data or header GET)."""
    by_obj = {_object(h): lay for h, lay in layouts.items()}
    s1 = {_object(h) for h in s1_hrefs}
    ranges: dict[tuple[str, str], list[tuple[int, int]]] = {}
    n = dict.fromkeys(("data_gets", "data_bytes", "header_gets", "header_bytes", "heads", "s1_gets",
                       "s1_bytes", "other_gets", "failed"), 0)
    for rq in requests:
        obj = (rq.bucket, rq.key)
        if not 200 <= rq.status < 300:
            n["failed"] += 1
        if obj in s1:
            if rq.method == "GET":
                n["s1_gets"] += 1
                n["s1_bytes"] += rq.nbytes
            continue
        lay = by_obj.get(obj)
        if lay is None:
            n["other_gets"] += rq.method == "GET"
            continue
        if rq.method == "HEAD":
            n["heads"] += 1
            continue
        if rq.method != "GET":
            continue
        start, _ = rq.byte_range
        start = start or 0
        head = max(0, min(lay.data_start - start, rq.nbytes))
        n["header_gets" if start < lay.data_start else "data_gets"] += 1
        n["header_bytes"] += head
        n["data_bytes"] += rq.nbytes - head
        ranges.setdefault(obj, []).append((start, start + rq.nbytes))
    need_blocks = {h: [layouts[h].blocks[k] for k in ks] for h, ks in needed.items() if ks}
    covered = sum(_covered(ranges.get(_object(h), []), bs) for h, bs in need_blocks.items())
    fetched_needed = fetched_unneeded = 0  # per GET, so bytes fetched twice count twice
    for obj, rs in ranges.items():
        lay = by_obj[obj]
        want = needed.get(lay.href, set())
        nb = [b for k, b in lay.blocks.items() if k in want]
        ub = [b for k, b in lay.blocks.items() if k not in want]
        for a, b in rs:
            fetched_needed += _overlap(max(a, lay.data_start), b, nb)
            fetched_unneeded += _overlap(max(a, lay.data_start), b, ub)
    return RequestFigures(
        cogs=len(need_blocks),
        needed_blocks=sum(map(len, need_blocks.values())),
        needed_bytes=sum(b.size for bs in need_blocks.values() for b in bs),
        covered_bytes=covered,
        refetched_bytes=fetched_needed - covered,
        unneeded_bytes=fetched_unneeded,
        gap_bytes=n["data_bytes"] - fetched_needed - fetched_unneeded,
        **n,
    )


def archive_layouts(scenes: Iterable, storage: StorageConfig) -> dict[str, CogLayout]:
    """:func:`cog_layout` of every S2 band and SCL asset of ``scenes``."""
    names = [b.name for b in S2.bands] + [S2_SCL.name]
    return {s.assets[k].href: cog_layout(s.assets[k].href, storage)
            for s in scenes if s.sensor == "s2" for k in names if k in s.assets}
