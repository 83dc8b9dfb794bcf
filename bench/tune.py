"""Sweep figures: ASHA's efficiency against running every trial to its end, and the sweep overhead.

    python -m bench.tune [--trials 12] [--steps 45] [--work DIR]

(a) ASHA efficiency. On the synthetic benchmark (``pipeline.convert.synthetic``: archive truth ->
    converter -> contract-v3 shards, classes that share one mean spectrum), the same ``--trials``
    configs (same space, same seed: the seeded random search draws the same configs in the same
    order) run twice through ``jobs.tune``: once under ASHA on the global step, once FIFO, every
    trial to its full budget. Figures: the full-budget validation score of the config ASHA picks
    against the best full-budget trial (the FIFO run scored every config at full budget), and
    ASHA's trial-steps ÷ FIFO's. Targets: within 1 point, ≤ 40 %. ASHA runs as a user's sweep
    would (``max_concurrent_trials: auto``, 2 at once on 2 CPUs); the FIFO reference runs
    ``--fifo-concurrency`` trials at once (its full-budget scores do not depend on the order, and its
    trials' start-ups overlap). ASHA promotes a trial that reaches an empty rung, so the first
    trial in flight always runs its full budget: the saving grows with trials per slot (8 trials
    on 2 slots: 48.6 %).
(b) Sweep overhead. A 4-trial sweep (``configs/tune/tiny.yaml`` as is): its wall time ÷ the sum of
    its trials' training time (a trial's training time: from its first to its last report, plus one
    mean report interval, i.e. the Ray Train loop's time as the reports Tune receives clock it), and ÷ the sum
    of its trials' Tune running time (driver start to last report: Ray Train start-up, dataset
    preparation and the loop). With 2 trials at once on 2 CPUs, a ratio below 1 is the parallelism.

Each sweep runs the real job on a local Ray instance (``ray.init(num_cpus=--cpus)``): trial drivers,
Train controllers and workers, Ray Data preprocessing. Prints a markdown report (command, date,
machine) for ``bench/results/tune.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TINY = "configs/tune/tiny.yaml"


def build_benchmark(work: Path, *, tiles: int, size_px: int, per_class: int, seed: int) -> tuple[Path, str]:
    """The synthetic benchmark (classification) as shards under ``work/synthetic``; ``(path, source)``."""
    from pipeline.convert.writer import convert_in_process
    from pipeline.synthetic import make_archive

    arch = make_archive(work / "archive", scenes=0, s1_scenes=0, seed=seed, size_px=size_px,
                        epsg=[32633 + i for i in range(tiles)])
    out = work / "synthetic"
    m = convert_in_process("synthetic", arch.root, str(out),
                           {"task": "classification", "per_class": per_class, "seed": seed})
    return out, f"pipeline.convert.synthetic ({m['rows']} chips, {tiles} tiles of {size_px} px)"


def sweep(work: Path, data: Path, name: str, overrides: list[str]) -> tuple[dict, float]:
    """One ``jobs.tune`` run; ``(its summary, wall seconds)``."""
    from jobs import cli
    from jobs.sweep import SweepConfig
    from jobs.tune import run

    cfg = cli.load_config(SweepConfig, TINY, overrides,
                          {"data": f"synthetic={data}", "storage": str(work / "sweeps"), "name": name})
    t0 = time.perf_counter()
    out = run(cfg)
    return out, time.perf_counter() - t0


def trials(work: Path, name: str) -> dict[str, list[dict[str, Any]]]:
    """Tune's per-trial reports (``trial_*/result.json``): trial id -> reports."""
    out = {}
    for f in sorted((work / "sweeps" / name / "synthetic" / "random").glob("trial_*/result.json")):
        rows = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
        if rows:
            out[rows[-1]["trial_id"]] = rows
    return out


def knobs(rows: list[dict[str, Any]]) -> tuple:
    """A trial's knob values, comparable across the two sweeps."""
    cfg = rows[-1]["config"]
    return tuple(sorted((k, round(v, 12) if isinstance(v, float) else v) for k, v in cfg.items()))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.tune", description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=12)
    ap.add_argument("--steps", type=int, default=45, help="full budget per trial (global steps)")
    ap.add_argument("--grace", type=int, default=5, help="ASHA grace period (steps)")
    ap.add_argument("--reduction", type=float, default=4.0)
    ap.add_argument("--per-class", type=int, default=40)
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--fifo-concurrency", type=int, default=3, help="FIFO reference trials at once")
    ap.add_argument("--work", default=None)
    ap.add_argument("--skip", nargs="*", default=[], choices=["asha", "overhead"])
    args = ap.parse_args(argv)
    os.environ.setdefault("DS_ACCELERATOR", "cpu")

    import ray

    from jobs import cli

    given = " ".join(argv if argv is not None else sys.argv[1:])
    lines = [f"command: `{('python -m bench.tune ' + given).strip()}`",
             f"date: {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC; machine: {platform.node()} "
             f"{platform.machine()}, {os.cpu_count()} cores, Ray {ray.__version__}, local Ray with "
             f"{args.cpus} CPUs", ""]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        t0 = time.perf_counter()
        data, source = build_benchmark(work, tiles=3, size_px=768, per_class=args.per_class, seed=0)
        manifest = json.loads((data / "manifest.json").read_text())
        lines.append(f"benchmark: {source}; splits {manifest['benchmark']['splits']} "
                     f"({time.perf_counter() - t0:.0f} s to build)")
        cli.init_ray(num_cpus=args.cpus)
        stages = f"[{{img_size: 32, steps: {args.steps}, batch_size: 16}}]"
        common = [f"num_samples={args.trials}", f"finetune.stages={stages}",
                  f"finetune.checkpoint.every_steps={args.steps}", "finetune.eval.every_steps=5",
                  "space.lr={loguniform: [0.01, 10.0]}", "space.weight_decay={uniform: [0.0, 0.1]}",
                  "space.mode={choice: [linear_probe, finetune]}", "space.batch_size=16"]
        if "overhead" not in args.skip:
            out, wall = sweep(work, data, "four", ["num_samples=4"])
            t = trials(work, "four")
            train = 0.0
            for rs in t.values():
                ts = [r["time_total_s"] for r in rs]
                train += (ts[-1] - ts[0]) * len(ts) / (len(ts) - 1) if len(ts) > 1 else rs[-1]["time_total_s"]
            total = sum(rs[-1]["time_total_s"] for rs in t.values())
            steps4 = sum(max(r["step"] for r in rs) for rs in t.values())
            lines += ["", "## (b) Sweep overhead (4 trials, configs/tune/tiny.yaml)", "",
                      f"wall {wall:.0f} s; Σ trials' training time {train:.0f} s; Σ trials' Tune running "
                      f"time (start-up + data + loop) {total:.0f} s; trial-steps {steps4}.",
                      "", f"**wall ÷ Σ training time = {wall / train:.2f}**; wall ÷ Σ trial running time = "
                      f"{wall / total:.2f} (2 trials at once on {args.cpus} CPUs)."]
            print("\n".join(lines), flush=True)
            lines = []
        if "asha" not in args.skip:
            asha, asha_wall = sweep(work, data, "asha", [*common, "scheduler.kind=asha",
                                                          f"scheduler.grace_period={args.grace}",
                                                          f"scheduler.reduction_factor={args.reduction}"])
            print(f"ASHA: {asha_wall:.0f} s, per-trial steps "
                  f"{sorted(max(r['step'] for r in rs) for rs in trials(work, 'asha').values())}", flush=True)
            fifo, fifo_wall = sweep(work, data, "fifo", [*common, "scheduler.kind=fifo",
                                                          f"max_concurrent_trials={args.fifo_concurrency}"])
            a, f = trials(work, "asha"), trials(work, "fifo")
            full = {knobs(rs): rs for rs in f.values()}
            steps_a = sum(max(r["step"] for r in rs) for rs in a.values())
            steps_f = sum(max(r["step"] for r in rs) for rs in f.values())
            same = sorted(knobs(rs) for rs in a.values()) == sorted(full)
            best_f = max(f.values(), key=lambda rs: max(r["val_score"] for r in rs))
            best_f_val = max(r["val_score"] for r in best_f)
            done_a = [rs for rs in a.values() if any("test_oa" in r for r in rs)]
            pick = max(done_a, key=lambda rs: max(r["val_score"] for r in rs))
            pick_full = full.get(knobs(pick))
            pick_val = max(r["val_score"] for r in pick_full) if pick_full else float("nan")
            test = {"asha": next(r["test_oa"] for r in pick if "test_oa" in r),
                    "fifo": next(r["test_oa"] for r in best_f if "test_oa" in r)}
            gap = 100 * (best_f_val - pick_val)
            lines += ["", "## (a) ASHA against every trial at full budget", "",
                      f"{args.trials} trials, {args.steps} steps each, validation every 5 steps; ASHA grace "
                      f"{args.grace}, reduction {args.reduction:g}, 2 trials at once; FIFO "
                      f"{args.fifo_concurrency} at once; same configs in both runs: {same}.", "",
                      "| | ASHA | FIFO (full budget) |", "| --- | --- | --- |",
                      f"| trial-steps | {steps_a} | {steps_f} |",
                      f"| trials run to the end | {len(done_a)} | {len(f)} |",
                      f"| wall | {asha_wall:.0f} s | {fifo_wall:.0f} s |",
                      f"| best val OA (full-budget score of the picked config) | {100 * pick_val:.2f} | "
                      f"{100 * best_f_val:.2f} |",
                      f"| its test OA | {100 * test['asha']:.2f} | {100 * test['fifo']:.2f} |", "",
                      f"**ASHA trial-steps ÷ FIFO: {100 * steps_a / steps_f:.1f} %** (target ≤ 40 %); "
                      f"**the picked config's full-budget val OA is {gap:.2f} points below the best "
                      f"full-budget trial** (target ≤ 1)."]
            lines.append(f"per-trial steps (ASHA): {sorted(max(r['step'] for r in rs) for rs in a.values())}")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
