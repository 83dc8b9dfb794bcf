"""Ingest a Sentinel-1/2 STAC archive from object storage into Parquet shards with Ray Data.

On a laptop (starts a local Ray)::

    python -m jobs.ingest --items s3://my-bucket/stac/items.json --output s3://my-bucket/shards/v1 \\
        --config configs/ingest/tiny.yaml --set period=month max_cloud=0.3

    # a synthetic archive end to end
    python -m pipeline.synthetic --output /tmp/archive && \\
    python -m jobs.ingest --items /tmp/archive/items.json --output /tmp/ingest \\
        --config configs/ingest/tiny.yaml

On a cluster (joins it through ``RAY_ADDRESS``; credentials come from the nodes' environment / roles)::

    ray job submit --address http://<head>:8265 --working-dir . -- \\
        python -m jobs.ingest --items s3://bucket/items/ --output s3://bucket/shards/v1 \\
        --config configs/ingest/default.yaml --set storage.endpoint_url=https://s3.example.org

``--items``: an ItemCollection JSON, a directory/prefix of item JSON files, or a STAC API search spec.
``--output``: a local path or ``s3://`` prefix. Re-running the same command resumes an interrupted run
and writes nothing when it is complete. The summary table (items, units, tiles, rejects by reason,
bytes, MB/s) is printed at the end and returned by :func:`run`.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from jobs import cli
from jobs.cli import ConfigError
from pipeline.config import IngestConfig
from pipeline.storage import BadURIError, check_uri, redact

log = logging.getLogger("skyray.jobs.ingest")

DEFAULT_CONFIG = str(Path(__file__).resolve().parents[1] / "configs" / "ingest" / "default.yaml")


class IngestJobConfig(IngestConfig):
    """The ingest settings (``pipeline.config.IngestConfig``, stored in the manifest) + where from and to."""

    #: an ItemCollection JSON, a directory/prefix of item JSON files, or a STAC API search spec
    items: str
    #: output directory or ``s3://`` prefix
    output: str

    def pipeline_config(self) -> IngestConfig:
        return IngestConfig.model_validate(self.model_dump(exclude={"items", "output"}))

    @classmethod
    def of(cls, cfg: IngestConfig, items: str, output: str) -> IngestJobConfig:
        """The job of pipeline settings ``cfg`` from ``items`` to ``output`` (benches, notebooks)."""
        return cls.model_validate({**cfg.model_dump(), "items": str(items), "output": str(output)})


def run(job: IngestJobConfig) -> dict:
    """Plan on the driver, process pending units with Ray Data, write manifest + rejects; the summary."""
    from pipeline import ingest as ING
    from pipeline.plan import plan_units
    from pipeline.stac import load_scenes

    cfg, items, output = job.pipeline_config(), job.items, job.output

    for what, uri in (("--items", items), ("--output", output)):
        try:
            check_uri(uri, cfg.storage)
        except BadURIError as e:
            raise ConfigError(f"{what}: {e}") from None
    t0 = time.perf_counter()
    scenes, item_rejects = load_scenes(items, cfg.storage)
    units, plan_rejects = plan_units(scenes, cfg)
    n_items = len(scenes) + sum(1 for r in item_rejects if r.level == "item")
    log.info("planned %d units (%d tiles) from %d scenes", len(units), sum(len(u.tiles) for u in units),
             len(scenes))
    if ING.remove_partial_files(output, cfg):
        log.info("removed temp files of an interrupted run")
    todo, done = ING.pending_units(units, cfg, output)
    try:
        ING.check_output_version(output, cfg, done)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if done:
        log.info("resuming: %d of %d units already done", len(done), len(units))
    rows = ING.run_units(todo, cfg, output)
    # an attempt lost with its node mid-write (Ray re-ran its task elsewhere) leaves its temp file behind
    if ING.remove_partial_files(output, cfg):
        log.info("removed temp files of task attempts lost mid-write")
    fin = ING.finalize(
        units, cfg, output, upstream_rejects=[*item_rejects, *plan_rejects],
        counts={"items": n_items, "scenes": len(scenes)}, extra={"items": redact(items)},
    )
    seconds = time.perf_counter() - t0
    m = fin["manifest"]
    c = m["counts"]
    bytes_read = sum(r["bytes_read"] for r in rows)
    summary = {
        "items": n_items,
        "scenes_s2": sum(1 for s in scenes if s.sensor == "s2"),
        "scenes_s1": sum(1 for s in scenes if s.sensor == "s1"),
        "units": len(units),
        "units_processed": sum(1 for r in rows if not r["skipped"]),
        "units_skipped": len(done) + sum(1 for r in rows if r["skipped"]),
        "tiles_planned": c["tiles_planned"],
        "tiles_written": c["tiles_written"],
        "tiles_rejected": c["tiles_rejected"],
        "rejects_by_reason": c["rejects_by_reason"],
        "tile_rejects_by_reason": c["tile_rejects_by_reason"],
        "item_scene_rejects_by_reason": c["item_scene_rejects_by_reason"],
        "rows": m["rows"],
        "shards": len(m["shards"]),
        "bytes_read": bytes_read,
        "bytes_written": sum(r["bytes_written"] for r in rows),
        "seconds": seconds,
        "task_seconds": sum(r["seconds"] for r in rows),
        "mb_per_s": bytes_read / 1e6 / max(seconds, 1e-9),
        "files_written": fin["written"],
        "output": redact(output),
    }
    return summary


def main(argv: list[str] | None = None) -> int:
    from pipeline.ingest import format_summary

    def start(job: IngestJobConfig) -> dict:
        cli.log_config(job, "ingest config")
        cli.init_ray()
        return run(job)

    aliases = {
        "--items": cli.Alias("items", "ItemCollection JSON, item dir/prefix, or search spec"),
        "--output": cli.Alias("output", "output directory or s3:// prefix"),
    }
    return cli.run_job(IngestJobConfig, start, argv, aliases=aliases, default_config=DEFAULT_CONFIG,
                       show=format_summary, description=__doc__.split("\n\n")[0])


if __name__ == "__main__":
    raise SystemExit(main())
