"""`cluster/Dockerfile` agrees with the repo (Docker cannot run here): its Ray and torch are the pinned
ones, every path it copies exists, and the job entry points import from exactly what it copies."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

from tests.cluster.common import CLUSTER, REPO, docs, pins, ray_pin

DOCKERFILE = CLUSTER / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per logical line (backslash continuations joined, comments dropped)."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, rest = line.partition(" ")
            out.append((op.upper(), rest.strip()))
    return out


def build_args() -> dict[str, str]:
    return dict(a.split("=", 1) for op, a in instructions() if op == "ARG" and "=" in a)


def test_both_variants_build_on_the_pinned_ray_image():
    args = build_args()
    assert args["RAY_VERSION"] == ray_pin()
    bases = {}
    for op, a in instructions():
        if op == "FROM" and " AS " in a:
            image, _, stage = a.partition(" AS ")
            bases[stage.strip()] = image.strip().replace("${RAY_VERSION}", args["RAY_VERSION"])
    assert bases == {
        "base-cpu": f"rayproject/ray:{ray_pin()}-py311",
        "base-gpu": f"rayproject/ray:{ray_pin()}-py311-gpu",
    }
    assert ("FROM", "base-${VARIANT}") in instructions() and args["VARIANT"] in ("cpu", "gpu")


def test_packages_are_the_pins_of_requirements():
    req = pins(REPO / "requirements.txt")
    runs = " ".join(a for op, a in instructions() if op == "RUN")
    assert "pip install --no-cache-dir -r requirements.txt" in runs
    for name, version in re.findall(r"\b([A-Za-z0-9_.-]+)==([^\s\"]+)", runs):
        assert req.get(name.lower()) == version, f"image {name}=={version}, requirements.txt {req.get(name)}"
    assert re.search(r"\btorch==", runs), "torch comes from its CPU/CUDA index at the requirements pin"


def copied_paths() -> list[str]:
    out = []
    for op, a in instructions():
        if op == "COPY":
            *srcs, _dst = a.split()
            out += [s for s in srcs if not s.startswith("--")]
    return out


def test_every_copied_path_exists_and_the_jobs_dir_is_in():
    paths = copied_paths()
    for p in paths:
        assert (REPO / p).exists(), f"COPY {p}: no such path"
    assert {"requirements.txt", "pipeline", "models", "jobs", "configs"} <= set(paths)


def test_image_names_agree_across_kuberay_and_launcher():
    jobs = ["ingest", "pretrain", "tune"]
    names = ["raycluster.yaml", "launcher-aws.yaml", *(f"rayjob-{j}.yaml" for j in jobs)]
    images = set(re.findall(r"image: (\S+)", " ".join((CLUSTER / n).read_text() for n in names)))
    images |= {d for d in re.findall(r"worker_image: (\S+)", (CLUSTER / "launcher-aws.yaml").read_text())}
    tags = {i.rsplit(":", 1)[1] for i in images}
    assert {i.rsplit(":", 1)[0] for i in images} == {"ghcr.io/skyray/skyray"}
    assert tags == {"0.1.0-cpu", "0.1.0-gpu"}, tags
    for v in ("cpu", "gpu"):  # the build commands documented in the Dockerfile make these tags
        assert f"--build-arg VARIANT={v} -t ghcr.io/skyray/skyray:0.1.0-{v}" in DOCKERFILE.read_text()
    assert docs(CLUSTER / "raycluster.yaml")


def test_entrypoints_import_from_the_copied_tree(tmp_path):
    """Only what the Dockerfile copies, at its WORKDIR, on PYTHONPATH: every job module imports."""
    root = tmp_path / "skyray"
    root.mkdir()
    for p in copied_paths():
        src = REPO / p
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, root / p)
    modules = sorted(f"jobs.{p.stem}" for p in (root / "jobs").glob("*.py") if p.stem != "__init__")
    assert {"jobs.ingest", "jobs.pretrain", "jobs.export"} <= set(modules)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(PYTHONPATH=str(root), DS_ACCELERATOR="cpu")
    code = ("import importlib, os, sys\nfor m in sys.argv[1:]:\n"
            "    assert importlib.import_module(m).__file__.startswith(os.getcwd()), m\n"
            "print('ok', len(sys.argv) - 1)")
    proc = subprocess.run([sys.executable, "-s", "-c", code, *modules], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == f"ok {len(modules)}"
