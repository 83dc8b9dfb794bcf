"""Fixtures for job tests: small contract-conforming shards + manifest.

The shards come from :func:`pipeline.synthetic.samples.make_shards` (shared with ``bench/``);
``rows_to_table_v1`` builds the old v1 layout (``FixedShapeTensor`` columns) for compatibility tests.
"""

from __future__ import annotations

from pathlib import Path

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
