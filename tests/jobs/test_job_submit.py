"""The ingest entry point runs unchanged under a real `ray job submit` to a local Ray head.

A separate Ray head (with the dashboard's job server) is started with `ray start --head`; the job is
submitted with the repo as working_dir, exactly as on a KubeRay / launcher cluster.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline import synthetic

REPO = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).with_name("ray"))


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def ray_head(tmp_path):
    """A local Ray head with the job server; token auth as Ray 2.60 sets it up by default."""
    temp = Path("/tmp") / f"rjs{os.getpid()}"  # Ray's socket paths must stay short
    shutil.rmtree(temp, ignore_errors=True)
    env = dict(os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
    # the job's `python` is this interpreter, as on a node whose image has the packages
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.pop("RAY_ADDRESS", None)
    dash = _port()
    # Every port explicit and free: another Ray on this machine (the test session's own) holds the defaults.
    ports = {
        "port": _port(), "dashboard-agent-listen-port": _port(), "dashboard-agent-grpc-port": _port(),
        "runtime-env-agent-port": _port(), "metrics-export-port": _port(), "ray-client-server-port": _port(),
    }
    # `--block` keeps the head's processes under this one, in a session of their own: teardown stops exactly
    # them (`ray stop` would kill every Ray on the machine, the test session's own included).
    head = subprocess.Popen(
        [RAY, "start", "--head", "--block", "--num-cpus=1", "--include-dashboard=true",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--disable-usage-stats",
         f"--temp-dir={temp}",
         *(f"--{k}={v}" for k, v in ports.items())],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    address = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.time() + 180
        probe = [RAY, "job", "list", "--address", address]
        while subprocess.run(probe, env=env, capture_output=True).returncode:
            assert head.poll() is None, "ray start --head exited"
            assert time.time() < deadline, "the Ray head's job server did not come up"
            time.sleep(2)
        yield address, env
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(head.pid, sig)
                head.wait(timeout=60)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.slow
def test_ingest_under_ray_job_submit(ray_head, tmp_path):
    address, env = ray_head
    archive = synthetic.make_archive(tmp_path / "archive", scenes=2, s1_scenes=1, seed=3, size_px=516)
    out = tmp_path / "ingest"
    cmd = [
        RAY, "job", "submit", "--address", address, "--working-dir", str(REPO),
        "--runtime-env-json", json.dumps({"excludes": [".venv", ".cache", ".git", "demo-out"]}),
        "--", "python", "-m", "jobs.ingest", "--items", archive.items, "--output", str(out),
        "--config", "configs/ingest/tiny.yaml",
    ]
    deadline = time.time() + 120
    while True:  # the head's job agent comes up a little after `ray start` returns
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        log = proc.stdout + proc.stderr
        if "No available agent" not in log or time.time() > deadline:
            break
        time.sleep(3)
    assert proc.returncode == 0, log[-4000:]
    assert "succeeded" in log
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["rows"] > 0
    assert (out / "rejects.parquet").is_file()
    for shard in manifest["shards"]:
        assert (out / shard["path"]).is_file()
