"""Writes the `ray.io/v1` openAPIV3Schema of KubeRay's CRDs as test data (run by hand, not by pytest).

    git -C <kuberay mirror> show v1.7.0:ray-operator/config/crd/bases/ray.io_rayclusters.yaml > /tmp/rc.yaml
    python tests/cluster/crds/extract.py /tmp/rc.yaml tests/cluster/crds/rayclusters.v1.json

The schema is copied as the operator's release ships it (KubeRay's CRDs already carry no descriptions);
only the `v1` version is kept, since every manifest here is `ray.io/v1`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml


def extract(crd_yaml: Path, out: Path, version: str = "v1") -> None:
    crd = yaml.safe_load(crd_yaml.read_text())
    (entry,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    schema = entry["schema"]["openAPIV3Schema"]
    out.write_text(json.dumps(schema, sort_keys=True, separators=(",", ":")) + "\n")


if __name__ == "__main__":
    extract(Path(sys.argv[1]), Path(sys.argv[2]))
