"""Sweep figures: ASHA's efficiency against running every trial to its end, and the sweep overhead.

    python -m bench.tune [--trials 24] [--steps 45] [--work DIR]

(a) ASHA efficiency. On the synthetic benchmark (``pipeline.convert.synthetic``: archive truth ->
    converter -> contract-v3 shards, classes that share one mean spectrum), the same ``--trials``
    configs (same space, same seed: the seeded random search draws the same configs in the same
    order) run twice through ``jobs.tune``: once under ASHA on the global step, once FIFO, every
    trial to its full budget. Figures: the full-budget validation score of the config ASHA picks
    against the best full-budget trial (the FIFO run scored every config at full budget), and
    ASHA's trial-steps ÷ FIFO's. Targets: within 1 point, ≤ 40 %. ASHA runs as a user's sweep
    would (``max_concurrent_trials: auto``, 2 at once on 2 CPUs); the FIFO reference runs
    ``--fifo-concurrency`` trials at once (its full-budget scores do not depend on the order, and its
    trials' start-ups overlap). The two runs only compare if one config trains the same in both:
    the report counts the configs whose reports agree. Then both schedulers are replayed over the
    reference's full-budget curves (``replay_ray_asha``: Ray's ASHA, which decides at once and
    lets a trial past an empty rung; ``replay_promotion_asha``: the published ASHA, which pauses
    trials at rungs and promotes), in the search's order and in 200 shuffled orders, with each
    replay's trial-steps, (re)starts and pick. ``--from-work`` recomputes the report from the
    sweeps under ``--work``.
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
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, NamedTuple

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


class Replay(NamedTuple):
    """A scheduler replayed over full-budget curves: trial-steps per trial (search order), the
    trial (re)starts (each pays a Ray Train start-up), and the pick (the best ``val_score`` among
    the trials that reached the full budget)."""

    steps: list[int]
    starts: int
    pick: int | None


def _at(curve: dict[int, float], step: int) -> float:
    """The curve's report at ``step`` (its last report at or before it)."""
    return curve[max(s for s in curve if s <= step)]


def _pick(curves: list[dict[int, float]], steps: list[int], max_t: int) -> int | None:
    done = [i for i, n in enumerate(steps) if n >= max_t]
    return max(done, key=lambda i: (max(curves[i].values()), -i), default=None)


def replay_ray_asha(curves: list[dict[int, float]], *, max_t: int, grace: int, reduction: float,
                    slots: int, startup_s: float, step_s: float) -> Replay:
    """Ray's ``AsyncHyperBandScheduler`` (the one ``jobs.tune`` runs: it decides at once, stopping
    or continuing a trial when it reaches a rung) fed the reports of ``curves`` (step -> val, one
    per trial in search order) with ``slots`` trials at once; a trial reports step ``s`` at
    ``startup_s + s × step_s`` after it starts. Only the order of reports matters to it, so this
    reproduces a sweep's decisions up to the timing noise of a real run."""
    import heapq
    from types import SimpleNamespace

    from ray.tune.schedulers import ASHAScheduler, TrialScheduler

    sched = ASHAScheduler(time_attr="step", metric="val_score", mode="max", max_t=max_t,
                          grace_period=grace, reduction_factor=reduction)
    steps, events, waiting = [0] * len(curves), [], list(range(len(curves)))[::-1]

    def start(t: float) -> None:
        i = waiting.pop()
        sched.on_trial_add(None, SimpleNamespace(trial_id=str(i)))
        for s in curves[i]:
            heapq.heappush(events, (t + startup_s + s * step_s, i, s))

    for _ in range(min(slots, len(waiting))):
        start(0.0)
    ended: set[int] = set()
    while events:
        t, i, s = heapq.heappop(events)
        if i in ended:
            continue
        steps[i] = s
        report = {"step": s, "val_score": curves[i][s]}
        act = sched.on_trial_result(None, SimpleNamespace(trial_id=str(i)), report)
        if act == TrialScheduler.STOP or s >= max_t or s == max(curves[i]):
            ended.add(i)
            if waiting:
                start(t)
    return Replay(steps, len(curves), _pick(curves, steps, max_t))


def replay_promotion_asha(curves: list[dict[int, float]], *, max_t: int, grace: int, reduction: float,
                          slots: int, startup_s: float, step_s: float) -> Replay:
    """The published ASHA (Li et al. 2020, Algorithm 2) over the same curves: a free slot promotes
    the best not-yet-promoted trial in the top ``1/reduction`` of the highest rung that has one, else
    starts the next new trial up to the first rung; a trial waits (paused, not stopped) at its rung
    until it is promoted, and every promotion restarts it (a Ray Train run resumes from its
    checkpoint: one more start-up). Rungs as Ray's: ``grace × reduction^k`` below ``max_t``."""
    import heapq
    import math

    n_rungs = int(math.log(max_t / grace) / math.log(reduction) + 1)
    rungs = [grace * reduction ** k for k in range(n_rungs) if grace * reduction ** k < max_t] + [max_t]
    at: list[dict[int, float]] = [{} for _ in rungs]  # rung -> trial -> val there
    promoted: list[set[int]] = [set() for _ in rungs]
    steps, new, starts = [0] * len(curves), list(range(len(curves)))[::-1], 0
    running: list[tuple[float, int, int]] = []  # (end time, trial, rung reached)

    def job(t: float) -> bool:
        nonlocal starts
        for k in range(len(rungs) - 2, -1, -1):
            top = sorted(at[k], key=lambda i: (-at[k][i], i))[:int(len(at[k]) // reduction)]
            cand = [i for i in top if i not in promoted[k]]
            if cand:
                i = cand[0]
                promoted[k].add(i)
                heapq.heappush(running, (t + startup_s + (rungs[k + 1] - rungs[k]) * step_s, i, k + 1))
                starts += 1
                return True
        if new:
            i = new.pop()
            heapq.heappush(running, (t + startup_s + rungs[0] * step_s, i, 0))
            starts += 1
            return True
        return False

    t = 0.0
    idle = slots
    while idle and job(t):
        idle -= 1
    while running:
        t, i, k = heapq.heappop(running)
        idle += 1
        steps[i] = int(rungs[k])
        at[k][i] = _at(curves[i], int(rungs[k]))
        while idle and job(t):
            idle -= 1
    return Replay(steps, starts, _pick(curves, steps, max_t))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.tune", description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=24)
    ap.add_argument("--steps", type=int, default=45, help="full budget per trial (global steps)")
    ap.add_argument("--grace", type=int, default=5, help="ASHA grace period (steps)")
    ap.add_argument("--reduction", type=float, default=4.0)
    ap.add_argument("--per-class", type=int, default=40)
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--fifo-concurrency", type=int, default=3, help="FIFO reference trials at once")
    ap.add_argument("--work", default=None)
    ap.add_argument("--skip", nargs="*", default=[], choices=["asha", "overhead"])
    ap.add_argument("--from-work", action="store_true",
                    help="(a) from the sweeps already under --work (no new runs; walls not known)")
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
        if args.from_work:
            data = work / "synthetic"
        else:
            data, source = build_benchmark(work, tiles=3, size_px=768, per_class=args.per_class, seed=0)
            lines.append(f"benchmark: {source} ({time.perf_counter() - t0:.0f} s to build)")
            cli.init_ray(num_cpus=args.cpus)
        manifest = json.loads((data / "manifest.json").read_text())
        lines.append(f"benchmark splits {manifest['benchmark']['splits']}")
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
            asha_wall = fifo_wall = float("nan")
            if not args.from_work:
                _, asha_wall = sweep(work, data, "asha", [*common, "scheduler.kind=asha",
                                                          f"scheduler.grace_period={args.grace}",
                                                          f"scheduler.reduction_factor={args.reduction}"])
                per = sorted(max(r["step"] for r in rs) for rs in trials(work, "asha").values())
                print(f"ASHA: {asha_wall:.0f} s, per-trial steps {per}", flush=True)
                _, fifo_wall = sweep(work, data, "fifo", [*common, "scheduler.kind=fifo",
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
            ranked = sorted(full.items(), key=lambda kv: -max(r["val_score"] for r in kv[1]))
            own = max(r["val_score"] for r in pick)
            rank = next((i + 1 for i, (k, _) in enumerate(ranked) if k == knobs(pick)), None)
            lines += [f"the pick ranks {rank} of "
                      f"{len(ranked)} by full-budget val OA; its own val OA in the ASHA run {100 * own:.2f} "
                      f"(FIFO run of the same config {100 * pick_val:.2f})", "",
                      "| config | ASHA steps | ASHA best val OA | full-budget val OA | full-budget test OA |",
                      "| --- | --- | --- | --- | --- |"]
            by_knobs, nan = {knobs(rs): rs for rs in a.values()}, float("nan")
            # the same config, seed and data should give the same curve in both runs
            alike = sum(all(abs(r["val_score"] - x["val_score"]) < 1e-9 and abs(r["loss"] - x["loss"]) < 1e-6
                            for r, x in zip(by_knobs.get(k, []), rs, strict=False)) for k, rs in full.items())
            lines.insert(-3, f"configs whose ASHA-run reports (loss, val OA) equal their FIFO-run reports up "
                             f"to the ASHA run's last step: {alike} of {len(full)}")
            for k, rs in ranked:
                ars = by_knobs.get(k, [])
                cfg = ", ".join(f"{n}={v:.3g}" if isinstance(v, float) else f"{n}={v}" for n, v in k)
                lines.append(f"| {cfg} | {max((r['step'] for r in ars), default=0)} | "
                             f"{100 * max((r['val_score'] for r in ars), default=nan):.2f} | "
                             f"{100 * max(r['val_score'] for r in rs):.2f} | "
                             f"{100 * next((r['test_oa'] for r in rs if 'test_oa' in r), nan):.2f} |")
            lines += ["", *replays(a, f, max_t=args.steps, grace=args.grace, reduction=args.reduction)]
    print("\n".join(lines))
    return 0


def replays(a: dict[str, list[dict[str, Any]]], f: dict[str, list[dict[str, Any]]], *, max_t: int, grace: int,
            reduction: float) -> list[str]:
    """Ray's ASHA and the published (promotion-based) ASHA replayed over the reference's full-budget
    curves in search order (trial ids), 2 slots, timed like the ASHA run's trials; markdown lines."""
    import statistics

    order = sorted(f)
    curves = [{int(r["step"]): float(r["val_score"]) for r in f[t] if r["val_score"] == r["val_score"]}
              for t in order]
    first = [rs[0]["time_total_s"] for rs in a.values()]
    per_step = [(r2["time_total_s"] - r1["time_total_s"]) / (r2["step"] - r1["step"])
                for rs in a.values() for r1, r2 in zip(rs, rs[1:], strict=False) if r2["step"] > r1["step"]]
    step_s = statistics.median(per_step)
    startup_s = statistics.median(first) - grace * step_s
    kw = dict(max_t=max_t, grace=grace, reduction=reduction, slots=2, startup_s=startup_s, step_s=step_s)
    best = max(max(c.values()) for c in curves)
    full = max_t * len(curves)
    out = [f"Replays over the full-budget curves ({len(curves)} trials in search order, 2 at once, "
           f"start-up {startup_s:.0f} s and {step_s:.2f} s a step as measured in the ASHA run):", "",
           "| scheduler | trial-steps | ÷ full | (re)starts | start-up + step s | pick − best (val pts) |",
           "| --- | --- | --- | --- | --- | --- |"]
    measured = [max(r["step"] for r in rs) for _, rs in sorted(a.items())]
    for name, fn in (("Ray ASHA (stops at once; what jobs.tune runs)", replay_ray_asha),
                     ("published ASHA (pauses, promotes)", replay_promotion_asha)):
        r = fn(curves, **kw)
        if fn is replay_ray_asha:
            agree = sum(x == y for x, y in zip(r.steps, measured, strict=False))
            out.insert(1, f"Ray ASHA's replay gives {agree} of the {len(measured)} trials the steps the "
                          f"measured ASHA run gave them (replay {r.steps}; measured {measured}).")
        n = sum(r.steps)
        gap = 100 * (best - max(curves[r.pick].values())) if r.pick is not None else float("nan")
        out.append(f"| {name} | {n} | {100 * n / full:.1f} % | {r.starts} | "
                   f"{r.starts * startup_s + n * step_s:.0f} | {gap:.2f} |")
    out.append(f"| every trial to the end | {full} | 100 % | {len(curves)} | "
               f"{len(curves) * startup_s + full * step_s:.0f} | 0 |")
    # the order the seeded search drew the configs in is one of many: the same curves in other orders
    rng, perms = random.Random(0), 200
    out += ["", f"Over {perms} other orders of the same {len(curves)} curves (seeded shuffles):", "",
            "| scheduler | ÷ full: mean (min–max) | ≤ 40 % | pick − best: mean (max) | within 1 point |",
            "| --- | --- | --- | --- | --- |"]
    for name, fn in (("Ray ASHA", replay_ray_asha), ("published ASHA", replay_promotion_asha)):
        fr, gaps = [], []
        for _ in range(perms):
            idx = rng.sample(range(len(curves)), len(curves))
            r = fn([curves[i] for i in idx], **kw)
            fr.append(100 * sum(r.steps) / full)
            gaps.append(100 * (best - max(curves[idx[r.pick]].values())) if r.pick is not None else 100.0)
        out.append(f"| {name} | {statistics.mean(fr):.1f} % ({min(fr):.1f}–{max(fr):.1f}) | "
                   f"{sum(x <= 40 for x in fr)} of {perms} | {statistics.mean(gaps):.2f} ({max(gaps):.2f}) | "
                   f"{sum(g <= 1 for g in gaps)} of {perms} |")
    return out


if __name__ == "__main__":
    raise SystemExit(main())
