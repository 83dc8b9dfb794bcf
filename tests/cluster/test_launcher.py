"""`cluster/launcher-aws.yaml` passes Ray's own cluster-launcher validator, without any AWS access."""

from __future__ import annotations

import copy

import jsonschema
import pytest
import yaml

from tests.cluster.common import CLUSTER

LAUNCHER = CLUSTER / "launcher-aws.yaml"


@pytest.fixture()
def no_aws(monkeypatch):
    """Any AWS API call (boto3/botocore) fails the test: the validation must be offline."""
    import botocore.client

    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")

    def refuse(self, operation, params):
        raise AssertionError(f"the launcher check called AWS: {operation}")

    monkeypatch.setattr(botocore.client.BaseClient, "_make_api_call", refuse)


def prepared(cfg: dict) -> dict:
    from ray.autoscaler._private.util import prepare_config, validate_config

    out = prepare_config(copy.deepcopy(cfg))
    validate_config(out)
    return out


def launcher() -> dict:
    return yaml.safe_load(LAUNCHER.read_text())


def test_launcher_passes_rays_validator(no_aws):
    cfg = prepared(launcher())
    types = cfg["available_node_types"]
    assert cfg["head_node_type"] == "head"
    assert types["head"]["resources"]["CPU"] == 0, "the head runs no tasks"
    assert types["head"]["resources"]["trial_driver"] >= 1, "Tune trial drivers run on the head"
    assert cfg["idle_timeout_minutes"] > 0
    assert cfg["max_workers"] >= sum(t["max_workers"] for n, t in types.items() if n != "head")
    assert cfg["docker"]["image"].endswith("-cpu")
    for name, t in types.items():
        assert t["min_workers"] <= t["max_workers"]
        if t["resources"].get("GPU"):
            assert t["docker"]["worker_image"].endswith("-gpu"), name
            assert "--gpus all" in t["docker"]["worker_run_options"], name
    assert types["cpu_ingest"]["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot"
    assert "InstanceMarketOptions" not in types["gpu_train"]["node_config"], "multi-node DeepSpeed on demand"


def test_launcher_sets_up_token_auth_on_every_node():
    cfg = launcher()
    assert cfg["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        (start,) = [c for c in cfg[key] if "ray start" in c]
        assert "RAY_AUTH_MODE=token ray start" in start, key
    assert cfg["setup_commands"] == [], "the image has the packages; Ray's default setup would reinstall Ray"


def test_validator_rejects_a_node_type_without_resources(no_aws):
    """On AWS the resources must be written out (Ray would otherwise ask EC2 for them)."""
    cfg = launcher()
    del cfg["available_node_types"]["gpu_train"]["resources"]
    with pytest.raises(jsonschema.ValidationError, match="'resources' is a required property"):
        prepared(cfg)


def test_validator_rejects_unknown_docker_field(no_aws):
    cfg = launcher()
    cfg["docker"]["imag"] = "x"
    with pytest.raises(jsonschema.ValidationError, match="'imag' was unexpected"):
        prepared(cfg)
