"""What every benchmark converter shares: the records between the driver, the Ray Data tasks and the writer.

A benchmark is a small module of facts plus two functions (DESIGN.md, style 6), registered in
:data:`pipeline.convert.BENCHMARKS` as a :class:`Benchmark`:

* ``list_items(source, options, fs) -> (items, rejects)`` runs on the driver and only lists and reads small
  metadata (split files, ``metadata.parquet``, JSON), never pixels: one :class:`Item` per sample (or per large
  image that is cropped into several samples), with its official split;
* ``read_item(item, options, fs) -> list[Sample]`` runs in a Ray Data task, reads the item's files and returns
  its samples in the canonical band order at the grid the dataset ships each band on. Bad input raises
  :class:`BadInput` (reason from :data:`pipeline.stac.REJECT_REASONS`), which the job records in
  ``rejects.parquet``; the job goes on, so written + rejected = found.

``fs`` is the fsspec filesystem of ``source`` (:func:`pipeline.storage.filesystem`); paths in items are
paths on it. Pure of Ray: the job (``jobs.convert``) wires these together.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypeVar

import numpy as np

from pipeline.shards import BenchmarkInfo, Crops, add_labels, build_table
from pipeline.stac import Reject

__all__ = ["BadInput", "Benchmark", "Item", "Raster", "Sample", "SourceError", "as_options", "read_raster",
           "relpath", "samples_to_table", "to_dn"]


class SourceError(ValueError):
    """The source is not a copy of the benchmark in a layout its converter knows (no class folders, no
    ``metadata.parquet``, a split file that is not there). Raised by ``list_items``; ``jobs.convert`` reports
    it as an error of ``--source`` / ``options`` before any work."""


class BadInput(Exception):
    """An item the converter cannot use: ``reason`` (one of ``REJECT_REASONS``) and a human ``detail``."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail

    def reject(self, item_id: str) -> Reject:
        return Reject("sample", item_id, self.reason, self.detail)


@dataclass(frozen=True)
class Item:
    """One unit of work found by the driver: ``id`` (the benchmark's sample or image id), its official
    ``split`` (``train``/``val``/``test``), the ``files`` it reads (role -> path on ``fs``) and small
    JSON-able ``extra`` facts (e.g. the label names from the metadata)."""

    id: str
    split: str
    files: Mapping[str, str]
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class Sample:
    """One output row, numpy. ``T`` slots (1 for single-date benchmarks, 2 for a change pair).

    ``s2_10m (T, 4, H, W) uint16`` B02 B03 B04 B08; ``s2_20m (T, 8, h, h) uint16`` B01 B05 B06 B07 B8A B09
    B11 B12 with ``h = H`` (one 10 m grid) or ``H / 2``; ``s1 (T, 2, H, W) float16`` dB or ``None``;
    ``label`` as :func:`pipeline.shards.add_labels` takes one row of it (``()``, ``(C,)`` or ``(H, W)``).
    A band the dataset lacks is all 0; a missing slot has ``s2_valid`` False and zeros.
    """

    sample_id: str
    split: str
    s2_10m: np.ndarray
    s2_20m: np.ndarray
    label: np.ndarray | int
    sources: Sequence[str]
    s2_doy: np.ndarray | None = None  # (T,) int16, 0 = unknown
    s2_valid: np.ndarray | None = None  # (T,) bool, default all True
    s1: np.ndarray | None = None
    s1_doy: np.ndarray | None = None
    s1_valid: np.ndarray | None = None
    epsg: int = 0  # 0: the dataset ships no georeference
    x_min: float = 0.0
    y_max: float = 0.0
    gsd: float = 10.0
    lon: float = float("nan")
    lat: float = float("nan")
    #: ``(image id, y, x, image h, image w)`` when the sample is a tile cut from a larger image
    crop: tuple[str, int, int, int, int] | None = None


@dataclass(frozen=True)
class Benchmark:
    """A registered benchmark: its facts and its two functions (see the module docstring).

    ``tile_px``: output tile side at 10 m (a cropped benchmark's tile; a fixed-size one's image side);
    ``max_slots``: T; ``s2_20m_gsd``: 20 (native 20 m grid) or 10 (the dataset ships one 10 m grid).
    ``options``: the pydantic model of the benchmark's ``--set options.*`` (split file, crop size, ...).
    """

    info: BenchmarkInfo
    tile_px: int
    max_slots: int
    s2_20m_gsd: float
    list_items: Callable[..., tuple[list[Item], list[Reject]]]
    read_item: Callable[..., list[Sample]]
    options: type | None = None
    #: a benchmark whose facts depend on its options (the synthetic one's ``task``, ``slots``, ``tile_px``):
    #: ``configure(options) -> Benchmark`` with them set; None: the same facts for every option
    configure: Callable[[Any], Benchmark] | None = None

    @property
    def name(self) -> str:
        return self.info.name

    def resolved(self, options: Any) -> Benchmark:
        """This benchmark with the facts ``options`` set (itself when they do not depend on options)."""
        return self if self.configure is None else self.configure(options)


M = TypeVar("M")


def as_options(model: type[M], options: M | Mapping | None) -> M:
    """A converter's ``options`` as its pydantic ``model`` (the job hands the validated model; direct callers
    may pass a mapping or nothing)."""
    return options if isinstance(options, model) else model.model_validate(dict(options or {}))


def _slots(a: np.ndarray | None, t: int, default: Any, dtype) -> np.ndarray:
    return np.full(t, default, dtype) if a is None else np.asarray(a, dtype)


def samples_to_table(samples: Sequence[Sample], info: BenchmarkInfo):
    """Samples (sorted by ``sample_id`` here) -> one labelled contract-v3 table (:func:`add_labels`)."""
    rows = sorted(samples, key=lambda s: s.sample_id)
    if not rows:
        raise ValueError("no samples")
    t, _, h, _ = rows[0].s2_10m.shape
    s1 = [s.s1 if s.s1 is not None else np.full((t, 2, h, h), np.nan, np.float16) for s in rows]
    table = build_table(
        sample_id=[s.sample_id for s in rows],
        epsg=np.array([s.epsg for s in rows]), x_min=np.array([s.x_min for s in rows]),
        y_max=np.array([s.y_max for s in rows]), gsd=np.array([s.gsd for s in rows]),
        lon=np.array([s.lon for s in rows]), lat=np.array([s.lat for s in rows]),
        s2_10m=np.stack([s.s2_10m for s in rows]), s2_20m=np.stack([s.s2_20m for s in rows]),
        s2_doy=np.stack([_slots(s.s2_doy, t, 0, np.int16) for s in rows]),
        s2_valid=np.stack([_slots(s.s2_valid, t, True, bool) for s in rows]),
        s2_cloud=np.zeros((len(rows), t), np.float32),
        s1=np.stack(s1).astype(np.float16),
        s1_doy=np.stack([_slots(s.s1_doy, t, 0, np.int16) for s in rows]),
        s1_valid=np.stack([_slots(s.s1_valid, t, s.s1 is not None, bool) for s in rows]),
        sources=[list(s.sources) for s in rows],
    )
    crops = None
    if any(s.crop is not None for s in rows):
        if not all(s.crop is not None for s in rows):
            raise ValueError("either every sample of a table has crop geometry or none has")
        c = [s.crop for s in rows]
        crops = Crops([x[0] for x in c], *(np.array([x[i] for x in c]) for i in range(1, 5)))
    labels = np.stack([np.asarray(s.label) for s in rows])
    return add_labels(table, info, labels, [s.split for s in rows], crops=crops)


class Raster(NamedTuple):
    """A GeoTIFF read whole: ``data (C, H, W)`` in its file dtype, its EPSG code (0 without a CRS or with
    one that has no code) and its affine geotransform ``(a, b, c, d, e, f)``."""

    data: np.ndarray
    epsg: int
    transform: tuple[float, ...]

    def georef(self) -> dict[str, Any]:
        """The :class:`Sample` georeference of an image whose top-left pixel is this raster's: ``epsg``,
        ``x_min``, ``y_max`` (the top-left corner) and the WGS84 ``lon``/``lat`` of its centre (NaN without
        a CRS)."""
        a, _, c, _, e, f = self.transform[:6]
        h, w = self.data.shape[-2:]
        out: dict[str, Any] = {"epsg": int(self.epsg), "x_min": float(c), "y_max": float(f)}
        if self.epsg:
            from rasterio.warp import transform as warp

            lon, lat = warp(f"EPSG:{self.epsg}", "EPSG:4326", [c + a * w / 2], [f + e * h / 2])
            out.update(lon=float(lon[0]), lat=float(lat[0]))
        return out


@functools.lru_cache(maxsize=256)
def _epsg_of(wkt: str) -> int:
    """EPSG code of a CRS (0 when it has none): the PROJ database lookup costs several ms, and a benchmark
    has a handful of CRSs over thousands of files."""
    from rasterio.crs import CRS

    return int(CRS.from_wkt(wkt).to_epsg() or 0)


def read_raster(fs, path: str, rel: str | None = None, *, crs: bool = True,
                driver: str | None = None) -> Raster:
    """Read the raster at ``path`` on ``fs`` (the whole file in one request: benchmark files are small).

    Raises :class:`BadInput` ``missing_file`` when it is not there and ``unreadable_file`` when GDAL cannot
    decode it; ``rel`` (the path relative to the source root) names it in the detail. ``crs=False`` skips
    the CRS (``epsg`` 0) for files whose georeference another file of the sample gives; ``driver``
    (e.g. ``"GTiff"``) spares GDAL probing every format."""
    import rasterio
    from rasterio.io import MemoryFile

    name = rel or path
    try:
        blob = fs.cat_file(path)
    except FileNotFoundError:
        raise BadInput("missing_file", f"{name} not found") from None
    mem = MemoryFile(blob)
    try:
        with mem.open(driver=driver) if driver else mem.open() as ds:
            data = ds.read()
            epsg = _epsg_of(ds.crs.to_wkt()) if crs and ds.crs else 0
            transform = tuple(ds.transform)[:6]
    except rasterio.errors.RasterioError as e:
        # GDAL names the in-memory copy (a random /vsimem/ path): name the file instead, so the detail
        # (and rejects.parquet) is the same on every run
        msg = str(e).replace(mem.name, "the file").replace(mem.name.rsplit("/", 1)[-1], "the file")
        raise BadInput("unreadable_file", f"{name}: {msg[:200]}") from None
    finally:
        mem.close()
    return Raster(data, int(epsg), transform)


def relpath(root: str, path: str) -> str:
    """``path`` relative to the source ``root`` with ``/`` separators (lineage and reject details name files
    this way, so the same dataset gives the same output wherever it is read from)."""
    root = root.rstrip("/")
    return path[len(root) + 1:] if path.startswith(root + "/") else path


def to_dn(a: np.ndarray, name: str) -> np.ndarray:
    """Pixel values -> ``uint16`` DNs exactly, never scaled: integers in ``[0, 65535]`` in any integer or
    float dtype pass (copies of a dataset differ in pixel type); anything else is
    ``BadInput(unreadable_file)`` naming ``name`` rather than a silent cast."""
    if a.dtype == np.uint16:
        return a
    if a.dtype.kind not in "iuf":
        raise BadInput("unreadable_file", f"{name}: pixel type {a.dtype} is not a DN")
    if a.size:
        lo, hi = a.min(), a.max()
        integral = a.dtype.kind in "iu" or bool(np.all(np.floor(a) == a))
        if not (integral and lo >= 0 and hi <= np.iinfo(np.uint16).max):
            raise BadInput("unreadable_file", f"{name}: {a.dtype} values in [{lo}, {hi}] are not uint16 DNs")
    return a.astype(np.uint16)
