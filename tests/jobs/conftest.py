"""Fixtures for job tests: small contract-conforming shards + manifest.

The shards come from :func:`pipeline.synthetic.samples.make_shards` (shared with ``bench/``);
``rows_to_table_v1`` builds the old v1 layout (``FixedShapeTensor`` columns) for compatibility tests.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from pipeline import shards as S
from pipeline.synthetic.samples import make_rows, make_shards, rows_to_table

__all__ = ["make_rows", "make_shards", "rows_to_table", "rows_to_table_v1"]


def rows_to_table_v1(r: dict) -> pa.Table:
    """The contract-v1 layout: ``s2``/``s1`` as pyarrow ``FixedShapeTensor`` columns."""
    return S.as_v1(rows_to_table(r))


@pytest.fixture(scope="session")
def shards_dir(tmp_path_factory) -> Path:
    """128 synthetic samples (2 shards), 32 px tiles, 3 slots per modality."""
    return make_shards(tmp_path_factory.mktemp("data"))


# ------------------------------------------------------------------------------------ benchmarks

#: classes of the toy benchmarks (``make_benchmark``)
TOY_CLASSES = {"classification": ("dark", "mid", "bright"), "multilabel": ("b0", "b1", "b2"),
               "segmentation": ("dark", "mid", "bright"), "change": ("no change", "change")}


def make_benchmark(out: Path, task: str, splits: dict[str, int] | None = None, tile: int = 32, seed: int = 0,
                   with_s1: bool = True) -> dict:
    """A small labelled benchmark in contract v3 (``write_benchmark``), separable by construction:

    - classification: class c -> every band around 1500 + 1500 c;
    - multilabel: label k present -> 10 m band k (B02, B03, B04) raised by 3000;
    - segmentation: three vertical stripes of random classes, each pixel's brightness its class's;
      the top row is unlabelled (255);
    - change: two dates (T = 2) equal but for a random square raised by 4000 on date 2 (label 1);
      the left column is unlabelled (255).

    All bands on one 10 m grid (``s2_20m`` at gsd 10, as EuroSAT). Returns the manifest.
    """
    from pipeline.convert import Sample
    from pipeline.convert.writer import write_benchmark
    from pipeline.shards import BenchmarkInfo

    splits = splits or {"train": 48, "val": 12, "test": 12}
    rng = np.random.default_rng(seed)
    info = BenchmarkInfo(f"toy_{task}", task, TOY_CLASSES[task])
    t = 2 if task == "change" else 1
    samples = []
    for split, n in splits.items():
        for i in range(n):
            base = np.full((t, 12, tile, tile), 2000.0)
            if task == "classification":
                label = int(rng.integers(0, 3))
                base[:] = 1500 + 1500 * label
            elif task == "multilabel":
                label = (rng.random(3) < 0.5).astype(np.uint8)
                for k in np.flatnonzero(label):
                    base[:, 1 + k] += 3000
            elif task == "segmentation":
                cls = rng.integers(0, 3, size=3)
                label = np.repeat(cls, -(-tile // 3))[:tile][None, :].repeat(tile, 0).astype(np.uint8)
                base[:] = 1500 + 1500 * label[None, None].astype(float)
                label[0] = 255
            else:
                y, x = rng.integers(0, tile // 2, size=2)
                label = np.zeros((tile, tile), np.uint8)
                label[y:y + tile // 2, x:x + tile // 2] = 1
                base[1] += 4000.0 * label
                label[:, 0] = 255
            dn = np.clip(base + rng.normal(0, 100, base.shape), 1, 10000).astype(np.uint16)
            # cube order B01 B02 B03 B04 B05 B06 B07 B08 B8A B09 B11 B12 -> the two groups
            s2_10m = dn[:, [1, 2, 3, 7]]
            s2_20m = dn[:, [0, 4, 5, 6, 8, 9, 10, 11]]
            s1 = None
            if with_s1:
                s1 = (rng.normal(-12, 1, (t, 2, tile, tile)) + dn[:, :2] / 1000.0).astype(np.float16)
            samples.append(Sample(
                sample_id=f"{split}_{i:04d}", split=split, s2_10m=s2_10m, s2_20m=s2_20m, label=label,
                sources=[f"toy/{split}/{i}"], s2_doy=np.arange(100, 100 + 30 * t, 30, dtype=np.int16)[:t],
                s1=s1, s1_doy=np.arange(102, 102 + 30 * t, 30, dtype=np.int16)[:t] if with_s1 else None,
                lon=11.0, lat=48.0))
    return write_benchmark(str(out), samples, info, tile_px=tile, max_slots=t, s2_20m_gsd=10.0,
                           rows_per_shard=max(8, len(samples) // 3))
