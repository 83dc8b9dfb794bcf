"""Benchmark converters: each benchmark's official layout -> labelled shards in contract v3.

One module per benchmark (facts + ``list_items`` + ``read_item``, see :mod:`pipeline.convert.base`),
registered by name in :data:`BENCHMARKS`; ``jobs.convert`` runs them on Ray Data.
"""

from __future__ import annotations

import importlib

from pipeline.convert.base import (
    BadInput,
    Benchmark,
    Item,
    Raster,
    Sample,
    SourceError,
    read_raster,
    relpath,
    samples_to_table,
)

#: the benchmarks ``jobs.convert --benchmark`` knows: module ``pipeline.convert.<name>`` each
NAMES = ("eurosat", "bigearthnet", "oscd", "segmunich", "synthetic")
#: name -> Benchmark; each converter module adds itself here when imported (see :func:`register`)
BENCHMARKS: dict[str, Benchmark] = {}


def register(b: Benchmark) -> Benchmark:
    if b.name in BENCHMARKS:
        raise ValueError(f"benchmark {b.name!r} registered twice")
    BENCHMARKS[b.name] = b
    return b


def get(name: str) -> Benchmark:
    """The registered :class:`Benchmark` called ``name`` (imports its module)."""
    if name not in NAMES:
        raise ValueError(f"unknown benchmark {name!r}; expected one of {NAMES}")
    importlib.import_module(f"pipeline.convert.{name}")
    return BENCHMARKS[name]


__all__ = ["BENCHMARKS", "NAMES", "BadInput", "Benchmark", "Item", "Raster", "Sample", "SourceError", "get",
           "read_raster", "register", "relpath", "samples_to_table"]
