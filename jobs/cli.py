"""Shared command-line glue for every job: yaml preset + ``--set key=value`` overrides -> typed config.

    cfg = load_config(IngestConfig, "configs/ingest/tiny.yaml", ["tile_px=64", "storage.anonymous=true"])

Every job's ``main`` is one call::

    def main(argv=None) -> int:
        return cli.run_job(PretrainConfig, run, argv, aliases={"--data": Alias("data.path", "shards root")})

``--config`` / ``--set`` plus the job's flags, each an alias of one config field (``--data X`` is
``data.path=X``, taken as a string, after the ``--set`` overrides).

Override values are parsed as YAML scalars (``true``, ``3``, ``0.5``, ``[1, 2]``); dotted keys reach
nested models. Unknown keys and bad values raise ``ConfigError`` naming the field, before any work.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

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


def deep_merge(base: Mapping, over: Mapping) -> dict:
    """``over`` on top of ``base``: nested mappings merge key by key, anything else replaces (copies)."""
    out = copy.deepcopy(dict(base))
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) else v
    return out


def _format_error(e: ValidationError, source: str) -> str:
    lines = [f"invalid config ({source}):"]
    for err in e.errors():
        field = ".".join(str(p) for p in err["loc"]) or "<root>"
        lines.append(f"  {field}: {err['msg']}")
    return "\n".join(lines)


def _nested(key: str, value: Any) -> dict[str, Any]:
    """``("a.b", 1)`` -> ``{"a": {"b": 1}}``."""
    out: dict[str, Any] = {}
    node = out
    parts = key.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value
    return out


def load_config(
    cls: type[T],
    path: str | os.PathLike | None = None,
    overrides: list[str] | None = None,
    fields: Mapping[str, Any] | None = None,
) -> T:
    """Read a yaml preset (optional), apply ``--set`` overrides, then ``fields`` (dotted key ->
    value, as given: the job's flags), validate into ``cls``."""
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
        data = deep_merge(data, parse_overrides(overrides))
        source += " + --set"
    for key, value in (fields or {}).items():
        data = deep_merge(data, _nested(key, value))
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


class Alias(NamedTuple):
    """A job flag standing for one config field; ``const``: a flag without a value setting it."""

    field: str
    help: str
    const: Any = None


def run_job(
    cls: type[T],
    run: Callable[[T], Any],
    argv: list[str] | None = None,
    *,
    aliases: Mapping[str, Alias] | None = None,
    default_config: str | os.PathLike | None = None,
    description: str | None = None,
    show: Callable[[Any], str] | None = None,
) -> int:
    """Parse ``argv`` (``--config``, ``--set``, the aliases), validate ``cls``, call ``run(cfg)`` and
    print ``show(result)`` (default: JSON). Exit code 0; 2 for a ``ConfigError`` (printed as
    ``error: ...`` naming the field, before any work when the config itself is invalid)."""
    setup_logging()
    module = sys.modules.get(getattr(run, "__module__", None) or "")
    doc = getattr(module, "__doc__", None) or ""
    # under ``python -m jobs.x`` the module is __main__; its spec keeps the real name
    prog = "python -m " + (getattr(getattr(module, "__spec__", None), "name", None) or str(run.__module__))
    p = argparse.ArgumentParser(prog=prog, description=description or doc.split("\n", 1)[0])
    add_config_args(p, None if default_config is None else str(default_config))
    aliases = dict(aliases or {})
    for flag, a in aliases.items():
        dest = "alias_" + flag.lstrip("-").replace("-", "_")
        if a.const is not None:
            p.add_argument(flag, dest=dest, action="store_const", const=a.const, help=f"{a.help} ({a.field})")
        else:
            metavar = a.field.rsplit(".", 1)[-1].upper()
            p.add_argument(flag, dest=dest, metavar=metavar, help=f"{a.help} ({a.field})")
    args = p.parse_args(argv)
    fields = {}
    for flag, a in aliases.items():
        value = getattr(args, "alias_" + flag.lstrip("-").replace("-", "_"))
        if value is not None:
            fields[a.field] = value
    try:
        cfg = load_config(cls, args.config, args.overrides, fields)
        result = run(cfg)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(show(result) if show else json.dumps(result, indent=1, sort_keys=True, default=str), flush=True)
    return 0


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
