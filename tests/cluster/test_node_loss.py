"""Node-loss drills (CI): a worker node killed mid-ingest costs only its task and the output is
byte-identical to an undisturbed run; a run that lost every node stops at its deadline instead of waiting;
an elastic pretraining run that loses one of its two workers' nodes resumes from its latest checkpoint
with one worker, the same global batch and the same step count; a sweep that loses a node mid-trial
accounts for every trial.

The drill (`tests/cluster/node_loss.py`) runs in a process of its own: its `ray.cluster_utils.Cluster`
must not meet this session's local Ray (`ray_session`), and its `RAY_TMPDIR` keeps it from every other Ray
on the machine. Nothing here calls `ray stop`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cluster.node_loss import DEADLINE_EXIT

REPO = Path(__file__).resolve().parents[2]


def run_drill(tmp_path: Path, *args: str, timeout: int = 600) -> tuple[int, dict, str]:
    ray_tmp = Path("/tmp") / f"rnl{os.getpid()}{len(args)}"  # Ray's socket paths must stay short
    ray_tmp.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_TMPDIR=str(ray_tmp), PYTHONPATH=str(REPO), DS_ACCELERATOR="cpu",
               RAY_AUTH_MODE="disabled")  # a simulated cluster on loopback; test_job_submit covers tokens
    report = tmp_path / "report.json"
    cmd = [sys.executable, "-m", "tests.cluster.node_loss", "--work", str(tmp_path / "work"),
           "--report", str(report), *args]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"the drill itself hung past {timeout} s:\n{out[-4000:]}")
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert report.is_file(), out[-4000:]
    return proc.returncode, json.loads(report.read_text()), out


@pytest.mark.slow
def test_worker_node_killed_mid_ingest(tmp_path):
    rc, r, out = run_drill(tmp_path, "--workers", "2", "--deadline", "300")
    assert rc == 0, out[-4000:]
    print(json.dumps(r, indent=1, sort_keys=True))  # the figures (bench/results/cluster.md)
    # the loss landed mid-run, on a node running a task, and cost only that
    assert 0 < r["unit_files_at_kill"] < r["units"]
    assert r["lost_running"] >= 1 and r["lost_errors"] == ["NODE_DIED"]
    assert r["redone"] >= r["lost_running"], "every lost attempt is re-run"
    assert r["redone_after_kill_s"] > 0 and r["tries_needed"] <= 8
    # every unit accounted for, once: processed now, or found written by the attempt that was lost
    assert r["units_processed"] + r["units_skipped"] == r["units"]
    # byte-identical to the undisturbed run: shards, manifest, rejects and every unit sidecar
    assert r["identical"], r["differing"]
    assert r["files"] > r["units"]


@pytest.mark.slow
def test_run_that_lost_every_node_stops_at_its_deadline(tmp_path):
    # the kill lands a few seconds in (after the first unit); the rest of the deadline leaves the GCS time
    # to mark the killed nodes dead (its health checks: 5 misses, 3 s apart)
    rc, r, out = run_drill(tmp_path, "--workers", "2", "--kill", "all", "--deadline", "30", timeout=400)
    assert rc == DEADLINE_EXIT, out[-4000:]
    assert r["error"].startswith("deadline: the drilled run did not finish within 30 s"), r
    assert "0 worker node(s) alive, 0 CPU left" in r["error"], r


@pytest.mark.slow
def test_worker_node_killed_mid_pretraining(tmp_path):
    rc, r, out = run_drill(tmp_path, "--drill", "pretrain", "--deadline", "420")
    assert rc == 0, out[-4000:]
    print(json.dumps(r, indent=1, sort_keys=True))  # the figures (bench/results/cluster.md)
    every, steps, batch = r["checkpoint_every"], r["steps"], r["global_batch"]
    resumed = r["resumed_from_step"]
    # the loss landed after a checkpoint; the group restarted once, from it (not from 0), with one worker
    assert r["workers_before"] == 2
    assert r["starts"] == [0, resumed] and resumed > 0 and resumed % every == 0
    assert resumed <= r["killed_at_step"] and r["steps_redone"] == r["killed_at_step"] - resumed
    # the same run as an undisturbed one: every step once, world 2 then world 1, the global batch kept
    assert r["final_step"] == steps and r["steps_logged"] == list(range(1, steps + 1))
    assert r["world_by_step"] == [2] * resumed + [1] * (steps - resumed)
    assert r["samples_by_step"] == [batch] * steps
    assert r["restart_s"] is not None and r["recover_s"] is not None
    assert 0 < r["restart_s"] <= r["recover_s"] < r["kill_to_end_s"]


# In CI since its two causes were fixed: the hang (d31ef2e, a leaked placement group) and the slowness
# (Ray Data's V2 Parquet reader starting FooterReader processes at every evaluation; jobs.train.data
# .read_parquet reads through V1). 5 runs of 169-234 s on the 2-core VM (bench/RESULTS.md); the 900 s
# deadline leaves a slower CI machine ~4x.
@pytest.mark.slow
def test_node_killed_mid_sweep_accounts_for_every_trial(tmp_path):
    rc, r, out = run_drill(tmp_path, "--drill", "tune", "--deadline", "900", timeout=1080)
    assert rc == 0, out[-4000:]
    print(json.dumps(r, indent=1, sort_keys=True))  # the figures (bench/results/cluster.md)
    rows = r["trial_rows"]
    assert len(rows) == r["trials"]
    for t in rows:  # each trial ran its budget, or failed with its reason; none pending or lost
        assert t["status"] in ("TERMINATED", "ERROR"), t
        if t["status"] == "TERMINATED":
            assert t["completed"] and t["last_step"] == r["steps"], t
        else:
            assert t["error"], t
    # the trial whose worker died was retried (by Ray Train from its checkpoint, or by Tune)
    assert r["restarted"], rows
    md = Path(r["results_md"]).read_text()
    assert all(f"| {t['trial_id']} |" in md for t in rows)
