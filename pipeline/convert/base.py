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

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.shards import BenchmarkInfo, Crops, add_labels, build_table
from pipeline.stac import Reject

__all__ = ["BadInput", "Benchmark", "Item", "Sample", "samples_to_table"]


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
