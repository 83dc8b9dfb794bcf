"""Shared command-line glue for every job: yaml preset + ``--set key=value`` overrides -> typed config.

    cfg = load_config(IngestConfig, "configs/ingest/tiny.yaml", ["tile_px=64", "storage.anonymous=true"])

Override values are parsed as YAML scalars (``true``, ``3``, ``0.5``, ``[1, 2]``); dotted keys reach
nested models. Unknown keys and bad values raise ``ConfigError`` naming the field, before any work.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

log = logging.getLogger("skyray")
T = TypeVar("T", bound=BaseModel)


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the field."""


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["a.b=1", "c=x"]`` -> ``{"a": {"b": 1}, "c": "x"}`` (values parsed as YAML)."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key or any(not p for p in key.split(".")):
            raise ConfigError(f"--set has an empty key in {item!r}")
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"--set {key}: cannot parse value {raw!r}: {e}") from None
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {key}: {p!r} is set both as a value and as a section")
        node[parts[-1]] = value
    return out


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _format_error(e: ValidationError, source: str) -> str:
    lines = [f"invalid config ({source}):"]
    for err in e.errors():
        field = ".".join(str(p) for p in err["loc"]) or "<root>"
        lines.append(f"  {field}: {err['msg']}")
    return "\n".join(lines)


def load_config(cls: type[T], path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> T:
    """Read a yaml preset (optional), apply ``--set`` overrides, validate into ``cls``."""
    data: dict[str, Any] = {}
    source = "defaults"
    if path:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            loaded = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {p} is not valid YAML: {e}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {p} must hold a mapping at the top level")
        data, source = loaded, str(p)
    if overrides:
        data = _merge(data, parse_overrides(overrides))
        source += " + --set"
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_error(e, source)) from None


def add_config_args(parser: argparse.ArgumentParser, default_config: str | None = None) -> None:
    parser.add_argument("--config", default=default_config, help="yaml preset (see configs/)")
    parser.add_argument(
        "--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
        help="override config fields, dotted keys for nested sections (repeatable)",
    )


def config_json(cfg: BaseModel) -> str:
    """Deterministic JSON of a resolved config (sorted keys): logged, and stored in manifests/checkpoints."""
    return json.dumps(cfg.model_dump(mode="json"), sort_keys=True, indent=2)


def log_config(cfg: BaseModel, name: str = "config") -> None:
    log.info("resolved %s:\n%s", name, config_json(cfg))


def setup_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def init_ray(**kwargs):
    """Start or join Ray: under ``ray job submit`` (RAY_ADDRESS set) this joins the cluster;
    on a laptop it starts a local instance. Workers get this repo on PYTHONPATH."""
    import ray

    if ray.is_initialized():
        return ray
    repo = str(Path(__file__).resolve().parents[1])
    env_vars = {"PYTHONPATH": os.pathsep.join(filter(None, [repo, os.environ.get("PYTHONPATH")]))}
    for k in ("DS_ACCELERATOR", "TORCH_EXTENSIONS_DIR"):
        if k in os.environ:
            env_vars[k] = os.environ[k]
    if os.environ.get("RAY_ADDRESS"):
        ray.init(**kwargs)  # the job's runtime_env from `ray job submit` already ships the code
    else:
        ray.init(runtime_env={"env_vars": env_vars}, **kwargs)
    return ray
