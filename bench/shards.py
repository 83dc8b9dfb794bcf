"""Shard bytes and write/read CPU time per contract: v3 (S2 at native resolution) against v2 (all 12 S2
bands on the 10 m grid) and v1 (``FixedShapeTensor``), on the same samples.

    python -m bench.shards                      # synthetic: 54 rows, T = 4, 128 px
    python -m bench.shards --shard out/shards/32633_34_248_2022Q1.parquet   # the rows of a v3 ingest shard

The same rows in each layout: from a v3 shard, v2's ``s2`` is what the v2 ingest stored (every band on
the 10 m grid: ``to_cube`` bilinear, rounded to uint16, the 10 m bands copied); from synthetic v2 rows,
v3's ``s2_20m`` is the 2 x 2 mean of the 20/60 m bands (what a 20 m sensor pixel would hold). All are
written with ``pipeline.shards.table_to_parquet`` (zstd 1, row groups of 16). Write = serialising the
in-memory table to Parquet bytes; read = ``pq.read_table`` of those bytes + the tensors as numpy in the v3
layout (``table_to_arrays``). Times are process CPU seconds (all threads), best of ``--repeat``; bytes are
per sample (row).
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


def read_back(data: bytes) -> dict:
    return S.table_to_arrays(pq.read_table(pa.BufferReader(data)))


def v2_from_v3(a: dict) -> dict:
    """v3 arrays -> the v2 rows the v2 ingest wrote for the same scenes (12 bands on the 10 m grid)."""
    cube = S.to_cube(a["s2_10m"], a["s2_20m"])  # (N, T, 12, H, W) float32
    s2 = np.clip(np.floor(cube + 0.5), 0, 65535).astype(np.uint16)
    s2[:, :, list(S.CUBE_INDEX_10M)] = a["s2_10m"]
    return {**{k: v for k, v in a.items() if k not in ("s2_10m", "s2_20m", "schema_version")}, "s2": s2}


def v3_from_v2(a: dict) -> dict:
    """v2 arrays -> v3: the 10 m bands, and the 20/60 m ones as the 2 x 2 means of their 10 m values."""
    g10, g20 = S.split_s2(a["s2"])
    n, t, c, h, w = g20.shape
    g20 = np.rint(g20.reshape(n, t, c, h // 2, 2, w // 2, 2).mean((4, 6))).astype(np.uint16)
    rest = {k: v for k, v in a.items() if k not in ("s2", "schema_version")}
    return {**rest, "s2_10m": np.ascontiguousarray(g10), "s2_20m": g20}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shard", help="take the rows of this shard (v3; or v1/v2) instead of synthetic ones")
    ap.add_argument("--rows", type=int, default=54)
    ap.add_argument("--slots", type=int, default=4)
    ap.add_argument("--tile-px", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    if args.shard:
        a = S.read_shards(args.shard)
        if a["schema_version"] == 3:
            v3, v2 = a, v2_from_v3(a)
        else:
            v2 = {k: v for k, v in a.items() if k not in ("s2_10m", "s2_20m")}
            v3 = v3_from_v2(v2)
    else:
        from tests.jobs.conftest import make_rows

        v2 = make_rows(np.random.default_rng(0), args.rows, args.tile_px, args.slots, start=0)
        v2["sources"] = [["synthetic"]] * args.rows
        v3 = v3_from_v2(v2)
    drop = {"schema_version"}
    t2 = S.build_table_v2(**{k: v for k, v in v2.items() if k not in drop | {"s2_10m", "s2_20m"}})
    t3 = S.build_table(**{k: v for k, v in v3.items() if k not in drop | {"s2"}})
    tables = {"v1 FixedShapeTensor": S.as_v1(t2), "v2 fixed_size_binary": t2, "v3 native resolution": t3}
    rows = t3.num_rows
    print(f"{rows} rows, s2_10m {v3['s2_10m'].shape}, s2_20m {v3['s2_20m'].shape}; in memory "
          f"v2 {t2.nbytes / 1e6:.1f} MB, v3 {t3.nbytes / 1e6:.1f} MB")
    res = {}
    for name, table in tables.items():
        w, data = best_cpu(lambda table=table: S.table_to_parquet(table), args.repeat)
        r, back = best_cpu(lambda data=data: read_back(data), args.repeat)
        src = v3 if name.startswith("v3") else v2
        for k in ("s2_10m", "s1"):
            np.testing.assert_array_equal(back[k], src[k] if k in src else S.split_s2(src["s2"])[0])
        res[name] = {"write_cpu_s": w, "read_cpu_s": r, "bytes_per_sample": len(data) / rows}
        print(f"{name:22s} write {w:6.3f} CPU-s   read+numpy {r:6.3f} CPU-s   "
              f"{len(data) / rows / 1e6:7.3f} MB per sample")
    v1, v2r, v3r = res.values()
    print(f"v3 / v2: bytes per sample {v3r['bytes_per_sample'] / v2r['bytes_per_sample']:.3f}, write "
          f"{v3r['write_cpu_s'] / v2r['write_cpu_s']:.2f}x, "
          f"read {v3r['read_cpu_s'] / v2r['read_cpu_s']:.2f}x the CPU; "
          f"v1 / v2: write {v1['write_cpu_s'] / v2r['write_cpu_s']:.1f}x, "
          f"read {v1['read_cpu_s'] / v2r['read_cpu_s']:.1f}x")
    return res


if __name__ == "__main__":
    main()
