"""Time to the first training batch: the pretraining dataset streamed (file-order shuffle + local
buffer) against the same dataset ending in a block-order shuffle, on data larger than the object store.

    python -m bench.first_batch [--rows 160 --shards 4 --tile-px 64 --object-store-mb 128 --repeats 2]

Both sides are ``jobs.pretrain.build_dataset`` (SpectralGPT preset, ``data.cache=false``) consumed
as a worker does (``iter_torch_batches`` with the preset's local shuffle buffer); the "block order"
side appends ``randomize_block_order``, an all-to-all that must execute
every upstream block (and spill what does not fit) before it yields one. A local Ray starts with a
small object store so that the preprocessed samples (float32, printed) exceed it. The two sides run
alternately, ``--repeats`` times each; prints seconds to the first batch, to the whole epoch, the
bytes spilled, and the ratio of medians.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _spilled_bytes() -> int:
    """Bytes this Ray instance has spilled so far (its own GCS: other instances may run here)."""
    import ray
    from ray._private.internal_api import memory_summary

    for line in memory_summary(address=ray.get_runtime_context().gcs_address, stats_only=True).splitlines():
        if "Spilled" in line and "MiB" in line:
            return int(float(line.split("Spilled")[1].split("MiB")[0].strip(": ")) * 2**20)
    return 0


def time_epoch(ds, batch_size: int, buffer: int) -> tuple[float, float, int]:
    """(seconds to the first batch, seconds to the end of the epoch, samples)."""
    t0 = time.perf_counter()
    first, n = None, 0
    for b in ds.iter_torch_batches(batch_size=batch_size, local_shuffle_buffer_size=buffer or None,
                                   local_shuffle_seed=0):
        if first is None:
            first = time.perf_counter() - t0
        n += len(b["x"])
    return first, time.perf_counter() - t0, n


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--rows", type=int, default=160, help="rows per shard")
    p.add_argument("--shards", type=int, default=4)
    p.add_argument("--tile-px", type=int, default=64)
    p.add_argument("--object-store-mb", type=int, default=128)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out")
    a = p.parse_args(argv)

    import ray
    from ray.data import RandomSeedConfig

    from jobs.cli import load_config
    from jobs.pretrain import PretrainConfig
    from jobs.train.data import build_dataset, read_manifest
    from pipeline.synthetic.samples import make_shards

    out = Path(a.out or tempfile.mkdtemp(prefix="bench-first-batch-"))
    data = out / "data"
    if not (data / "manifest.json").is_file():
        make_shards(data, rows=a.rows, shards=a.shards, tile_px=a.tile_px, slots=3)
    ray.init(num_cpus=2, object_store_memory=a.object_store_mb * 2**20, include_dashboard=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}})
    cfg = load_config(PretrainConfig, REPO / "configs" / "pretrain" / "spectralgpt_tiny.yaml",
                      [f"data.path={data}", f"storage={out / 'runs'}", "data.cache=false"])
    manifest = read_manifest(cfg.data.path, cfg.data.storage)
    batch, buffer = 16, cfg.data.shuffle_buffer

    def dataset(block_order: bool):
        ds = build_dataset(cfg, manifest)
        if block_order:
            ds = ds.randomize_block_order(seed=RandomSeedConfig(seed=cfg.seed, reseed_after_execution=True))
        return ds

    runs: dict[str, list[dict]] = {"streaming": [], "block_order": []}
    for _ in range(a.repeats):
        for side in ("block_order", "streaming"):
            spilled0 = _spilled_bytes()
            first, epoch, n = time_epoch(dataset(side == "block_order"), batch, buffer)
            row = {"side": side, "first_batch_s": first, "epoch_s": epoch, "samples": n,
                   "spilled_mib": (_spilled_bytes() - spilled0) / 2**20}
            print(json.dumps(row), flush=True)
            runs[side].append(row)
    n = runs["streaming"][0]["samples"]
    sample_bytes = 12 * a.tile_px * a.tile_px * 4
    med = {k: statistics.median(r["first_batch_s"] for r in v) for k, v in runs.items()}
    summary = {
        "preprocessed_mib": n * sample_bytes / 2**20,
        "object_store_mib": a.object_store_mb,
        "first_batch_s_streaming": med["streaming"],
        "first_batch_s_block_order": med["block_order"],
        "ratio_block_order_over_streaming": med["block_order"] / med["streaming"],
        "epoch_s_streaming": statistics.median(r["epoch_s"] for r in runs["streaming"]),
        "epoch_s_block_order": statistics.median(r["epoch_s"] for r in runs["block_order"]),
        "cpus": os.cpu_count(),
    }
    print(json.dumps(summary, indent=1), flush=True)
    ray.shutdown()
    return summary


if __name__ == "__main__":
    main()
