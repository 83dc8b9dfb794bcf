"""Read one scene's window covering a work unit onto the unit's grids (10 m, and 20 m for Sentinel-2).

A unit is a square of ``N = unit_tiles * tile_px`` pixels at 10 m whose corners are multiples of
``unit_m`` on the fixed per-UTM-zone grid (:mod:`pipeline.grid`); a caller may also pass a square part of
it (the ingest reads a chosen scene only over the tiles that chose it). For each scene that extent is
read once per band with a single windowed read (GDAL fetches and decodes each touched COG block once:
one HTTP range per block, adjacent ranges merged), never the whole scene, and never one small window
per tile. Results land in caller-owned preallocated arrays, so a unit streams scene by scene in
constant memory.

* Sentinel-2, stored at native resolution (shard contract v3): the 10 m bands land on the unit's 10 m
  grid, the 20 m bands, the 60 m bands and the SCL on its 20 m grid (half the side). A scene on the
  same lattice (every Sentinel-2 tile origin is a multiple of 20 m, and so are unit origins) is never
  resampled: 10 and 20 m pixels are copied, each 60 m pixel is replicated onto its 3 x 3 20 m cells.
  Only a raster off that lattice is resampled (bilinear; SCL nearest) from a window with a one-pixel
  margin. Then harmonised once: ``DN + scene.boa_offset`` on valid pixels, clipped to ``>= 1`` so
  0 stays nodata.
* Sentinel-1: resampled (same zone, separable) or warped (another zone: exact positions on a lattice fixed
  to the unit grid, interpolated between) onto the unit's 10 m grid in numpy, bilinear on float32 linear
  power with GDAL's nodata rule, then ``10 log10(max(p, 1e-5))`` dB; nodata stays NaN.

Every pixel window (Sentinel-2, and Sentinel-1 too) goes through :func:`read_window`: with a
:class:`BlockCache` active (:func:`block_cache`, which the ingest holds open over a group of neighbouring
units) it decodes each COG block whole, once, keeps it decoded within a byte budget and assembles windows
from it, so a block that several units (or both passes of one unit) need is decoded once; it also keeps
the rasters open (up to :data:`MAX_OPEN`) from unit to unit. The ingest crops it to what the units still to
come cover (:meth:`BlockCache.keep_within`), so the budget holds a tile's frontier, not whole blocks.
Without one a window is a plain windowed read of a raster opened for it.

Failures are classified: transient storage errors raise :class:`~pipeline.storage.TransientIOError`
(the Ray task is retried); a missing object raises ``SceneReadError("missing_asset")``; anything
else that GDAL cannot decode (corrupt or truncated COG) raises ``SceneReadError("unreadable_cog")``,
and the caller rejects that scene and goes on with the unit's other scenes.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import rasterio
from affine import Affine
from rasterio.enums import Resampling
from rasterio.errors import RasterioError
from rasterio.warp import reproject
from rasterio.windows import Window

from pipeline.config import StorageConfig
from pipeline.sensors import S1, S1_MIN_POWER, S2, S2_SCL, Band
from pipeline.storage import BadURIError, TransientIOError, check_uri, gdal_path, is_transient, redact

GSD = 10.0
_MISSING = re.compile(r"No such file|does not exist|HTTP response code: 404|NoSuchKey",
                      re.IGNORECASE)


class SceneReadError(Exception):
    """A scene that cannot be used: ``reason`` is a reject reason, ``detail`` is safe to log."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class UnitGrid:
    """A pixel grid of a unit: top-left corner ``(x_min, y_max)``, ``size x size`` pixels of ``gsd`` metres
    (10 m unless taken with :meth:`coarse`)."""

    epsg: int
    x_min: float
    y_max: float
    size: int
    gsd: float = GSD

    @classmethod
    def from_bounds(cls, epsg: int, bounds: tuple[float, float, float, float]) -> UnitGrid:
        x0, y0, x1, y1 = bounds
        w, h = (x1 - x0) / GSD, (y1 - y0) / GSD
        if abs(w - round(w)) > 1e-6 or abs(w - h) > 1e-6 or w < 1:
            raise ValueError(f"unit bounds must be a square of whole 10 m pixels, got {bounds}")
        return cls(epsg, float(x0), float(y1), int(round(w)))

    def sub(self, col: int, row: int, size: int) -> UnitGrid:
        """The ``size x size`` square of this grid whose top-left pixel is ``(col, row)``."""
        return UnitGrid(self.epsg, self.x_min + col * self.gsd, self.y_max - row * self.gsd, size, self.gsd)

    def coarse(self, k: int) -> UnitGrid:
        """The same square with pixels ``k`` times larger (``size / k`` a side; ``size`` must divide)."""
        if self.size % k:
            raise ValueError(f"a {self.size}-px grid has no x{k} coarser grid")
        return UnitGrid(self.epsg, self.x_min, self.y_max, self.size // k, self.gsd * k)

    @property
    def transform(self) -> Affine:
        return Affine(self.gsd, 0.0, self.x_min, 0.0, -self.gsd, self.y_max)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        e = self.size * self.gsd
        return (self.x_min, self.y_max - e, self.x_min + e, self.y_max)


class S2Out(NamedTuple):
    """Where a Sentinel-2 scene's bands land: ``s10m (4, N, N)`` B02 B03 B04 B08 on the unit's 10 m grid,
    ``s20m (8, N/2, N/2)`` B01 B05 B06 B07 B8A B09 B11 B12 on its 20 m grid (uint16 DN)."""

    s10m: np.ndarray
    s20m: np.ndarray


def _classify(exc: BaseException, what: str) -> Exception:
    msg = redact(str(exc)) if "://" in str(exc) else str(exc)
    if is_transient(exc):
        return TransientIOError(f"{what}: {msg}")
    if _MISSING.search(msg):
        return SceneReadError("missing_asset", f"{what}: {msg}")
    return SceneReadError("unreadable_cog", f"{what}: {msg}")


def _open(href: str, storage: StorageConfig, what: str):
    try:
        check_uri(href, storage)
    except BadURIError as e:
        raise SceneReadError("bad_uri", f"{what}: {e}") from None
    try:
        ds = rasterio.open(gdal_path(href))
    except (RasterioError, OSError) as e:
        raise _classify(e, what) from None
    if ds.crs is None:
        ds.close()
        raise SceneReadError("missing_crs", f"{what}: raster has no CRS")
    return ds


class BlockKey(NamedTuple):
    """One decoded COG block: the raster (as opened), its band, block row and column."""

    path: str
    band: int
    row: int
    col: int


#: source pixels :meth:`BlockCache.keep_within` keeps beyond the units' bounds: the readers reach at most one
#: pixel past them (a 60 m pixel straddling a unit edge, the one-pixel margin of a resampled window, the
#: taps of a same-zone Sentinel-1 warp); anything farther is decoded again, never read wrong
KEEP_MARGIN_PX = 2


class _Geo(NamedTuple):
    """What :meth:`BlockCache.keep_within` needs of a raster: its transform, EPSG code and block shape."""

    transform: Affine
    epsg: int | None
    block: tuple[int, int]


class BlockCache:
    """Decoded COG blocks, least recently used evicted beyond ``budget_bytes``; counts what it decodes.

    An entry is ``(pixels, row offset, col offset)``: the whole block, or the part of it that
    :meth:`keep_within` kept (the rest of the block no unit still to come needs). ``decoded`` counts
    decodes per block (a block evicted, or cropped, and needed again counts twice) and ``sizes`` holds
    their pixel bytes; ``decoded_bytes`` sums the pixel bytes decoded, ``hit_bytes`` those served from
    memory, ``window_bytes`` those of the windows read through the cache.
    """

    def __init__(self, budget_bytes: int):
        self.budget = int(budget_bytes)
        self.blocks: OrderedDict[BlockKey, tuple[np.ndarray, int, int]] = OrderedDict()
        self.nbytes = 0
        self.decoded: dict[BlockKey, int] = {}
        self.sizes: dict[BlockKey, int] = {}
        self.decoded_bytes = 0
        self.hit_bytes = 0
        self.window_bytes = 0
        #: open rasters by href, least recently used closed beyond :data:`MAX_OPEN`: a group's units read the
        #: same COGs, and opening one (header, IFDs, CRS) costs about as much CPU as decoding a block
        self.datasets: OrderedDict[str, Any] = OrderedDict()
        #: georeferencing of every raster a block was decoded from (kept after the raster is closed)
        self.geo: dict[str, _Geo] = {}

    def georef(self, ds) -> _Geo:
        """``ds``'s :class:`_Geo`, looked up once per raster (PROJ's EPSG match: 25 µs alone, but 3 % of a
        unit group when it was asked on every band read)."""
        geo = self.geo.get(ds.name)
        if geo is None:
            geo = self.geo[ds.name] = _Geo(ds.transform, ds.crs.to_epsg(), tuple(ds.block_shapes[0]))
        return geo

    def dataset(self, href: str, storage: StorageConfig, what: str):
        """The open raster of ``href`` (:func:`_open`d on first use, then kept open)."""
        ds = self.datasets.get(href)
        if ds is not None:
            self.datasets.move_to_end(href)
            return ds
        ds = self.datasets[href] = _open(href, storage, what)
        while len(self.datasets) > MAX_OPEN:
            self.datasets.popitem(last=False)[1].close()
        return ds

    def close(self) -> None:
        while self.datasets:
            self.datasets.popitem()[1].close()

    def get(self, ds, key: BlockKey, rows: tuple[int, int], cols: tuple[int, int]
            ) -> tuple[np.ndarray, int, int]:
        """``(pixels, row offset, col offset)`` of block ``key`` holding at least its block-relative
        ``rows x cols`` (half-open ranges): from memory when the entry holds them, else decoded whole."""
        hit = self.blocks.get(key)
        if hit is not None:
            blk, oy, ox = hit
            h, w = blk.shape
            if oy <= rows[0] and rows[1] <= oy + h and ox <= cols[0] and cols[1] <= ox + w:
                self.blocks.move_to_end(key)
                self.hit_bytes += (rows[1] - rows[0]) * (cols[1] - cols[0]) * blk.itemsize
                return hit
            self._drop(key)  # cropped too far for this read (a reader outside the units' bounds)
        self.georef(ds)
        blk = decode_block(ds, key)
        self.decoded[key] = self.decoded.get(key, 0) + 1
        self.sizes[key] = blk.nbytes
        self.decoded_bytes += blk.nbytes
        self.blocks[key] = entry = (blk, 0, 0)
        self.nbytes += blk.nbytes
        while self.nbytes > self.budget and len(self.blocks) > 1:
            _, (old, _, _) = self.blocks.popitem(last=False)
            self.nbytes -= old.nbytes
        return entry

    def _drop(self, key: BlockKey) -> None:
        self.nbytes -= self.blocks.pop(key)[0].nbytes

    def keep_within(self, bounds: tuple[float, float, float, float], epsg: int,
                    margin_px: int = KEEP_MARGIN_PX) -> int:
        """Crop every cached block of a north-up raster in ``epsg`` to ``bounds`` (``xmin, ymin, xmax, ymax``:
        what the units still to come cover) widened by ``margin_px`` of its own pixels, and drop those
        outside; returns the bytes freed. Rasters in another CRS are left whole.

        A group of units sweeps its Sentinel-2 tile row by row, so a block row that two unit rows share
        would otherwise be held whole from the first to the second: about half of it is already used. Only
        memory changes: a read that needs a dropped part decodes the block again (:meth:`get`).
        """
        freed = 0
        for key, (blk, oy, ox) in list(self.blocks.items()):
            g = self.geo.get(key.path)
            if g is None or g.epsg != epsg:
                continue
            t = g.transform
            if t.b != 0 or t.d != 0 or t.a <= 0 or t.e >= 0:  # not north-up
                continue
            # bounds in raster pixels (half-open, widened), then relative to the block's corner
            c_lo = math.floor((bounds[0] - t.c) / t.a + 1e-6) - margin_px
            c_hi = math.ceil((bounds[2] - t.c) / t.a - 1e-6) + margin_px
            r_lo = math.floor((t.f - bounds[3]) / -t.e + 1e-6) - margin_px
            r_hi = math.ceil((t.f - bounds[1]) / -t.e - 1e-6) + margin_px
            by, bx = key.row * g.block[0], key.col * g.block[1]
            ys, ye = max(oy, r_lo - by), min(oy + blk.shape[0], r_hi - by)
            xs, xe = max(ox, c_lo - bx), min(ox + blk.shape[1], c_hi - bx)
            if ye <= ys or xe <= xs:
                freed += blk.nbytes
                self._drop(key)
            elif (ys, ye, xs, xe) != (oy, oy + blk.shape[0], ox, ox + blk.shape[1]):
                part = blk[ys - oy : ye - oy, xs - ox : xe - ox].copy()  # a view would keep the whole block
                freed += blk.nbytes - part.nbytes
                self.nbytes -= blk.nbytes - part.nbytes
                self.blocks[key] = (part, ys, xs)  # keeps its place in the LRU order
        return freed


_CACHE: BlockCache | None = None

#: rasters a :class:`BlockCache` keeps open at most (a tile-period at real density reads ~300 COGs)
MAX_OPEN = 512

#: GDAL's own block cache (MiB) while a :class:`BlockCache` is active: GDAL keeps the blocks of open rasters
#: (up to 5 % of RAM by default), which would hold every block a second time next to the decoded ones here
GDAL_CACHE_MB = 64


@contextlib.contextmanager
def _dataset(href: str, storage: StorageConfig, what: str) -> Iterator[Any]:
    """The raster of ``href``: the active :class:`BlockCache`'s open one, else opened and closed here."""
    if _CACHE is not None:
        yield _CACHE.dataset(href, storage, what)
        return
    with _open(href, storage, what) as ds:
        yield ds


def raster_epsg(ds) -> int | None:
    """The EPSG code of ``ds``'s CRS (None if it has none): the active :class:`BlockCache`'s, looked up once
    per raster, else asked of PROJ."""
    return _CACHE.georef(ds).epsg if _CACHE is not None else ds.crs.to_epsg()


@contextlib.contextmanager
def block_cache(budget_bytes: int) -> Iterator[BlockCache]:
    """Within the block, every :func:`read_window` of this process shares one :class:`BlockCache`
    (dropped at the end, so memory is bounded by the budget and nothing leaks between groups)."""
    global _CACHE
    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB):
        prev, _CACHE = _CACHE, BlockCache(budget_bytes)
        try:
            yield _CACHE
        finally:
            _CACHE.close()
            _CACHE = prev


def decode_block(ds, key: BlockKey) -> np.ndarray:
    """Decode one whole block of ``ds`` (GDAL reads and inflates exactly that tile)."""
    bh, bw = ds.block_shapes[key.band - 1]
    r0, c0 = key.row * bh, key.col * bw
    return ds.read(key.band, window=Window(c0, r0, min(bw, ds.width - c0), min(bh, ds.height - r0)))


def read_window(ds, win: Window, out: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """Band 1 of ``ds`` over ``win`` (inside the raster) -> ``(pixels, the window's pixel bytes)``; into
    ``out`` when given (C-contiguous, the raster's dtype). Through the active :class:`BlockCache` if any
    (which counts the bytes actually decoded), else one windowed read."""
    cache = _CACHE
    if cache is None:
        data = ds.read(1, window=win, out=out) if out is not None else ds.read(1, window=win)
        return data, data.nbytes
    c0, r0, w, h = int(win.col_off), int(win.row_off), int(win.width), int(win.height)
    data = out if out is not None else np.empty((h, w), ds.dtypes[0])
    bh, bw = ds.block_shapes[0]
    for br in range(r0 // bh, (r0 + h - 1) // bh + 1):
        for bc in range(c0 // bw, (c0 + w - 1) // bw + 1):
            # the part of block (br, bc) inside the window, in window and in block coordinates
            y0, x0 = br * bh, bc * bw
            ys, ye = max(r0, y0), min(r0 + h, y0 + bh)
            xs, xe = max(c0, x0), min(c0 + w, x0 + bw)
            blk, oy, ox = cache.get(ds, BlockKey(ds.name, 1, br, bc), (ys - y0, ye - y0), (xs - x0, xe - x0))
            y0, x0 = y0 + oy, x0 + ox  # the entry's corner
            data[ys - r0 : ye - r0, xs - c0 : xe - c0] = blk[ys - y0 : ye - y0, xs - x0 : xe - x0]
    cache.window_bytes += data.nbytes
    return data, data.nbytes


def _replication(ds_transform: Affine, grid: UnitGrid) -> tuple[int, int, int] | None:
    """``(col, row, k)`` when a north-up raster of pixels ``k`` (a whole number) times the grid's shares its
    lattice: its pixel ``(c, r)`` covers exactly the grid pixels ``col + c*k ... + k - 1`` (rows alike), with
    ``(col, row)`` the grid's top-left corner in raster pixels of the grid's size. Else None."""
    t, g = ds_transform, grid.gsd
    if t.b != 0 or t.d != 0 or not math.isclose(t.a, -t.e):
        return None
    k = t.a / g
    if k < 1 - 1e-9 or abs(k - round(k)) > 1e-9:
        return None
    c, r = (grid.x_min - t.c) / g, (t.f - grid.y_max) / g
    if abs(c - round(c)) > 1e-6 or abs(r - round(r)) > 1e-6:
        return None
    return int(round(c)), int(round(r)), int(round(k))


def _copy_replicated(ds, grid: UnitGrid, rep: tuple[int, int, int], out: np.ndarray, nodata,
                     src_nodata) -> int:
    """The overlapping part of ``ds`` onto ``out``, each raster pixel copied onto its ``k x k`` grid pixels
    (``k = 1``: a plain copy, decoded straight into ``out`` when it can), grid pixels outside it ``nodata``;
    returns decoded bytes."""
    c0, r0, k = rep
    n = grid.size
    # overlap in grid pixels, in the raster's frame (raster pixel i covers [i*k, i*k + k))
    cs, rs = max(c0, 0), max(r0, 0)
    ce, re_ = min(c0 + n, ds.width * k), min(r0 + n, ds.height * k)
    if ce <= cs or re_ <= rs:
        out.fill(nodata)
        return 0
    if (cs, rs, ce, re_) != (c0, r0, c0 + n, r0 + n):  # grid pixels outside the raster
        out.fill(nodata)
    dst = out[rs - r0 : re_ - r0, cs - c0 : ce - c0]
    dtype = np.dtype(ds.dtypes[0])
    if k == 1:
        win = Window(cs, rs, ce - cs, re_ - rs)
        if dst.flags.c_contiguous and dst.dtype == dtype:
            data, nbytes = read_window(ds, win, out=dst)  # no temporary, no copy
        else:
            data, nbytes = read_window(ds, win)
            dst[...] = data
        src = data
    else:
        scs, srs = cs // k, rs // k
        win = Window(scs, srs, -(-ce // k) - scs, -(-re_ // k) - srs)
        data, nbytes = read_window(ds, win)
        big = data.repeat(k, 0).repeat(k, 1)  # (rows * k, cols * k): each pixel on its k x k cells
        src = big[rs - srs * k : re_ - srs * k, cs - scs * k : ce - scs * k]
        dst[...] = src
    if src_nodata is not None and not _same_nodata(src_nodata, nodata):
        dst[_is_nodata(src, src_nodata)] = nodata
    return nbytes


def _read_band(ds, grid: UnitGrid, resampling: Resampling, out: np.ndarray, nodata: float,
               src_nodata: float | None = None, exact: bool = False) -> int:
    """Read band 1 of ``ds`` (same CRS as the grid) onto ``grid`` into ``out`` (size x size); returns
    decoded bytes. Source ``src_nodata`` (default: the raster's) and pixels outside it become ``nodata``.
    ``exact=True`` replicates the pixels of coarser rasters on the lattice instead of resampling them.

    Rasters on the grid's lattice are copied (pixels a whole number of times the grid's replicated onto
    the grid pixels they cover); other north-up rasters of pixels at least the grid's are resampled with
    :func:`upsample` (GDAL's answer, faster); anything else goes through ``rasterio.warp.reproject``.
    """
    n = grid.size
    src_nodata = ds.nodata if src_nodata is None else src_nodata
    rep = _replication(ds.transform, grid)
    if rep is not None and (rep[2] == 1 or exact):
        return _copy_replicated(ds, grid, rep, out, nodata, src_nodata)  # fills only what it does not copy
    out.fill(nodata)
    inv = ~ds.transform
    x0, y0, x1, y1 = grid.bounds
    cols, rows = zip(*(inv @ (x, y) for x in (x0, x1) for y in (y0, y1)), strict=True)
    cs = max(int(math.floor(min(cols))) - 1, 0)
    rs = max(int(math.floor(min(rows))) - 1, 0)
    ce = min(int(math.ceil(max(cols))) + 1, ds.width)
    re_ = min(int(math.ceil(max(rows))) + 1, ds.height)
    if ce <= cs or re_ <= rs:
        return 0
    win = Window(cs, rs, ce - cs, re_ - rs)
    data, nbytes = read_window(ds, win)
    src_nodata = nodata if src_nodata is None else src_nodata
    factor = _scale_factor(ds.transform, grid.gsd)
    if factor and resampling in (Resampling.bilinear, Resampling.nearest):
        # the grid's top-left corner in window pixel units; only output pixels whose centre lies in the
        # window can get a value, so resample just that rectangle (edge units: the rest stays nodata)
        off_r, off_c = min(rows) - rs, min(cols) - cs
        r0, r1 = _covered(n, factor, off_r, win.height)
        c0, c1 = _covered(n, factor, off_c, win.width)
        if r1 > r0 and c1 > c0:
            upsample(data, factor, (off_r + r0 / factor, off_c + c0 / factor), out[r0:r1, c0:c1],
                     src_nodata, nodata, resampling)
        return nbytes
    reproject(
        source=data,
        destination=out,
        src_transform=ds.window_transform(win),
        src_crs=ds.crs,
        src_nodata=src_nodata,
        dst_transform=grid.transform,
        dst_crs=ds.crs,
        dst_nodata=nodata,
        resampling=resampling,
        num_threads=1,
    )
    return nbytes


def _covered(n_out: int, factor: float, off: float, n_src: int) -> tuple[int, int]:
    """Output pixels ``[j0, j1)`` whose centre ``off + (j + 0.5) / factor`` lies in ``[0, n_src)``."""
    u = off + (np.arange(n_out) + 0.5) / factor
    idx = np.flatnonzero((u >= 0) & (u < n_src))
    return (int(idx[0]), int(idx[-1]) + 1) if idx.size else (0, 0)


def _scale_factor(t: Affine, gsd: float = GSD) -> float | None:
    """``k = pixel / gsd`` when ``t`` is north-up with square pixels of at least ``gsd``, else None
    (downsampling would need GDAL's widened kernels)."""
    if t.b != 0 or t.d != 0 or not math.isclose(t.a, -t.e):
        return None
    k = t.a / gsd
    return k if k >= 1 - 1e-9 else None


def _same_nodata(a, b) -> bool:
    return (a != a and b != b) or a == b  # NaN-aware


def _is_nodata(data: np.ndarray, nodata) -> np.ndarray:
    if np.issubdtype(data.dtype, np.floating):
        return ~np.isfinite(data) if nodata != nodata else (data == nodata) | ~np.isfinite(data)
    return data == nodata


def _axis(n_out: int, factor: int, off: float, n_src: int) -> tuple[np.ndarray, ...]:
    """Bilinear taps along one axis: output pixel j has its centre at source coordinate
    ``u = off + (j + 0.5) / factor`` (pixel units, source pixel i spans [i, i + 1)); it blends source pixels
    ``i0 = floor(u - 0.5)`` and ``i0 + 1`` with weight ``f = u - 0.5 - i0`` on the second, taps clamped
    to the source (edge pixels extend to the border). ``inside``: centre within the source."""
    u = off + (np.arange(n_out) + 0.5) / factor
    i0 = np.floor(u - 0.5).astype(np.int64)
    f = (u - 0.5 - i0).astype(np.float32)
    inside = (u >= 0) & (u < n_src)
    return np.clip(i0, 0, n_src - 1), np.clip(i0 + 1, 0, n_src - 1), f, inside


def upsample(src: np.ndarray, factor: float, offset: tuple[float, float], out: np.ndarray, src_nodata,
             dst_nodata, resampling: Resampling) -> None:
    """Resample ``src`` (pixels ``factor >= 1`` times the output's, same CRS, north-up) onto ``out`` whose
    top-left corner lies at ``offset = (row, col)`` in source pixel units — what ``reproject`` does for
    such grids, in numpy (separable, a few passes instead of GDAL's per-pixel warper).

    Bilinear: separable, nodata taps get weight 0 and the rest are renormalised (GDAL's rule), rounded
    to nearest for integer outputs; nearest: the source pixel holding the centre. Outside the source:
    ``dst_nodata``.
    """
    n_r, n_c = out.shape
    r0, r1, fr, in_r = _axis(n_r, factor, offset[0], src.shape[0])
    c0, c1, fc, in_c = _axis(n_c, factor, offset[1], src.shape[1])
    inside = in_r[:, None] & in_c[None, :]
    # the source pixel holding each output centre
    ri = np.floor(offset[0] + (np.arange(n_r) + 0.5) / factor).astype(np.int64)
    ci = np.floor(offset[1] + (np.arange(n_c) + 0.5) / factor).astype(np.int64)
    ri, ci = np.clip(ri, 0, src.shape[0] - 1), np.clip(ci, 0, src.shape[1] - 1)
    if resampling == Resampling.nearest:
        vals = src[np.ix_(ri, ci)]
        if src_nodata is not None:
            inside &= ~_is_nodata(vals, src_nodata)
        np.copyto(out, np.where(inside, vals, dst_nodata).astype(out.dtype, copy=False))
        return
    a = src.astype(np.float32)
    valid = None if src_nodata is None else ~_is_nodata(src, src_nodata)
    wv = None
    if valid is not None and not valid.all():
        inside &= valid[np.ix_(ri, ci)]  # GDAL: no output where the centre's own source pixel is nodata
        a[~valid] = 0
        wv = _separable(valid.astype(np.float32), r0, r1, fr, c0, c1, fc)
    v = _separable(a, r0, r1, fr, c0, c1, fc)
    if wv is not None:
        ok = wv > 1e-6
        np.divide(v, wv, out=v, where=ok)
        inside &= ok
    if np.issubdtype(out.dtype, np.integer):
        info = np.iinfo(out.dtype)
        v += 0.5  # round half up, as GDAL: floor(v + 0.5)
        if info.min < 0 or src.dtype != out.dtype:
            np.floor(v, out=v)
            np.clip(v, info.min, info.max, out=v)
        # else: bilinear weights are convex, so v lies in the source's (unsigned) range and the cast's
        # truncation of the non-negative v + 0.5 is the floor: two passes saved
    if inside.all():
        np.copyto(out, v, casting="unsafe")
    else:
        np.copyto(out, v, casting="unsafe", where=inside)
        out[~inside] = dst_nodata


def _separable(a: np.ndarray, r0, r1, fr, c0, c1, fc) -> np.ndarray:
    """Two-tap interpolation along columns (on the smaller source rows first), then along rows."""
    t = np.take(a, c0, axis=1)
    t *= 1 - fc
    t1 = np.take(a, c1, axis=1)
    t1 *= fc
    t += t1  # (src rows, out cols)
    v = t[r0]
    v *= (1 - fr)[:, None]
    v1 = t[r1]
    v1 *= fr[:, None]
    v += v1  # (out rows, out cols)
    return v


def _band_href(scene, band: Band) -> str:
    ref = scene.assets.get(band.name)
    if ref is None:
        raise SceneReadError("missing_asset", f"{scene.scene_id}: no asset for band {band.name}")
    return ref.href


def read_s2_scene(scene, grid: UnitGrid, storage: StorageConfig, out: S2Out | None,
                  scl: np.ndarray | None) -> int:
    """Read the S2 bands and/or the SCL of ``scene`` onto ``grid`` (10 m) and its 20 m grid, harmonised;
    returns decoded bytes.

    ``out`` (:class:`S2Out`) receives DN (0 = nodata) in the pre-04.00 convention: the scene's
    ``boa_offset`` is added to valid pixels exactly once and results are clipped to ``[1, 65535]``.
    ``scl (N/2, N/2) uint8`` receives the scene classification on the 20 m grid (0 = nodata). Either may
    be None to skip it (the ingest selects slots from the SCL alone, then reads the bands of chosen scenes).
    On the 20 m lattice nothing is resampled (see the module docstring).
    """
    if scene.epsg != grid.epsg:
        msg = f"{scene.scene_id}: EPSG:{scene.epsg} is not the unit's {grid.epsg}"
        raise SceneReadError("unreadable_cog", msg)
    g20 = grid.coarse(2)
    jobs: list[tuple[Band, UnitGrid, np.ndarray]] = []
    if out is not None:
        i10 = i20 = 0
        for band in S2.bands:
            if band.resolution_m == 10:
                jobs.append((band, grid, out.s10m[i10]))
                i10 += 1
            else:
                jobs.append((band, g20, out.s20m[i20]))
                i20 += 1
    if scl is not None:
        jobs.append((S2_SCL, g20, scl))
    nbytes = 0
    for band, g, target in jobs:
        href = _band_href(scene, band)
        what = f"{scene.scene_id} {band.name}"
        buf = target if target.dtype == np.uint16 else np.empty(target.shape, np.uint16)
        with _dataset(href, storage, what) as ds:  # open errors are classified by _open
            try:
                if raster_epsg(ds) != grid.epsg:
                    raise SceneReadError("unreadable_cog", f"{what}: raster CRS {ds.crs} is not {grid.epsg}")
                nbytes += _read_band(ds, g, Resampling[band.resampling], buf, 0, exact=True)
            except (RasterioError, OSError) as e:
                raise _classify(e, what) from None
        if buf is not target:
            np.copyto(target, buf, casting="unsafe")
    if scene.boa_offset and out is not None:
        harmonise(out.s10m, scene.boa_offset)
        harmonise(out.s20m, scene.boa_offset)
    return nbytes


def harmonise(dn: np.ndarray, offset: int) -> None:
    """In place: ``dn + offset`` on valid (non-zero) pixels, clipped to ``[1, 65535]`` (0 stays nodata).

    In uint16 throughout. A negative offset (every baseline since 04.00) takes three passes and no mask:
    ``min(max(dn, 1 - offset) + offset, dn)``, where the ``min`` is ``dn`` only for ``dn = 0`` (any valid
    ``dn`` is at least the clipped result). A positive one: ``min(dn, 65535 - offset) + offset``, then the
    nodata zeros are put back.
    """
    off = int(offset)
    if off == 0:
        return
    tmp = np.empty(dn.shape[1:], np.uint16) if off < 0 else None
    for b in range(dn.shape[0]):
        band = dn[b]
        if off < 0:
            np.maximum(band, 1 - off, out=tmp)
            tmp -= np.uint16(-off)
            np.minimum(tmp, band, out=band)
        else:
            zero = band == 0
            np.minimum(band, 65535 - off, out=band)
            band += np.uint16(off)
            band[zero] = 0


def read_s1_scene(scene, grid: UnitGrid, storage: StorageConfig, out: np.ndarray,
                  cells: Sequence[tuple[int, int, int]] | None = None) -> int:
    """Warp VV and VH of ``scene`` onto ``grid`` (bilinear, linear power) and convert to dB.

    ``out (2, N, N) float32`` receives dB, NaN where there is no data. ``cells``: the ``(col, row, side)``
    pixel squares of the grid to fill (default: the whole grid); pixels outside them may or may not change.
    Non-overlapping cells that tile a square are read in one go, others cell by cell. A same-zone scene is
    resampled in numpy (separable); a scene in another UTM zone is warped in numpy too (:func:`_warp_taps`:
    exact source positions on a fixed lattice of the unit grid, interpolated in between, one map for both
    bands), so either way a pixel does not depend on which cells are read. Returns the pixel bytes of the
    source windows read.
    """
    n = grid.size
    cells = [(0, 0, n)] if cells is None else list(cells)
    if not cells:
        return 0
    c0, r0 = min(c for c, _, _ in cells), min(r for _, r, _ in cells)
    side = max(max(c + k for c, _, k in cells) - c0, max(r + k for _, r, k in cells) - r0)
    if c0 + side <= n and r0 + side <= n and sum(k * k for *_, k in cells) == side * side:
        squares = [(c0, r0, side)]  # the cells tile their bounding square: resample it in one go
    else:
        squares = cells
    nbytes = 0
    taps: dict[tuple[int, int, int], _WarpTaps | None] = {}
    for i, band in enumerate(S1.bands):
        href = _band_href(scene, band)
        what = f"{scene.scene_id} {band.name}"
        ref = scene.assets[band.name]
        with _dataset(href, storage, what) as ds:  # open errors are classified by _open
            try:
                src_nodata = ref.nodata if ref.nodata is not None else ds.nodata
                if raster_epsg(ds) == grid.epsg and _scale_factor(ds.transform, grid.gsd):
                    # same zone: separable bilinear in numpy (GDAL's answer, several times faster)
                    for c, r, k in squares:
                        dst = out[i, r : r + k, c : c + k]
                        nbytes += _read_band(ds, grid.sub(c, r, k), Resampling[band.resampling], dst, np.nan,
                                             src_nodata)
                    continue
                for c, r, k in squares:
                    if (c, r, k) not in taps:  # one coordinate map per square, shared by VV and VH
                        taps[(c, r, k)] = _warp_taps(ds.crs, ds.transform, ds.width, ds.height, grid, c, r, k)
                    nbytes += _warp_band(ds, taps[(c, r, k)], out[i, r : r + k, c : c + k], src_nodata)
            except (RasterioError, OSError) as e:
                raise _classify(e, what) from None
    for c, r, k in squares:
        to_db(out[:, r : r + k, c : c + k])
    return nbytes


#: cross-zone warps: source positions are computed exactly every this many output pixels (on a lattice fixed
#: to the unit grid) and interpolated bilinearly in between; the zone change bends them by << 0.01 px there
WARP_STEP = 16


class _WarpTaps(NamedTuple):
    """Where a square of the unit grid samples a raster: the source window and, per output pixel, the four
    bilinear taps as flat indices into the window (clamped) with their weights, the tap holding the centre,
    and whether the centre is inside the raster."""

    window: Window
    idx: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # (k, k) each: taps 00, 01, 10, 11
    weights: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
    own: np.ndarray
    inside: np.ndarray


def _warp_taps(src_crs, src_transform: Affine, width: int, height: int, grid: UnitGrid, c: int, r: int,
               k: int) -> _WarpTaps | None:
    """Bilinear taps of the ``k x k`` square at ``(c, r)`` of ``grid`` in a raster of another CRS (None when
    the square misses it). Output pixel centres are transformed exactly on the lattice of unit pixels
    ``(j * WARP_STEP, i * WARP_STEP)`` (plus the square's far edge) and bilinearly in between, the way
    GDAL's approximate transformer does, but on a lattice that does not depend on the square."""
    from rasterio.warp import transform as warp_transform

    step = WARP_STEP
    lo_c, lo_r = c // step * step, r // step * step
    cols = np.arange(lo_c, c + k + step, step, dtype=np.float64)  # unit pixel coordinates of the lattice
    rows = np.arange(lo_r, r + k + step, step, dtype=np.float64)
    X, Y = np.meshgrid(grid.x_min + (cols + 0.5) * grid.gsd, grid.y_max - (rows + 0.5) * grid.gsd)
    sx, sy = (np.asarray(v) for v in warp_transform(f"EPSG:{grid.epsg}", src_crs, X.ravel(), Y.ravel()))
    inv = ~src_transform
    u = (inv.a * sx + inv.b * sy + inv.c).reshape(X.shape)  # source column of each lattice point
    v = (inv.d * sx + inv.e * sy + inv.f).reshape(X.shape)  # source row
    # the lattice interpolated to every pixel of the square: along columns on the lattice rows, then rows
    jc, tc = np.divmod(np.arange(c, c + k) - lo_c, step)
    jr, tr = np.divmod(np.arange(r, r + k) - lo_r, step)
    tc, tr = (tc / step).astype(np.float32), (tr / step)[:, None].astype(np.float32)

    def lerp(a):
        a = a.astype(np.float32)
        along = a[:, jc] * (1 - tc) + a[:, jc + 1] * tc  # (lattice rows, k)
        return along[jr] * (1 - tr) + along[jr + 1] * tr  # (k, k)

    uu, vv = lerp(u), lerp(v)
    inside = (uu >= 0) & (uu < width) & (vv >= 0) & (vv < height)
    if not inside.any():
        return None
    cs = max(int(np.floor(uu[inside].min() - 0.5)), 0)
    rs = max(int(np.floor(vv[inside].min() - 0.5)), 0)
    ce = min(int(np.floor(uu[inside].max() + 0.5)) + 1, width)
    re_ = min(int(np.floor(vv[inside].max() + 0.5)) + 1, height)
    h, w = re_ - rs, ce - cs
    uu -= 0.5 + cs
    vv -= 0.5 + rs
    i0, j0 = np.floor(vv), np.floor(uu)
    fr, fc = vv - i0, uu - j0  # float32 (k, k)
    i0, j0 = i0.astype(np.int64), j0.astype(np.int64)
    ra, rb = np.clip(i0, 0, h - 1) * w, np.clip(i0 + 1, 0, h - 1) * w
    ca, cb = np.clip(j0, 0, w - 1), np.clip(j0 + 1, 0, w - 1)
    gr, gc = 1 - fr, 1 - fc
    own = np.where(fr >= 0.5, rb, ra) + np.where(fc >= 0.5, cb, ca)  # the tap holding the centre
    return _WarpTaps(Window(cs, rs, w, h), (ra + ca, ra + cb, rb + ca, rb + cb),
                     (gr * gc, gr * fc, fr * gc, fr * fc), own, inside)


def _warp_band(ds, taps: _WarpTaps | None, out: np.ndarray, src_nodata) -> int:
    """Bilinear sampling of band 1 of ``ds`` at ``taps`` into ``out (k, k) float32`` (GDAL's nodata rule, as
    :func:`upsample`: nodata taps weigh 0, the rest renormalised, nodata where the centre's own pixel is);
    NaN outside. Returns the window's pixel bytes."""
    out.fill(np.nan)
    if taps is None:
        return 0
    data, nbytes = read_window(ds, taps.window)
    a = data.astype(np.float32).ravel()
    valid = None if src_nodata is None else ~_is_nodata(a, src_nodata)
    if valid is not None and valid.all():
        valid = None
    if valid is not None:
        a[~valid] = 0
    num = sum(np.take(a, i) * wt for i, wt in zip(taps.idx, taps.weights, strict=True))
    ok = taps.inside
    if valid is not None:
        wv = valid.astype(np.float32)
        den = sum(np.take(wv, i) * wt for i, wt in zip(taps.idx, taps.weights, strict=True))
        # the centre's own source pixel must be valid (GDAL)
        ok = ok & np.take(valid, taps.own) & (den > 1e-6)
        np.divide(num, den, out=num, where=ok)
    np.copyto(out, num, where=ok)
    return nbytes


def to_db(power: np.ndarray) -> None:
    """In place: linear power -> ``10 log10(max(p, 1e-5))`` dB; NaN stays NaN."""
    with np.errstate(invalid="ignore"):
        np.maximum(power, S1_MIN_POWER, out=power, where=np.isfinite(power))
        np.log10(power, out=power, where=np.isfinite(power))
    power *= 10.0
