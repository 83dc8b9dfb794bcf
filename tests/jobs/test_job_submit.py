"""Every job runs unchanged under a real `ray job submit` to a local Ray head with token authentication.

A Ray head of its own (own ports and temp dir, the dashboard's job server) is started with
`ray start --head` and `RAY_AUTH_MODE=token`, as Ray 2.60 sets heads up; the jobs are submitted with the
real CLI, the repository as working dir and `cluster/runtime_env.yaml`, exactly as the README says for a
KubeRay or launcher cluster: ingest -> pretrain (tiny) -> export, and convert (the synthetic benchmark),
then tune (2 trials) of the export on the benchmark. Adding a job to the pipeline is one `Stage(...)` line in
`STAGES`; a stage is submitted as soon as the stages it reads from have succeeded, so independent jobs run
side by side on the head, as on a shared cluster.
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
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import pytest

from pipeline import synthetic

REPO = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).with_name("ray"))


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Head(NamedTuple):
    address: str  # the job server, http://127.0.0.1:<port>
    token: str
    env: dict  # a client environment that authenticates (RAY_AUTH_MODE=token, RAY_AUTH_TOKEN)


def _client_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH") and k != "RAY_ADDRESS"}
    # the job's `python` is this interpreter, as on a node whose image has the packages
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return {**env, **extra}


@pytest.fixture(scope="module")
def ray_head():
    """A local Ray head with the job server and token authentication; yields a :class:`Head`."""
    temp = Path("/tmp") / f"rjs{os.getpid()}"  # Ray's socket paths must stay short
    shutil.rmtree(temp, ignore_errors=True)
    token = secrets.token_hex(32)
    env = _client_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
    dash = _port()
    # Every port explicit and free: another Ray on this machine (the test session's own) holds the defaults.
    ports = {
        "port": _port(), "dashboard-agent-listen-port": _port(), "dashboard-agent-grpc-port": _port(),
        "runtime-env-agent-port": _port(), "metrics-export-port": _port(), "ray-client-server-port": _port(),
    }
    # `--block` keeps the head's processes under this one, in a session of their own: teardown stops exactly
    # them (`ray stop` would kill every Ray on the machine, the test session's own included).
    head = subprocess.Popen(
        [RAY, "start", "--head", "--block", "--num-cpus=2", "--include-dashboard=true",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--disable-usage-stats",
         f"--temp-dir={temp}", "--object-store-memory=300000000",
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
        yield Head(address, token, env)
    finally:
        for sig, grace in ((signal.SIGTERM, 15), (signal.SIGKILL, 60)):
            try:
                os.killpg(head.pid, sig)
                head.wait(timeout=grace)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        shutil.rmtree(temp, ignore_errors=True)


class Submitted(NamedTuple):
    returncode: int
    output: str  # what `ray job submit` printed (it follows the job's logs)
    status: str  # the final status `ray job status` reports: SUCCEEDED, FAILED, ...
    logs: str  # `ray job logs`


def submit(head: Head, job: list[str], name: str, timeout: int = 600) -> Submitted:
    """`ray job submit --working-dir . --runtime-env cluster/runtime_env.yaml -- python -m <job...>` from
    the repository root; waits for the job to end (the CLI follows it), then reads its status and logs."""
    sid = f"{name}-{secrets.token_hex(4)}"
    cmd = [RAY, "job", "submit", "--address", head.address, "--submission-id", sid, "--working-dir", ".",
           "--runtime-env", "cluster/runtime_env.yaml", "--", "python", "-m", *job]
    deadline = time.time() + 120
    while True:  # the head's job agent comes up a little after `ray start` returns
        proc = subprocess.run(cmd, cwd=REPO, env=head.env, capture_output=True, text=True, timeout=timeout)
        output = proc.stdout + proc.stderr
        if "No available agent" not in output or time.time() > deadline:
            break
        time.sleep(3)

    def cli(*args: str) -> str:
        p = subprocess.run([RAY, "job", *args, "--address", head.address, sid], cwd=REPO, env=head.env,
                           capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stdout + p.stderr
        return p.stdout + p.stderr

    # the status as the job server has it (the CLI prints it only as prose), read with the SDK
    code = ("import sys; from ray.job_submission import JobSubmissionClient as C; "
            "print(C(sys.argv[1]).get_job_status(sys.argv[2]))")
    status = subprocess.run([sys.executable, "-c", code, head.address, sid], env=head.env,
                            capture_output=True, text=True, timeout=120)
    assert status.returncode == 0, status.stderr[-3000:]
    return Submitted(proc.returncode, output, status.stdout.strip().splitlines()[-1], cli("logs"))


# --- the pipeline, one stage a line ---------------------------------------------------------------------


class Stage(NamedTuple):
    name: str
    job: Callable[[Path], list[str]]  # work dir -> `python -m` arguments
    check: Callable[[Path], None]  # work dir -> asserts on what the job wrote
    after: tuple[str, ...] = ()  # the stages whose outputs the job reads


def _ingest_check(work: Path) -> None:
    out = work / "ingest"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["rows"] > 0 and (out / "rejects.parquet").is_file()
    for shard in manifest["shards"]:
        assert (out / shard["path"]).stat().st_size == shard["bytes"]


def _pretrain_check(work: Path) -> None:
    run = work / "runs" / "tiny"
    state = json.loads(max(run.glob("checkpoint_*/skyray_state.json")).read_text())
    assert state["step"] == 4, state
    assert (run / "export" / "spectralgpt_tiny.safetensors").is_file()


def _export_check(work: Path) -> None:
    info = json.loads((work / "export" / "spectralgpt_tiny.json").read_text())
    assert info["step"] == 4 and info["model"] == "spectralgpt_tiny"
    assert (work / "export" / "spectralgpt_tiny.safetensors").is_file()


def _convert_check(work: Path) -> None:
    manifest = json.loads((work / "bench" / "manifest.json").read_text())
    assert manifest["benchmark"]["name"] == "synthetic"
    splits = manifest["benchmark"]["splits"]
    assert all(splits.get(s) for s in ("train", "val", "test")), splits


def _tune_check(work: Path) -> None:
    import csv

    sweep = work / "sweeps" / "s"
    (row,) = csv.DictReader((sweep / "synthetic" / "results.csv").open())
    assert row["encoder"] == "ours" and row["trials"] == "2" and row["errored"] == "0"
    assert row["test_oa"] != ""  # the best trial ran to its end and was tested
    assert (sweep / "synthetic" / "trials.png").is_file()
    assert f"| ours | {100 * float(row['test_oa']):.2f} |" in (sweep / "summary.md").read_text()


#: the demo's sweep preset at its smallest: 2 trials of 4 steps at once, an ASHA rung at step 2
TUNE = ["num_samples=2", "finetune.stages=[{img_size: 32, steps: 4, batch_size: 8}]",
        "finetune.eval.every_steps=2", "finetune.checkpoint.every_steps=4", "scheduler.grace_period=2"]

STAGES = [
    Stage("ingest", lambda w: ["jobs.ingest", "--items", str(w / "archive" / "items.json"), "--output",
                               str(w / "ingest"), "--config", "configs/ingest/tiny.yaml"], _ingest_check),
    Stage("pretrain", lambda w: ["jobs.pretrain", "--config", "configs/pretrain/spectralgpt_tiny.yaml",
                                 "--data", str(w / "ingest"), "--storage", str(w / "runs"), "--name", "tiny",
                                 "--set", "stages=[{img_size: 16, steps: 4, batch_size: 8}]",
                                 "scaling.num_workers=1", "checkpoint.every_steps=2", "log.plots=false"],
          _pretrain_check, after=("ingest",)),
    Stage("export", lambda w: ["jobs.export", "--checkpoint", str(w / "runs" / "tiny"), "--output",
                               str(w / "export")], _export_check, after=("pretrain",)),
    Stage("convert", lambda w: ["jobs.convert", "--config", "configs/convert/synthetic.yaml", "--source",
                                str(w / "archive"), "--output", str(w / "bench"),
                                "--set", "options.per_class=8"], _convert_check),
    Stage("tune", lambda w: ["jobs.tune", "--config", "configs/tune/demo.yaml", "--data",
                             f"synthetic={w / 'bench'}", "--encoder",
                             f"ours={w / 'export' / 'spectralgpt_tiny.safetensors'}", "--storage",
                             str(w / "sweeps"), "--name", "s", "--set", *TUNE], _tune_check,
          after=("export", "convert")),
]


def run_pipeline(head: Head, work: Path) -> list[str]:
    """Submit every stage of ``STAGES`` once the stages it reads from have succeeded (each job's own
    `ray job submit`, from a thread of its own); check each one as it ends. The stages in the order they
    ended."""
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    ended: list[str] = []
    pending, running = list(STAGES), {}
    with ThreadPoolExecutor(len(STAGES)) as pool:
        while pending or running:
            for stage in [s for s in pending if set(s.after) <= set(ended)]:
                pending.remove(stage)
                running[pool.submit(submit, head, stage.job(work), stage.name)] = stage
            assert running, f"stages wait on stages that never run: {[s.name for s in pending]}"
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for fut in finished:
                stage, done = running.pop(fut), fut.result()
                assert done.returncode == 0, f"{stage.name}:\n{done.output[-4000:]}"
                assert done.status == "SUCCEEDED", f"{stage.name}: {done.status}\n{done.logs[-4000:]}"
                stage.check(work)
                ended.append(stage.name)
    return ended


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_pipeline_under_ray_job_submit(ray_head, tmp_path):
    synthetic.make_archive(tmp_path / "archive", scenes=2, s1_scenes=1, seed=3, size_px=516)
    ended = run_pipeline(ray_head, tmp_path)
    assert sorted(ended) == sorted(s.name for s in STAGES)
    for stage in STAGES:  # each after the stages it reads from
        assert all(ended.index(a) < ended.index(stage.name) for a in stage.after), ended


@pytest.mark.slow
def test_failing_job_is_failed_with_its_own_error_in_the_logs(ray_head, tmp_path):
    missing = tmp_path / "no-shards"
    done = submit(ray_head, ["jobs.pretrain", "--config", "configs/pretrain/spectralgpt_tiny.yaml",
                             "--data", str(missing), "--storage", str(tmp_path / "runs")], "fails")
    assert done.returncode != 0
    assert done.status == "FAILED"
    assert f"FileNotFoundError: no manifest.json under data.path '{missing}'" in done.logs, done.logs[-3000:]


# --- token authentication, as a user meets it -------------------------------------------------------------


def _job_list(head: Head, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([RAY, "job", "list", "--address", head.address], env=env, capture_output=True,
                          text=True, timeout=120)


def test_submit_without_the_token_is_refused(ray_head, tmp_path):
    """What the README's line did before it named the token: the head answers 401."""
    token_home = tmp_path / "home"
    (token_home / ".ray").mkdir(parents=True)
    (token_home / ".ray" / "auth_token").write_text(ray_head.token)
    # the token on disk is not enough: the CLI sends it only with RAY_AUTH_MODE=token
    p = _job_list(ray_head, _client_env(HOME=str(token_home)))
    assert p.returncode != 0
    assert "Authentication required" in p.stdout + p.stderr


def test_wrong_token_is_refused(ray_head):
    p = _job_list(ray_head, _client_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32)))
    assert p.returncode != 0
    assert "Authentication failed" in p.stdout + p.stderr


@pytest.mark.parametrize("source", ["RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "~/.ray/auth_token"])
def test_token_sources_the_readme_names(ray_head, tmp_path, source):
    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    env = _client_env(RAY_AUTH_MODE="token", HOME=str(home))
    if source == "RAY_AUTH_TOKEN":
        env["RAY_AUTH_TOKEN"] = ray_head.token
    elif source == "RAY_AUTH_TOKEN_PATH":
        (tmp_path / "token").write_text(ray_head.token)
        env["RAY_AUTH_TOKEN_PATH"] = str(tmp_path / "token")
    else:
        (home / ".ray" / "auth_token").write_text(ray_head.token)
    p = _job_list(ray_head, env)
    assert p.returncode == 0, p.stdout + p.stderr
