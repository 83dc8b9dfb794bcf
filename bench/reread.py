"""Repeated short reads of a shard set: Ray Data's Parquet reader V2 (the 2.60 default) against V1.

Fine-tuning evaluates its val split every ``eval.every_steps`` and pretraining starts a new read every
epoch; each is a new streaming execution of ``read_parquet``. Ray Data 2.60's V2 Parquet reader lists
files through a pool of ``FooterReader`` actors (``RAY_DATA_PARQUET_FOOTER_NUM_ACTORS``, 32 by default)
provisioned anew for every execution: each actor is a fresh Python process. This bench runs the read
``jobs.train.data.build_dataset`` builds (projected read, split filter, ``map_batches``) ``--passes``
times with each reader on one local Ray, and prints wall seconds per pass, the worker processes each started
and the ratio, measured in one run::

    python bench/reread.py --cpus 2 --passes 6
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _processes_started() -> int:
    """Worker processes the local Ray has started so far (each writes its own core-worker log)."""
    import ray._private.worker as w

    return len(list(Path(w._global_node.get_logs_dir_path()).glob("python-core-worker-*.log")))


def passes(shards: Path, n: int, v2: bool) -> dict:
    """``n`` reads of the val split as ``build_dataset`` reads it (projected, filtered, ``map_batches``),
    through Ray Data's default reader (V2) or ``jobs.train.data.read_parquet`` (V1)."""
    import ray.data

    from jobs.train.data import read_parquet

    manifest = json.loads((shards / "manifest.json").read_text())
    paths = [str(shards / s["path"]) for s in manifest["shards"]]
    read = ray.data.read_parquet if v2 else read_parquet
    before = _processes_started()
    times = []
    rows = 0
    for _ in range(n):
        t = time.perf_counter()
        ds = read(paths, columns=["sample_id", "split", "s2_10m"]).filter(expr="split == 'val'")
        ds = ds.map_batches(lambda b: b, batch_format="pyarrow", batch_size=64)
        rows = sum(len(b["sample_id"]) for b in ds.iter_batches(batch_size=16, batch_format="numpy"))
        times.append(time.perf_counter() - t)
    return {"reader": "v2 (ray.data.read_parquet)" if v2 else "v1 (jobs.train.data.read_parquet)",
            "passes": n, "rows": rows, "files": len(paths),
            "s_per_pass": round(sum(times[1:]) / max(1, n - 1), 2), "first_pass_s": round(times[0], 2),
            "processes_started": _processes_started() - before}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cpus", type=int, default=2)
    p.add_argument("--passes", type=int, default=6)
    p.add_argument("--json", type=Path)
    a = p.parse_args(argv)
    import ray

    from tests.jobs.conftest import make_benchmark

    with tempfile.TemporaryDirectory() as tmp:
        make_benchmark(Path(tmp), "classification", splits={"train": 32, "val": 8, "test": 8})
        ray.init(num_cpus=a.cpus, include_dashboard=False, log_to_driver=False)
        try:
            rows = [passes(Path(tmp), a.passes, v2) for v2 in (True, False, True, False)]
        finally:
            ray.shutdown()
    v2, v1 = rows[2:]  # the second round of each: imports and caches warm
    out = {"rounds": rows, "v2_over_v1_s_per_pass": round(v2["s_per_pass"] / v1["s_per_pass"], 2)}
    print(json.dumps(out, indent=1))
    if a.json:
        a.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
