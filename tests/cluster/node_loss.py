"""Node-loss drill for the ingest: a worker node dies mid-run; the job completes and writes the same bytes.

    python -m tests.cluster.node_loss --work /tmp/drill --report /tmp/drill/report.json [--kill all]

On one machine, a multi-node Ray cluster (`ray.cluster_utils.Cluster`: a head with 0 CPUs, so every task
runs on a worker node, plus ``--workers`` nodes of 1 CPU) ingests a synthetic archive twice with the tiny
preset and one task per 4 x 4 work units (``group_units=4``: tasks of seconds, so the loss lands inside
one, which has written some of its units and not others): first undisturbed (the reference), then again
into a fresh output while the drill kills a worker node without warning (``remove_node(node,
allow_graceful=False)``: its raylet, workers and object store go at once) once a third of the units are
written, choosing the node whose task started last. The report (JSON) says what was lost (the attempts
that died with the node) and what was redone (attempts after a task's first; units the re-run found
already written are skipped, not redone), when the re-run started and ended after the kill, and whether
every output file is byte-identical to the reference. A kill that finds its node between tasks loses
nothing; the drill then tries again on a fresh output with the node replaced (``tries_needed``).

A run that lost all its capacity would otherwise wait for resources forever: ``--deadline`` bounds the
drilled run, and past it the report names the capacity left and the process exits with status 3.

Runs in a process of its own: the Cluster must not meet the test session's local Ray (one Ray per
process), and `RAY_TMPDIR` keeps its address file away from other Ray users of the machine (a plain
`ray.init()` elsewhere would otherwise join this cluster). Never `ray stop`: only this cluster's nodes
are removed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import socket
import sys
import threading
import time
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
                 kill_after_units: int) -> dict:
    """One ingest into ``out`` during which worker nodes are killed; its part of the report."""
    import ray

    from jobs.ingest import run

    tasks_before = {x["task_id"] for x in _tasks(cluster.address)}
    result: dict = {}

    def job():
        try:
            result["summary"] = run(_ingest_config(items, out))
        except BaseException as e:  # noqa: BLE001 - reported, the drill decides
            result["error"] = repr(e)

    t0 = time.perf_counter()
    th = threading.Thread(target=job, daemon=True)
    th.start()
    units_dir = out / "units"
    by_id = {n.node_id: n for n in nodes}
    victims: list = []
    while th.is_alive() and not victims:
        time.sleep(0.2)
        if len(list(units_dir.glob("*"))) < kill_after_units:
            continue
        # the node whose task started last is the likeliest to be still running it: the loss lands mid-task
        running = sorted((x for x in _tasks(cluster.address) if x["state"] == "RUNNING"
                          and x.get("node_id") in by_id and x["task_id"] not in tasks_before),
                         key=lambda x: x.get("start_time_ms") or 0)
        if running:
            victims = [by_id[running[-1]["node_id"]]] if kill == "one" else list(nodes)
    if not victims:  # the run outpaced the poll (warm workers make a re-run fast): the caller tries again
        th.join()
        return {"no_kill": f"the drilled run ended before a kill after {kill_after_units} units",
                "lost_running": 0}
    on_victims = {v.node_id for v in victims}
    rep: dict = {"killed_at_s": round(time.perf_counter() - t0, 2),
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
                               kill_after_units=kill_after_units)
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
    finally:  # this cluster's nodes only
        if "error" not in report:
            ray.shutdown()
            cluster.shutdown()
        else:  # the stuck run keeps the driver connected, which Cluster.shutdown refuses: end the nodes
            for node in [*cluster.worker_nodes, cluster.head_node]:
                node.kill_all_processes(check_alive=False, allow_graceful=False)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.cluster.node_loss",
                                description=__doc__.split("\n")[0])
    p.add_argument("--work", required=True, type=Path)
    p.add_argument("--report", required=True, type=Path)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--kill", choices=["one", "all"], default="one")
    p.add_argument("--deadline", type=float, default=300.0, help="seconds for the drilled run")
    p.add_argument("--size-px", type=int, default=1032)
    a = p.parse_args(argv)
    a.work.mkdir(parents=True, exist_ok=True)
    report = drill(a.work, workers=a.workers, kill=a.kill, deadline_s=a.deadline, size_px=a.size_px)
    a.report.write_text(json.dumps(report, indent=1, sort_keys=True))
    print(json.dumps(report, indent=1, sort_keys=True), flush=True)
    if "error" in report:
        # The run that lost its capacity still waits inside Ray; end the process (and with it this
        # cluster's nodes, which it started) instead of waiting for it.
        sys.stdout.flush()
        os._exit(DEADLINE_EXIT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
