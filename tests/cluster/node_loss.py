"""Node-loss drills: a worker node dies mid-ingest, mid-pretraining or mid-sweep; the job still completes.

    python -m tests.cluster.node_loss --work /tmp/drill --report /tmp/drill/report.json [--kill all]
    python -m tests.cluster.node_loss --drill pretrain --work /tmp/drill --report /tmp/drill/report.json
    python -m tests.cluster.node_loss --drill tune --work /tmp/drill --report /tmp/drill/report.json

Ingest (the default):
On one machine, a multi-node Ray cluster (`ray.cluster_utils.Cluster`: a head with 0 CPUs, so every task
runs on a worker node, plus ``--workers`` nodes of 1 CPU) ingests a synthetic archive twice with the tiny
preset and one task per 4 x 4 work units (``group_units=4``: tasks of seconds, so the loss lands inside
one, which has written some of its units and not others): first undisturbed (the reference), then again
into a fresh output while the drill kills a worker node without warning (``remove_node(node,
allow_graceful=False)``: its raylet, workers and object store go at once) once a third of the units are
written, choosing the node whose task started last (or, before the state API's first answer, a node in
turn: every node runs a task mid-run). The report (JSON) says what was lost (the attempts
that died with the node) and what was redone (attempts after a task's first; units the re-run found
already written are skipped, not redone), when the re-run started and ended after the kill, and whether
every output file is byte-identical to the reference. A kill that finds its node between tasks loses
nothing; the drill then tries again on a fresh output with the node replaced (``tries_needed``).

A run that lost all its capacity would otherwise wait for resources forever: ``--deadline`` bounds the
drilled run, and past it the report names the capacity left and the process exits with status 3.

Pretrain (``--drill pretrain``, :func:`pretrain_drill`): an elastic SpectralGPT-tiny run
(``scaling.num_workers: [1, 2]``, ZeRO-2, one worker per node) loses the node of one of its two workers a
few steps after a checkpoint. Ray Train V2 restarts the group with the one worker the cluster still
holds, from the latest checkpoint (resharded for the smaller world), and the run finishes with the same
step count and the same global batch (gradient accumulation 2 instead of 1). The report gives the step
reached at the kill, the step resumed from, the steps redone and the time from the kill to the first
step of the restarted group, read from the workers' own step lines in the cluster's logs.

Tune (``--drill tune``, :func:`tune_drill`): a FIFO sweep of 3 linear-probe trials (1 worker each, 2
at once on 2 two-CPU nodes, so each node keeps a whole CPU for Ray Data's one-CPU tasks beside a trial's
0.5-CPU worker; the trial drivers on the head, by its ``trial_driver`` resource as in
``cluster/``) loses the node of a running trial's worker once every trial in flight has checkpointed. The
sweep finishes with every trial accounted for: each one TERMINATED (its full budget, ``test_*`` reported) or
ERROR with its reason, and the results table written. Per trial the report gives Ray Train's restarts
(the steps its worker groups started at), the steps redone (reported before the loss and trained
again) and the time from the kill to the first report of the restarted trial.

Every drill runs in a process of its own: the Cluster must not meet the test session's local Ray (one Ray per
process), and `RAY_TMPDIR` keeps its address file away from other Ray users of the machine (a plain
`ray.init()` elsewhere would otherwise join this cluster). Never `ray stop`: only this cluster's nodes
are removed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import socket
import sys
import threading
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEADLINE_EXIT = 3


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def digests(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root``, by relative path."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _ingest_config(items: str, output: Path):
    from jobs.cli import load_config
    from jobs.ingest import IngestJobConfig

    return load_config(IngestJobConfig, REPO / "configs" / "ingest" / "tiny.yaml", [],
                       {"items": items, "output": str(output)})


def _tasks(address: str) -> list[dict]:
    """Every task attempt the cluster's state API knows (one row per attempt)."""
    from ray.util.state import list_tasks

    return [t.__dict__ if hasattr(t, "__dict__") else dict(t)
            for t in list_tasks(address=address, limit=10_000, detail=True, raise_on_missing_output=False)]


def _final_tasks(address: str, before: set[str], wait_s: float = 20.0) -> list[dict]:
    """The run's task attempts once their last state has reached the state API (events arrive in batches)."""
    deadline = time.time() + wait_s
    while True:
        tasks = [x for x in _tasks(address) if x["task_id"] not in before]
        if all(x["state"] in ("FINISHED", "FAILED") for x in tasks) or time.time() > deadline:
            return tasks
        time.sleep(1.0)


def _add_worker(cluster):
    return cluster.add_node(num_cpus=1, object_store_memory=200 * 2**20, dashboard_agent_listen_port=_port())


def _drilled_run(cluster, nodes: list, items: str, out: Path, *, kill: str, deadline_s: float,
                 kill_after_units: int, fallback: int = 0) -> dict:
    """One ingest into ``out`` during which worker nodes are killed; its part of the report."""
    import ray

    from jobs.ingest import run

    tasks_before = {x["task_id"] for x in _tasks(cluster.address)}
    t0 = time.perf_counter()
    th, result = _in_thread(lambda: run(_ingest_config(items, out)), key="summary")
    units_dir = out / "units"
    by_id = {n.node_id: n for n in nodes}
    # The state API answers in about a second, as long as a warm re-run of this small ingest takes on
    # a fast host: a poller keeps the latest list of running tasks, so the kill needs no query of its own.
    latest: list = []
    victims: list = []

    def poll():
        while th.is_alive() and not victims:
            latest[:] = sorted((x for x in _tasks(cluster.address) if x["state"] == "RUNNING"
                                and x.get("node_id") in by_id and x["task_id"] not in tasks_before),
                               key=lambda x: x.get("start_time_ms") or 0)
            time.sleep(0.05)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    while th.is_alive() and not victims:
        time.sleep(0.05)
        if len(list(units_dir.glob("*"))) < kill_after_units:
            continue
        # the node whose task started last is the likeliest to be still running it: the loss lands mid-task.
        # Before the poll's first answer (about a second: as long as a whole warm re-run on a fast host),
        # a node taken in turn by try: the ingest has as many tasks as nodes, so each is busy mid-run.
        running = list(latest)
        if kill != "one":
            victims = list(nodes)
        elif running:
            victims = [by_id[running[-1]["node_id"]]]
        else:
            victims = [nodes[fallback % len(nodes)]]
    poller.join(timeout=10)
    if not victims:  # the run outpaced the poll (warm workers make a re-run fast): the caller tries again
        th.join()
        return {"no_kill": f"the drilled run ended before a kill after {kill_after_units} units",
                "lost_running": 0}
    on_victims = {v.node_id for v in victims}
    rep: dict = {"killed_at_s": round(time.perf_counter() - t0, 2),
                 "victim": "last started" if running or kill != "one" else "in turn (no poll yet)",
                 "unit_files_at_kill": len(list(units_dir.glob("*")))}
    t_kill, kill_ms = time.perf_counter(), time.time() * 1000
    for v in victims:
        cluster.remove_node(v, allow_graceful=False)
        nodes.remove(v)
    th.join(timeout=max(0.0, deadline_s - (time.perf_counter() - t0)))
    if th.is_alive():
        alive = [n for n in ray.nodes() if n["Alive"] and n["NodeID"] != cluster.head_node.node_id]
        cpus = sum(n["Resources"].get("CPU", 0) for n in alive)
        rep["error"] = (f"deadline: the drilled run did not finish within {deadline_s:.0f} s of its "
                        f"start; {len(alive)} worker node(s) alive, {cpus:g} CPU left for its tasks")
        return rep
    if "error" in result:
        rep["error"] = f"the drilled run failed: {result['error']}"
        return rep
    rep["kill_to_end_s"] = round(time.perf_counter() - t_kill, 2)
    rep["drilled_s"] = round(time.perf_counter() - t0, 2)
    rep["units_processed"] = result["summary"]["units_processed"]
    rep["units_skipped"] = result["summary"]["units_skipped"]  # found written: not redone
    tasks = _final_tasks(cluster.address, tasks_before)
    rep["tasks"] = len({x["task_id"] for x in tasks if "FlatMap" in x["name"]})
    # lost: attempts that died with the node; redone: every attempt after a task's first
    lost = [x for x in tasks if x["state"] == "FAILED" and x.get("node_id") in on_victims]
    redone = [x for x in tasks if x.get("attempt_number", 0) > 0]
    rep["lost_running"] = len(lost)
    rep["lost_errors"] = sorted({str(x.get("error_type")) for x in lost})
    rep["redone"] = len(redone)
    # when Ray re-ran the lost work and when that was done, after the kill
    rep["redo_started_after_kill_s"] = round(min(
        [(x["start_time_ms"] - kill_ms) / 1000 for x in redone if x.get("start_time_ms")], default=-1), 2)
    rep["redone_after_kill_s"] = round(max(
        [(x["end_time_ms"] - kill_ms) / 1000 for x in redone if x.get("end_time_ms")], default=-1), 2)
    return rep


def drill(work: Path, *, workers: int = 2, kill: str = "one", deadline_s: float = 300.0,
          size_px: int = 1032, kill_after: float = 1 / 6, tries: int = 8) -> dict:
    """Run the reference and the drilled ingest on a fresh multi-node cluster; the report (see module doc).

    A kill that found its node between tasks (nothing lost), or a run that ended before the kill, is tried
    again on a fresh output (the node replaced; after a run that outpaced the kill, killing at the first
    written unit), up to ``tries`` times; ``tries_needed`` says how many it took."""
    import ray
    from ray.cluster_utils import Cluster

    from jobs.ingest import run
    from pipeline import synthetic

    archive = synthetic.make_archive(work / "archive", scenes=2, s1_scenes=1, seed=3, size_px=size_px)
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "include_dashboard": True, "dashboard_port": _port(),
        "dashboard_agent_listen_port": _port(), "object_store_memory": 200 * 2**20,
    })
    nodes = [_add_worker(cluster) for _ in range(workers)]
    report: dict = {"workers": workers, "kill": kill, "deadline_s": deadline_s}
    try:
        ray.init(address=cluster.address, runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}})
        kill_after_units = 1
        if kill == "one":  # the reference; a run that loses every node is only drilled for its deadline
            t = time.perf_counter()
            ref = run(_ingest_config(archive.items, work / "reference"))
            report["reference_s"] = round(time.perf_counter() - t, 2)
            report["units"] = ref["units"]
            kill_after_units = max(1, int(ref["units"] * kill_after))
        for attempt in range(1, tries + 1):
            out = work / f"drilled-{attempt}"
            rep = _drilled_run(cluster, nodes, archive.items, out, kill=kill, deadline_s=deadline_s,
                               kill_after_units=kill_after_units, fallback=attempt)
            report.pop("no_kill", None)
            report.update(rep, tries_needed=attempt)
            if "error" in rep or rep["lost_running"] or attempt == tries:
                break
            if "no_kill" in rep:
                kill_after_units = 1  # kill as soon as a unit is written
            nodes.extend(_add_worker(cluster) for _ in range(workers - len(nodes)))
        if "no_kill" in report:
            report["error"] = f"{report['no_kill']} in {tries} tries"
        if "error" in report:
            return report
        a, b = digests(work / "reference"), digests(out)
        report["files"] = len(a)
        report["identical"] = a == b
        report["differing"] = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
        return report
    finally:
        _end(cluster)


def _in_thread(fn, key: str = "out") -> tuple[threading.Thread, dict]:
    """``fn()`` started in a daemon thread; the dict it fills gets ``key`` (the return value) or
    ``error`` (the exception's repr): the drill decides what either means."""
    result: dict = {}

    def job():
        try:
            result[key] = fn()
        except BaseException as e:  # noqa: BLE001 - reported, the drill decides
            result["error"] = repr(e)

    th = threading.Thread(target=job, daemon=True)
    th.start()
    return th, result


def _cluster(workers: int, *, cpus: float = 1, resources: dict | None = None):
    """A head with 0 CPUs (the driver and Ray Train's controller live there: losing a worker node never
    takes them) and ``workers`` nodes of ``cpus`` CPUs; the connected driver."""
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "include_dashboard": True, "dashboard_port": _port(),
        "dashboard_agent_listen_port": _port(), "object_store_memory": 200 * 2**20,
        "resources": resources or {},
    })
    nodes = [cluster.add_node(num_cpus=cpus, object_store_memory=200 * 2**20,
                              dashboard_agent_listen_port=_port()) for _ in range(workers)]
    env = {k: os.environ[k] for k in ("DS_ACCELERATOR", "TORCH_EXTENSIONS_DIR") if k in os.environ}
    ray.init(address=cluster.address, runtime_env={"env_vars": {"PYTHONPATH": str(REPO), **env}})
    return cluster, nodes


def _end(cluster) -> None:
    """End this cluster's nodes (only its own) without a graceful shutdown: the cluster is the drill's
    own, and a graceful one can wait on the driver (a stuck run, or Tune's threads, keep it connected;
    ``Cluster.shutdown`` then refuses or hangs). ``main`` ends the process right after, with
    ``os._exit``, before the driver's Ray client notices its GCS is gone (it aborts the process after
    60 s of that)."""
    for node in [*cluster.worker_nodes, cluster.head_node]:
        node.kill_all_processes(check_alive=False, allow_graceful=False)


def _capacity(cluster) -> str:
    import ray

    alive = [n for n in ray.nodes() if n["Alive"] and n["NodeID"] != cluster.head_node.node_id]
    cpus = sum(n["Resources"].get("CPU", 0) for n in alive)
    return f"{len(alive)} worker node(s) alive, {cpus:g} CPU left"


class StepLines:
    """The training workers' step lines (``[<tag>] step N | ...``, rank 0) and group starts (``[<tag>]
    worker group start at step N``) as they appear in the cluster's worker logs, each with the time this
    process first saw it (the lines carry no time of their own)."""

    def __init__(self, session_dir: str, tag: str):
        self.logs = Path(session_dir) / "logs"
        self.step_re = re.compile(rf"\[{tag}\] step\s+(\d+) \|")
        self.start_re = re.compile(rf"\[{tag}\] worker group start at step (\d+)")
        self.seen: dict[tuple[str, int], int] = {}
        self.steps: list[tuple[float, int]] = []  # (time seen, step)
        self.starts: list[tuple[float, int]] = []

    def poll(self) -> None:
        now = time.perf_counter()
        for f in self.logs.glob("worker-*.out"):
            text = f.read_text(errors="replace")
            for kind, rx, out in (("s", self.step_re, self.steps), ("g", self.start_re, self.starts)):
                hits = [int(m.group(1)) for m in rx.finditer(text)]
                key = (f"{kind}{f.name}", 0)
                for v in hits[self.seen.get(key, 0):]:
                    out.append((now, v))
                self.seen[key] = len(hits)

    @property
    def last_step(self) -> int:
        return max((s for _, s in self.steps), default=0)


def _train_worker_nodes(address: str) -> list[str]:
    """Node ids of the live Ray Train workers, in the order the state API lists them."""
    from ray.util.state import list_actors

    alive = [("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")]
    return [a.node_id for a in list_actors(address=address, limit=1000, raise_on_missing_output=False,
                                             filters=alive)]


#: Ray Train's poll of its workers (default 2 s); a checkpoint counts once the controller has polled it
HEALTH_CHECK_S = 0.5


def pretrain_drill(work: Path, *, deadline_s: float = 420.0, steps: int = 24, every: int = 8,
                   settle_s: float = 4 * HEALTH_CHECK_S) -> dict:
    """An elastic pretraining run on 2 one-worker nodes (checkpoints every ``every`` steps) loses one node
    at the first step logged ``settle_s`` after step ``every``, so its first checkpoint has reached Ray
    Train's controller; the report (see the module doc)."""
    from jobs.cli import load_config
    from jobs.pretrain import PretrainConfig, run
    from pipeline.synthetic.samples import make_shards

    shards = make_shards(work / "shards")
    cfg = load_config(PretrainConfig, REPO / "configs" / "pretrain" / "spectralgpt_tiny.yaml", [
        f"data.path={shards}", f"storage={work / 'runs'}", "name=elastic",
        f"stages=[{{img_size: 16, steps: {steps}, batch_size: 8}}]", "scaling.num_workers=[1, 2]",
        # one worker per node (3 // 2; Ray's node CPUs are whole), 1 CPU left on each for Ray Data
        "scaling.cpus_per_worker=2", f"checkpoint.every_steps={every}", "log.every_steps=1",
        "log.plots=false", "log.tensorboard=false", "export=false", "max_failures=2",
        # streamed, not cached: a cache's blocks would die with the node's object store
        "data.cache=false",
    ], {})
    os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] = str(HEALTH_CHECK_S)  # Ray Train hands it on
    cluster, nodes = _cluster(2, cpus=3)
    report: dict = {"drill": "pretrain", "deadline_s": deadline_s, "steps": steps, "checkpoint_every": every,
                    "num_workers": list(cfg.scaling.num_workers), "global_batch": cfg.stages[0].batch_size}
    lines = StepLines(cluster.head_node.get_session_dir_path(), "pretrain")
    try:
        t0 = time.perf_counter()
        th, result = _in_thread(lambda: run(cfg))
        while th.is_alive() and time.perf_counter() - t0 < deadline_s:
            time.sleep(0.2)
            lines.poll()
            t_ckpt = min((t for t, st in lines.steps if st == every), default=None)
            if t_ckpt is not None and time.perf_counter() - t_ckpt >= settle_s and lines.last_step > every:
                break
        on = set(_train_worker_nodes(cluster.address))
        victims = [n for n in nodes if n.node_id in on]
        if not th.is_alive() or not victims:
            report["error"] = (f"no kill: the run ended or had no worker on a worker node {settle_s} s after "
                               f"step {every} (last step seen {lines.last_step})")
            return report
        report["workers_before"] = len(on)
        report["killed_at_step"] = lines.last_step
        t_kill = time.perf_counter()
        report["killed_at_s"] = round(t_kill - t0, 2)
        cluster.remove_node(victims[-1], allow_graceful=False)
        nodes.remove(victims[-1])
        while th.is_alive() and time.perf_counter() - t0 < deadline_s:
            th.join(timeout=0.5)
            lines.poll()
        if th.is_alive():
            report["error"] = (f"deadline: the drilled run did not finish within {deadline_s:.0f} s of its "
                               f"start; {_capacity(cluster)} for its workers")
            return report
        lines.poll()
        if "error" in result:
            report["error"] = f"the drilled run failed: {result['error']}"
            return report
        out = result["out"]
        hist = out["history"]
        resumed = out["starts"][-1]
        # the restarted group's start line, then its first step (the old group's surviving rank may
        # still log a step or two after the kill: those are not the recovery)
        restart = min((t for t, st in lines.starts if t >= t_kill and st == resumed), default=None)
        after = [(t, s) for t, s in lines.steps if restart is not None and t >= restart and s > resumed]
        report.update(
            drilled_s=round(time.perf_counter() - t0, 2),
            starts=out["starts"],
            final_step=out["metrics"].get("step"),
            steps_logged=[h["step"] for h in hist],
            world_by_step=[h["world"] for h in hist],
            samples_by_step=[h["samples"] for h in hist],
            resumed_from_step=resumed,
            steps_redone=report["killed_at_step"] - resumed,
            # from the kill to the restarted group's start line and to its first step, in its logs
            restart_s=round(restart - t_kill, 2) if restart is not None else None,
            recover_s=round(min(t for t, _ in after) - t_kill, 2) if after else None,
            kill_to_end_s=round(time.perf_counter() - t_kill, 2),
        )
        return report
    finally:
        _end(cluster)


def _progress(trial_dir: Path) -> list[dict]:
    """A Tune trial's reports in order (``result.json``, one JSON object a line)."""
    f = trial_dir / "result.json"
    return [json.loads(x) for x in f.read_text().splitlines() if x.strip()] if f.is_file() else []


def _checkpoints(run_dir: Path) -> list[Path]:
    """A Ray Train run's checkpoint directories, oldest first (not ``checkpoint_manager_snapshot.json``)."""
    return sorted(q for q in run_dir.glob("checkpoint_*") if q.is_dir())


def tune_drill(work: Path, *, deadline_s: float = 300.0, trials: int = 3, steps: int = 12) -> dict:
    """A 3-trial sweep on 2 two-CPU nodes loses one node mid-trial; the report (see the module doc)."""
    from ray.tune import ExperimentAnalysis

    from jobs.cli import load_config
    from jobs.train.engine import STATE_FILE
    from jobs.tune import DONE_FILE, SweepConfig, run
    from tests.jobs.conftest import make_benchmark

    bench = work / "toy"
    make_benchmark(bench, "classification", splits={"train": 32, "val": 8, "test": 8})
    cfg = load_config(SweepConfig, REPO / "configs" / "tune" / "tiny.yaml", [
        f"finetune.stages=[{{img_size: 32, steps: {steps}, batch_size: 8}}]",
        "finetune.checkpoint.every_steps=4", "finetune.log.every_steps=2",
        "finetune.eval={every_steps: 2, batch_size: 16, save_predictions: false}",
        # streamed, not cached: the shared datasets' cached blocks would die with the node's object store
        "finetune.data.cache=false",
        "space={mode: linear_probe, batch_size: 8, weight_decay: 0.0, lr: {loguniform: [0.04, 1.6]}}",
        f"num_samples={trials}",
        "scheduler={kind: fifo}", "max_concurrent_trials=2",
        "driver_resources={trial_driver: 0.01, memory: 134217728}",
    ], {"data": f"toy={bench}", "storage": str(work / "sweeps"), "name": "drill"})
    os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] = str(HEALTH_CHECK_S)  # Ray Train hands it on
    cluster, nodes = _cluster(2, cpus=2, resources={"trial_driver": 100})
    report: dict = {"drill": "tune", "deadline_s": deadline_s, "trials": trials, "steps": steps}
    runs = work / "sweeps" / "drill" / "toy" / "random" / "runs"
    try:
        t0 = time.perf_counter()
        th, result = _in_thread(lambda: run(cfg))
        victims: list = []
        # kill once every trial in flight has checkpointed (and Ray Train's controller has polled it),
        # on a node running a trial's worker: whichever trial loses its worker resumes, not restarts
        while th.is_alive() and not victims and time.perf_counter() - t0 < deadline_s:
            time.sleep(0.3)
            flying = [d for d in runs.glob("*") if d.is_dir() and not (d / DONE_FILE).exists()]
            if not flying or not all(_checkpoints(d) for d in flying):
                continue
            time.sleep(4 * HEALTH_CHECK_S)
            on = set(_train_worker_nodes(cluster.address))
            victims = [n for n in nodes if n.node_id in on][-1:]
        if not victims:
            report["error"] = "no kill: the sweep ended (or its deadline passed) before a trial checkpointed"
            return report
        t_kill, kill_wall = time.perf_counter(), time.time()
        report["killed_at_s"] = round(t_kill - t0, 2)
        report["trials_started_at_kill"] = len(list(runs.glob("*")))
        cluster.remove_node(victims[0], allow_graceful=False)
        nodes.remove(victims[0])
        th.join(timeout=max(0.0, deadline_s - (time.perf_counter() - t0)))
        if th.is_alive():
            report["error"] = (f"deadline: the sweep did not finish within {deadline_s:.0f} s of its start; "
                               f"{_capacity(cluster)} for its trials")
            return report
        if "error" in result:
            report["error"] = f"the sweep failed: {result['error']}"
            return report
        report["drilled_s"] = round(time.perf_counter() - t0, 2)
        report["kill_to_end_s"] = round(time.perf_counter() - t_kill, 2)
        out = result["out"]
        report["results_md"] = str(Path(out["outputs"]["toy"]) / "results.md")
        report["results_csv"] = str(Path(out["outputs"]["toy"]) / "results.csv")
        analysis = ExperimentAnalysis(str(work / "sweeps" / "drill" / "toy" / "random"))
        rows = []
        for t in analysis.trials:
            reports = _progress(Path(t.path))
            steps_seen = [r["step"] for r in reports if "step" in r]
            ckpts = _checkpoints(runs / t.trial_id)
            starts = json.loads((ckpts[-1] / STATE_FILE).read_text())["starts"] if ckpts else [0]
            # a restart rewinds the reported steps to where its checkpoint was
            rewinds = [i for i in range(1, len(steps_seen)) if steps_seen[i] <= steps_seen[i - 1]]
            redone = (steps_seen[rewinds[0] - 1] - starts[-1]) if rewinds else 0
            # a restarted trial's first report after the kill (its group resumed from a checkpoint);
            # Tune's timestamps are truncated to whole seconds, so one in the kill's own second may
            # precede it: only later seconds count (recover_s over-estimated by under 1 s)
            after = [r["timestamp"] - kill_wall for r in reports
                     if r.get("timestamp", 0) > kill_wall] if len(starts) > 1 else []
            error = None
            if t.status == "ERROR":
                err = t.get_error()
                error = (str(err) if err else "error").strip().splitlines()[-1][:200]
            rows.append({
                "trial_id": t.trial_id, "status": t.status, "error": error,
                "last_step": steps_seen[-1] if steps_seen else 0, "completed": any(
                    k.startswith("test_") for k in (reports[-1] if reports else {})),
                "train_starts": starts, "steps_redone": redone,
                "num_failures": t.num_failures,
                # Tune's report timestamps are whole seconds
                "recover_s": round(min(after), 1) if after else None,
            })
        report["trial_rows"] = rows
        report["restarted"] = [r["trial_id"] for r in rows if len(r["train_starts"]) > 1 or r["num_failures"]]
        report["steps_redone"] = sum(r["steps_redone"] for r in rows)
        report["workers_left"] = len(nodes)
        return report
    finally:
        _end(cluster)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.cluster.node_loss",
                                description=__doc__.split("\n")[0])
    p.add_argument("--drill", choices=["ingest", "pretrain", "tune"], default="ingest")
    p.add_argument("--work", required=True, type=Path)
    p.add_argument("--report", required=True, type=Path)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--kill", choices=["one", "all"], default="one")
    p.add_argument("--deadline", type=float, default=None, help="seconds for the drilled run")
    p.add_argument("--size-px", type=int, default=1032)
    a = p.parse_args(argv)
    a.work.mkdir(parents=True, exist_ok=True)
    deadline = {} if a.deadline is None else {"deadline_s": a.deadline}
    try:
        if a.drill == "pretrain":
            report = pretrain_drill(a.work, **deadline)
        elif a.drill == "tune":
            report = tune_drill(a.work, **deadline)
        else:
            report = drill(a.work, workers=a.workers, kill=a.kill, size_px=a.size_px, **deadline)
    except Exception:  # noqa: BLE001 - a bug of the drill itself: reported like any failure
        report = {"drill": a.drill, "error": f"the drill failed: {traceback.format_exc()[-3000:]}"}
    a.report.write_text(json.dumps(report, indent=1, sort_keys=True))
    print(json.dumps(report, indent=1, sort_keys=True), flush=True)
    sys.stderr.flush()
    # The cluster's nodes are gone (``_end``), and a run that lost its capacity still waits inside
    # Ray: end the process now instead of in Ray's exit handlers.
    os._exit(DEADLINE_EXIT if "error" in report else 0)


if __name__ == "__main__":
    sys.exit(main())
