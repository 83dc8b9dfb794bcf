"""Shared fixtures: one local Ray instance per test session and a real S3 server on loopback.

The S3 server is moto in server mode, a separate process speaking HTTP on 127.0.0.1, so every
process (the driver, Ray workers) talks to it exactly as it would to a real endpoint.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
STAC_FIXTURES = SHARED / "fixtures" / "stac"

os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".cache" / "torch_extensions"))
# Ray workers must import our packages.
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
# The virtualenv's executables first, for this process and everything it starts (Ray workers, job-submit
# jobs, CLI subprocesses), as in an activated venv: torch builds DeepSpeed's CPU ops with the `ninja` on
# PATH, and a system ninja of another version than the venv's own (a DeepSpeed dependency) reads the
# other's build log as foreign and rebuilds the op (~30-45 s on 2 cores) each time the two alternate.
_VENV_BIN = str(Path(sys.executable).parent)
if os.environ.get("PATH", "").split(os.pathsep)[0] != _VENV_BIN:
    os.environ["PATH"] = os.pathsep.join(filter(None, [_VENV_BIN, os.environ.get("PATH")]))
# Ray Train's controller collects reports and notices a finished or dead worker group when it polls the
# workers, every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S (2 s by default); the tests' runs are seconds of work
# each, so a 1 s poll halves that wait on every run, and the kill drills (`debug.kill_worker_at_step`
# waits 3 polls before it kills) lose 3 s each instead of 6.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "1")


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray instance for the whole test run (2 CPUs, small object store)."""
    import ray

    if not ray.is_initialized():
        ray.init(
            num_cpus=2,
            object_store_memory=512 * 1024**2,
            include_dashboard=False,
            log_to_driver=True,
            runtime_env={"env_vars": {"PYTHONPATH": os.environ["PYTHONPATH"]}},
        )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def s3_server():
    """A real S3-compatible server (moto server mode) on loopback; yields its settings.

    Yields a dict with ``endpoint_url``, ``key``, ``secret`` and ``region``. The AWS variables are
    set for the session so that clients that read the environment (s3fs, boto3, GDAL) agree.
    """
    from bench._s3proxy import moto_server

    env = {
        "AWS_ACCESS_KEY_ID": "testing-key-id",
        "AWS_SECRET_ACCESS_KEY": "testing-secret-DO-NOT-LOG",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    with moto_server(env) as endpoint:
        yield {
            "endpoint_url": endpoint,
            "key": env["AWS_ACCESS_KEY_ID"],
            "secret": env["AWS_SECRET_ACCESS_KEY"],
            "region": env["AWS_DEFAULT_REGION"],
        }


@pytest.fixture()
def s3_bucket(s3_server):
    """A fresh, empty bucket on the loopback S3 server; yields its name."""
    import uuid

    import boto3

    name = f"test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_server["endpoint_url"]).create_bucket(Bucket=name)
    return name
