"""Shared helpers for the cluster-file tests: the repo's pins, the manifests, the Dockerfile."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "cluster"


def ray_pin() -> str:
    m = re.search(r"^ray\[[^\]]*\]==([\d.]+)$", (REPO / "requirements.txt").read_text(), re.M)
    assert m, "requirements.txt must pin ray exactly"
    return m.group(1)


def pins(path: Path) -> dict[str, str]:
    """``name==version`` lines of a requirements file -> {name: version} (extras dropped)."""
    out = {}
    for line in path.read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.-]+)(\[[^\]]*\])?==([^\s#]+)", line.strip())
        if m:
            out[m.group(1).lower()] = m.group(3)
    return out


def docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]
