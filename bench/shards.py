"""Shard write/read CPU time: contract v1 (``FixedShapeTensor`` s2/s1) against v2 (``fixed_size_binary``).

    python -m bench.shards                      # synthetic: 54 rows, T = 4, 128 px (~99 MB of tensors)
    python -m bench.shards --shard out/shards/32633_34_248_2022Q1.parquet   # the rows of a real shard

Both layouts hold the same rows and are written with ``pipeline.shards.table_to_parquet`` (zstd 1, row
groups of 16). Write = serialising the in-memory table to Parquet bytes; read = ``pq.read_table`` of those
bytes + the s2/s1 arrays as numpy (``tensor_to_numpy``). Times are process CPU seconds (all threads), best
of ``--repeat``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline import shards as S  # noqa: E402


def best_cpu(fn, repeat: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        c = time.process_time()
        out = fn()
        best = min(best, time.process_time() - c)
    return best, out


def read_back(data: bytes) -> list[np.ndarray]:
    t = pq.read_table(pa.BufferReader(data))
    return [S.tensor_to_numpy(t[c], S.tensor_field(t.schema, c)) for c in ("s2", "s1")]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shard", help="take the rows of this shard (v1 or v2) instead of synthetic ones")
    ap.add_argument("--rows", type=int, default=54)
    ap.add_argument("--slots", type=int, default=4)
    ap.add_argument("--tile-px", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    if args.shard:
        arrays = S.read_shards(args.shard)
        for k in ("s2_doy", "s2_valid", "s2_cloud", "s1_doy", "s1_valid"):
            arrays[k] = arrays[k].reshape(len(arrays["sample_id"]), -1)
    else:
        from pipeline.synthetic.samples import make_rows

        arrays = make_rows(np.random.default_rng(0), args.rows, args.tile_px, args.slots, start=0)
        arrays["sources"] = [["synthetic"]] * args.rows
    v2 = S.build_table(**arrays)
    tables = {"v1 FixedShapeTensor": S.as_v1(v2), "v2 fixed_size_binary": v2}
    print(f"{len(arrays['sample_id'])} rows, s2 {arrays['s2'].shape}, "
          f"{tables['v2 fixed_size_binary'].nbytes / 1e6:.1f} MB in memory")
    res = {}
    for name, table in tables.items():
        w, data = best_cpu(lambda table=table: S.table_to_parquet(table), args.repeat)
        r, (s2, s1) = best_cpu(lambda data=data: read_back(data), args.repeat)
        np.testing.assert_array_equal(s2, arrays["s2"])
        np.testing.assert_array_equal(s1, arrays["s1"])
        res[name] = {"write_cpu_s": w, "read_cpu_s": r, "mb": len(data) / 1e6}
        print(f"{name:22s} write {w:6.3f} CPU-s   read+numpy {r:6.3f} CPU-s   {len(data) / 1e6:6.1f} MB")
    a, b = res.values()
    ratio = {k: a[k] / b[k] for k in a}
    print(f"v1 / v2: write {ratio['write_cpu_s']:.1f}x, read {ratio['read_cpu_s']:.1f}x, "
          f"bytes {ratio['mb']:.3f}x")
    return res


if __name__ == "__main__":
    main()
