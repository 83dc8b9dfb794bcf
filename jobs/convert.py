"""Convert a benchmark dataset, exactly as users unpack it, into labelled shards (contract v3) with Ray Data.

    python -m jobs.convert --benchmark eurosat --source /data/EuroSAT_MS --output /data/bench/eurosat \\
        --config configs/convert/eurosat.yaml --set options.seed=1

    # from object storage, on a cluster (joins it through RAY_ADDRESS)
    ray job submit --address http://<head>:8265 --working-dir . -- \\
        python -m jobs.convert --benchmark bigearthnet --source s3://bucket/BigEarthNet \\
        --output s3://bucket/bench/bigearthnet --config configs/convert/bigearthnet.yaml

The driver lists the dataset (metadata only: folders, split files, ``metadata.parquet``) through the
benchmark's ``list_items``; the items, sorted by id, are cut into shards of ``rows_per_shard`` items; one
Ray Data task per shard reads its items (``read_item``), encodes the shard and writes it, then its sidecar
``parts/<shard>.json`` (the shard's size, sha256, train-split band sums and the rejects of its items). The
driver ends with ``rejects.parquet`` and ``manifest.json`` built from the sidecars. Every item found is
either written or rejected with a reason. Re-running the same command skips every shard whose file holds
the bytes its sidecar names and rewrites nothing; an output written with another config or contract version
is refused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from pydantic import Field, ValidationError, field_validator

from jobs import cli
from jobs.cli import ConfigError
from pipeline.config import StorageConfig, Strict
from pipeline.convert import NAMES, BadInput, Benchmark, Item, SourceError, get, relpath
from pipeline.ingest import configure_data_context
from pipeline.stac import Reject
from pipeline.storage import (
    BadURIError,
    check_uri,
    filesystem,
    join,
    redact,
    scheme_of,
    write_bytes_atomic,
)

log = logging.getLogger("skyray.jobs.convert")

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "convert"
PARTS_DIR = "parts"
MANIFEST = "manifest.json"


class ConvertConfig(Strict):
    """Which benchmark, from where to where, and how: every input of ``jobs.convert``."""

    #: one of :data:`pipeline.convert.NAMES`
    benchmark: str
    #: the dataset's root as unpacked (local path or ``s3://`` prefix)
    source: str
    #: output directory or ``s3://`` prefix
    output: str
    #: the benchmark's options (split files, seed, ...), validated by its own pydantic model
    options: dict[str, Any] = Field(default_factory=dict)
    #: items per shard, in sorted-id order (one row each for single-image benchmarks; a cropped
    #: benchmark's item gives one row per tile)
    rows_per_shard: int = Field(default=1024, ge=1, le=1_000_000)
    #: Ray Data: CPUs per shard task and how many run at once (None: as many as fit)
    num_cpus_per_task: float = Field(default=1.0, gt=0)
    concurrency: int | None = Field(default=None, ge=1)
    storage: StorageConfig = StorageConfig()

    @field_validator("benchmark")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in NAMES:
            raise ValueError(f"unknown benchmark {v!r}; expected one of {', '.join(NAMES)}")
        return v


class ShardPlan(NamedTuple):
    """One shard to write: its name (``shards/<name>.parquet``) and its items, in id order."""

    name: str
    items: list[Item]


# ------------------------------------------------------------------------------------------- config


def validate_options(bench: Benchmark, options: Mapping[str, Any]):
    """``options`` validated by the benchmark's model (``ConfigError`` naming ``options.<field>``)."""
    if bench.options is None:
        if options:
            raise ConfigError(f"options: benchmark {bench.name!r} takes no options, got {sorted(options)}")
        return None
    try:
        return bench.options.model_validate(dict(options))
    except ValidationError as e:
        lines = [f"invalid options for benchmark {bench.name!r}:"]
        for err in e.errors():
            field = ".".join(str(p) for p in err["loc"])
            lines.append(f"  options{'.' if field else ''}{field}: {err['msg']}")
        raise ConfigError("\n".join(lines)) from None


def manifest_config(cfg: ConvertConfig, options) -> dict:
    """What decides the output, as stored in the manifest: benchmark, validated options, rows per shard.

    Paths, storage settings and parallelism are left out: the same dataset read from a disk or a bucket,
    on any cluster, gives byte-identical shards and manifest."""
    opts = options.model_dump(mode="json") if options is not None else {}
    return {"benchmark": cfg.benchmark, "options": opts, "rows_per_shard": cfg.rows_per_shard}


def config_sha(config: Mapping) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


# --------------------------------------------------------------------------------------------- plan


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def plan_shards(items: Sequence[Item], rows_per_shard: int) -> list[ShardPlan]:
    """Items sorted by id, cut into consecutive groups of ``rows_per_shard``; each shard is named after its
    first item (characters outside ``[A-Za-z0-9._-]`` become ``_``). Raises ``ConfigError`` on duplicate
    ids (two copies of the dataset under one source)."""
    ordered = sorted(items, key=lambda it: it.id)
    dup = sorted({a.id for a, b in zip(ordered, ordered[1:]) if a.id == b.id})
    if dup:
        raise ConfigError(f"--source: {len(dup)} item ids occur twice (two copies of the dataset?): "
                          f"{dup[:5]}")
    plans = []
    for i in range(0, len(ordered), rows_per_shard):
        part = ordered[i:i + rows_per_shard]
        plans.append(ShardPlan(_UNSAFE.sub("_", part[0].id), part))
    names = [p.name for p in plans]
    if len(set(names)) != len(names):  # ids differing only in unsafe characters: number them instead
        plans = [ShardPlan(f"{k:06d}_{p.name}", p.items) for k, p in enumerate(plans)]
    return plans


def item_to_json(it: Item) -> dict:
    return {"id": it.id, "split": it.split, "files": dict(it.files), "extra": dict(it.extra)}


def item_from_json(d: Mapping) -> Item:
    return Item(d["id"], d["split"], d["files"], d.get("extra", {}))


def items_sha(items: Sequence[Item], root: str) -> str:
    """Digest of a shard's items (ids, splits, facts, files relative to the source ``root``): a sidecar
    counts only for the same items, wherever the dataset is read from."""
    rows = [{**item_to_json(it), "files": {k: relpath(root, v) for k, v in it.files.items()}} for it in items]
    return hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()


def sidecar_path(name: str) -> str:
    return f"{PARTS_DIR}/{name}.json"


class Output:
    """The output root with one storage client for all of a task's requests (a fresh s3fs client spends
    about half a second on its first request, which per file would dominate small shards).

    ``write`` is :func:`pipeline.storage.write_bytes_atomic` (temp + rename locally, one PUT on S3)."""

    def __init__(self, uri: str, storage: StorageConfig):
        self.uri, self.storage = uri, storage
        self.fs, self.root = filesystem(uri, storage)
        self.local = scheme_of(uri) == "file"

    def _path(self, rel: str) -> str:
        return f"{self.root.rstrip('/')}/{rel}"

    def exists(self, rel: str) -> bool:
        return self.fs.exists(self._path(rel))

    def read(self, rel: str) -> bytes:
        return self.fs.cat_file(self._path(rel))

    def write(self, rel: str, data: bytes) -> None:
        if self.local:
            write_bytes_atomic(join(self.uri, rel), data, self.storage)
        else:
            self.fs.pipe_file(self._path(rel), data)

    def names(self, sub: str, suffix: str) -> list[str]:
        """Sorted base names under ``sub`` ending in ``suffix`` (temp files left out)."""
        try:
            entries = self.fs.ls(self._path(sub), detail=False)
        except FileNotFoundError:
            return []
        names = (e.rstrip("/").rsplit("/", 1)[-1] for e in entries)
        return sorted(n for n in names if n.endswith(suffix) and not n.startswith("."))


def check_output(out: Output, config: Mapping) -> list[str]:
    """``ConfigError`` when ``out`` already holds a conversion of another config or contract version (a
    resume would mix two datasets in one output); returns the names of the sidecars already there."""
    from pipeline.shards import SCHEMA_VERSION

    sha = config_sha(config)
    found_version, found_config = None, None
    where = redact(out.uri)
    if out.exists(MANIFEST):
        m = json.loads(out.read(MANIFEST))
        found_version, found_config = m.get("schema_version"), m.get("config")
        if "benchmark" not in m:
            raise ConfigError(f"--output {where} holds an ingest output, not a benchmark conversion: "
                              "use a new output")
    names = [n[: -len(".json")] for n in out.names(PARTS_DIR, ".json")]
    if found_version is None and names:
        side = json.loads(out.read(sidecar_path(names[0])))
        found_version, found_config = side.get("schema_version"), side.get("config")
    if found_version is not None and found_version != SCHEMA_VERSION:
        raise ConfigError(f"--output {where} holds shards of contract v{found_version}; this job "
                          f"writes v{SCHEMA_VERSION}: use a new output (or delete the old one) instead of "
                          "resuming")
    if found_config is not None and config_sha(found_config) != sha:
        diff = _diff(found_config, config)
        raise ConfigError(f"--output {where} was written by a different config ({'; '.join(diff)}): "
                          "use a new output (or delete the old one) instead of resuming")
    return names


def _diff(a: Mapping, b: Mapping, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, Mapping) and isinstance(vb, Mapping):
            out += _diff(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append(f"{prefix}{k}: {va!r} there, {vb!r} now")
    return out


def remove_partial_files(out: str, storage: StorageConfig) -> int:
    """Delete the temp files a killed run left behind (local outputs; an S3 PUT is all or nothing)."""
    if scheme_of(out) != "file":
        return 0
    _, root = filesystem(out, storage)
    n = 0
    for sub in ("shards", PARTS_DIR, ""):
        d = os.path.join(root, sub)
        if os.path.isdir(d):
            for name in os.listdir(d):
                if name.startswith(".") and name.endswith(".tmp"):
                    os.unlink(os.path.join(d, name))
                    n += 1
    return n


# ------------------------------------------------------------------------------------------ one shard


def convert_shard(bench: Benchmark, options, plan: ShardPlan, fs, root: str, out: Output,
                  config: Mapping) -> dict:
    """Read the items of one shard, write ``shards/<name>.parquet`` (when any item survived) and then its
    sidecar; returns the sidecar. Items that raise :class:`BadInput` become rejects. ``fs``, ``root``: the
    source's filesystem and root path on it."""
    from pipeline.convert.writer import encode_shard
    from pipeline.shards import SCHEMA_VERSION, sha256

    t0 = time.perf_counter()
    samples, rejects, written = [], [], 0
    for it in plan.items:
        try:
            got = bench.read_item(it, options, fs)
        except BadInput as e:
            rejects.append(e.reject(it.id))
            continue
        if not got:
            raise ValueError(f"{bench.name}.read_item returned no sample for {it.id!r} "
                             "(it must raise BadInput instead)")
        samples.extend(got)
        written += 1
    shard = None
    if samples:
        enc = encode_shard(plan.name, samples, bench.info)
        del samples
        out.write(enc.path, enc.data)
        shard = {"path": enc.path, "rows": enc.rows, "bytes": len(enc.data), "sha256": sha256(enc.data),
                 "splits": dict(sorted(enc.splits.items())), "s2_sums": enc.s2_sums, "s1_sums": enc.s1_sums}
    side = {
        "schema_version": SCHEMA_VERSION,
        "config": dict(config),
        "items_sha": items_sha(plan.items, root),
        "items": len(plan.items),
        "items_written": written,
        "shard": shard,
        "rejects": [r.to_dict() for r in sorted(rejects, key=lambda r: r.sort_key)],
    }
    data = (json.dumps(side, sort_keys=True, indent=1, allow_nan=False) + "\n").encode()
    out.write(sidecar_path(plan.name), data)
    side["seconds"] = time.perf_counter() - t0
    return side


def shard_done(side: Mapping, plan: ShardPlan, root: str, out: Output, config: Mapping) -> bool:
    """Whether an existing sidecar stands for ``plan`` finished: same config and items (under the source
    ``root``), and its shard file (if it wrote one) holds exactly the bytes the sidecar names."""
    from pipeline.shards import sha256

    if side.get("config") != dict(config) or side.get("items_sha") != items_sha(plan.items, root):
        return False
    shard = side.get("shard")
    if shard is None:
        return True
    return out.exists(shard["path"]) and sha256(out.read(shard["path"])) == shard["sha256"]


def make_convert_fn(cfg: ConvertConfig, config: Mapping) -> Callable[[dict], dict]:
    """The Ray Data batch function: ``{"plan": [shard plan JSON]}`` -> ``{"side": [sidecar JSON]}``
    (``skipped`` set when the shard was already done). Testable without a cluster."""
    name, opts_json, source, output, storage = cfg.benchmark, cfg.options, cfg.source, cfg.output, cfg.storage

    def convert(batch: dict) -> dict:
        import numpy as np

        bench = get(name)
        options = validate_options(bench, opts_json)
        bench = bench.resolved(options)
        fs, root = filesystem(source, storage)
        out = Output(output, storage)
        sides = []
        for js in batch["plan"]:
            d = json.loads(str(js))
            plan = ShardPlan(d["name"], [item_from_json(x) for x in d["items"]])
            if out.exists(sidecar_path(plan.name)):
                side = json.loads(out.read(sidecar_path(plan.name)))
                if shard_done(side, plan, root, out, config):
                    side.update(skipped=True, seconds=0.0)
                    sides.append(json.dumps(side))
                    continue
            side = convert_shard(bench, options, plan, fs, root, out, config)
            side["skipped"] = False
            sides.append(json.dumps(side))
        return {"side": np.array(sides, dtype=object)}

    return convert


def run_shards(plans: Sequence[ShardPlan], cfg: ConvertConfig, config: Mapping) -> list[dict]:
    """One Ray Data task per shard plan; the sidecars in a fixed order (by their items' digest)."""
    import ray.data

    if not plans:
        return []
    configure_data_context()
    rows = [{"plan": json.dumps({"name": p.name, "items": [item_to_json(it) for it in p.items]})}
            for p in plans]
    ds = ray.data.from_items(rows, override_num_blocks=min(len(rows), 10_000))
    ds = ds.map_batches(make_convert_fn(cfg, config), batch_size=1, batch_format="numpy",
                        num_cpus=cfg.num_cpus_per_task, concurrency=cfg.concurrency)
    sides = [json.loads(str(r["side"])) for r in ds.take_all()]
    return sorted(sides, key=lambda s: s["items_sha"])


# -------------------------------------------------------------------------------------------- the job


def run(cfg: ConvertConfig) -> dict:
    """List on the driver, convert the pending shards with Ray Data, write rejects + manifest; the summary."""
    from pipeline.convert.writer import finish

    t0 = time.perf_counter()
    for what, uri in (("--source", cfg.source), ("--output", cfg.output)):
        try:
            check_uri(uri, cfg.storage)
        except BadURIError as e:
            raise ConfigError(f"{what}: {e}") from None
    bench = get(cfg.benchmark)
    options = validate_options(bench, cfg.options)
    bench = bench.resolved(options)  # facts that depend on the options (the synthetic task, slots, tile)
    config = manifest_config(cfg, options)
    fs, root = filesystem(cfg.source, cfg.storage)
    try:
        items, list_rejects = bench.list_items(root, options, fs)
    except SourceError as e:
        raise ConfigError(f"--source {redact(cfg.source)}: {e}") from None
    found = len(items) + len(list_rejects)
    log.info("%s: found %d items (%d rejected while listing: %s)", cfg.benchmark, found, len(list_rejects),
             dict(Counter(r.reason for r in list_rejects)))
    plans = plan_shards(items, cfg.rows_per_shard)
    if remove_partial_files(cfg.output, cfg.storage):
        log.info("removed temp files of an interrupted run")
    have = set(check_output(Output(cfg.output, cfg.storage), config))
    if have:
        log.info("resuming: %d of %d shards have a sidecar", len(have & {p.name for p in plans}), len(plans))
    sides = run_shards(plans, cfg, config)
    skipped = sum(1 for s in sides if s["skipped"])
    rejects = list(list_rejects) + [Reject.from_dict(d) for s in sides for d in s["rejects"]]
    items_written = sum(s["items_written"] for s in sides)
    if items_written + len(rejects) != found:
        raise AssertionError(f"written {items_written} + rejected {len(rejects)} != found {found}")
    shards = [s["shard"] for s in sides if s["shard"] is not None]
    # a cropped benchmark's tile side is an option (OSCD ``tile_px``); the registered one is its default
    tile_px = getattr(options, "tile_px", bench.tile_px)
    manifest = finish(cfg.output, shards, rejects, bench.info, tile_px=tile_px,
                      max_slots=bench.max_slots, s2_20m_gsd=bench.s2_20m_gsd, config=config, found=found,
                      storage=cfg.storage, extra_counts={"items_written": items_written})
    seconds = time.perf_counter() - t0
    summary = {
        "benchmark": cfg.benchmark,
        "task": bench.info.task,
        "classes": len(bench.info.classes),
        "found": found,
        "written": items_written,
        "rejected": len(rejects),
        "rejects_by_reason": dict(sorted(Counter(r.reason for r in rejects).items())),
        "rows": manifest["rows"],
        "splits": manifest["benchmark"]["splits"],
        "shards": len(manifest["shards"]),
        "shards_converted": len(sides) - skipped,
        "shards_skipped": skipped,
        "bytes_written": sum(s["shard"]["bytes"] for s in sides if s["shard"] and not s["skipped"]),
        "seconds": seconds,
        "task_seconds": sum(s["seconds"] for s in sides),
        "output": redact(cfg.output),
    }
    log.info("%s: %d written + %d rejected = %d found; %d rows in %d shards (%d skipped) in %.1f s",
             cfg.benchmark, items_written, len(rejects), found, manifest["rows"], len(manifest["shards"]),
             skipped, seconds)
    return summary


def format_summary(summary: Mapping) -> str:
    """A human-readable table of a conversion summary (see :func:`run`)."""
    rows = [
        ("benchmark (task, classes)", f"{summary['benchmark']} ({summary['task']}, {summary['classes']})"),
        ("found = written + rejected", f"{summary['found']} = {summary['written']} + {summary['rejected']}"),
    ]
    rows += [(f"  rejects: {reason}", n) for reason, n in summary["rejects_by_reason"].items()]
    rows += [
        ("rows per split", ", ".join(f"{k} {v}" for k, v in summary["splits"].items()) or "-"),
        ("shards converted / already done", f"{summary['shards_converted']} / {summary['shards_skipped']}"),
        ("bytes written", f"{summary['bytes_written'] / 1e6:.1f} MB"),
        ("wall time", f"{summary['seconds']:.1f} s"),
        ("shard task time (sum)", f"{summary['task_seconds']:.1f} s"),
        ("shards / rows", f"{summary['shards']} / {summary['rows']} under {summary['output']}"),
    ]
    w = max(len(k) for k, _ in rows)
    return "\n".join(["convert summary", "-" * (w + 20)] + [f"{k:<{w}}  {v}" for k, v in rows])


def main(argv: list[str] | None = None) -> int:
    def start(cfg: ConvertConfig) -> dict:
        cli.log_config(cfg, "convert config")
        cli.init_ray()
        return run(cfg)

    aliases = {
        "--benchmark": cli.Alias("benchmark", f"benchmark: {', '.join(NAMES)}"),
        "--source": cli.Alias("source", "the dataset's root as unpacked (path or s3:// prefix)"),
        "--output": cli.Alias("output", "output directory or s3:// prefix"),
    }
    return cli.run_job(ConvertConfig, start, argv, aliases=aliases, show=format_summary,
                       description=__doc__.split("\n\n")[0])


__all__ = ["ConvertConfig", "ShardPlan", "check_output", "format_summary", "main", "make_convert_fn",
           "plan_shards", "run"]

if __name__ == "__main__":
    raise SystemExit(main())
