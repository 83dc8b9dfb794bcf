"""The cluster files agree with the code: Ray version, entry points and configs they name exist."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "cluster"


def _ray_pin() -> str:
    m = re.search(r"^ray\[[^\]]*\]==([\d.]+)$", (REPO / "requirements.txt").read_text(), re.M)
    assert m, "requirements.txt must pin ray exactly"
    return m.group(1)


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


@pytest.mark.parametrize("name", ["raycluster.yaml", "rayjob-ingest.yaml"])
def test_kuberay_ray_version_matches_pin(name):
    doc = _docs(CLUSTER / name)[0]
    spec = doc["spec"].get("rayClusterSpec", doc["spec"])
    assert spec["rayVersion"] == _ray_pin()


def test_image_uses_pinned_ray_and_requirements():
    text = (CLUSTER / "Dockerfile").read_text()
    assert f"rayproject/ray:{_ray_pin()}-" in text
    assert "requirements.txt" in text


def _entry_modules(entrypoint: str) -> list[tuple[str, list[str]]]:
    args = shlex.split(entrypoint)
    assert args[:2] == ["python", "-m"], entrypoint
    return [(args[2], args[3:])]


def test_rayjob_entrypoint_names_real_module_and_config():
    doc = _docs(CLUSTER / "rayjob-ingest.yaml")[0]
    (module, args), = _entry_modules(doc["spec"]["entrypoint"])
    assert (REPO / (module.replace(".", "/") + ".py")).is_file()
    cfg = args[args.index("--config") + 1]
    assert (REPO / cfg).is_file()


def test_runtime_env_is_valid_for_job_submit():
    env = yaml.safe_load((CLUSTER / "runtime_env.yaml").read_text())
    assert set(env) <= {"working_dir", "excludes", "env_vars", "pip", "py_modules"}
    assert not any("SECRET" in k or "ACCESS_KEY" in k for k in env.get("env_vars", {})), "no credentials here"


def test_launcher_yaml_has_head_and_worker_types():
    doc = yaml.safe_load((CLUSTER / "launcher-aws.yaml").read_text())
    assert doc["head_node_type"] in doc["available_node_types"]
    assert doc["max_workers"] >= max(t.get("max_workers", 0) for t in doc["available_node_types"].values())
