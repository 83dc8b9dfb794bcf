"""The whole flow on embedded defaults, locally: synthetic archive -> ingest -> pretrain -> export.

    make demo                                   # = python -m jobs.demo
    python -m jobs.demo --out demo-out --scenes 4 --skip-pretrain
    python -m jobs.demo --set 'pretrain_overrides=[deepspeed.zero_stage=3]'

Everything is written under ``--out`` (default ``demo-out/``): ``archive/`` (COGs + ``items.json``),
``ingest/`` (shards, ``manifest.json``, ``rejects.parquet``), ``runs/demo/`` (checkpoints,
TensorBoard events, PNGs, the exported encoder). Running it again reuses what is already there:
the ingest resumes/does nothing, the pretraining run resumes from its last checkpoint.
"""

from __future__ import annotations

import logging
from pathlib import Path

from pydantic import Field

from jobs import cli
from pipeline.config import Strict

REPO = Path(__file__).resolve().parents[1]
log = logging.getLogger("skyray.jobs.demo")


class DemoConfig(Strict):
    #: where everything is written
    out: str = "demo-out"
    #: Sentinel-2 / Sentinel-1 scenes in the synthetic archive
    scenes: int = Field(default=4, ge=1)
    s1_scenes: int = Field(default=2, ge=0)
    #: scene size in 10 m pixels (multiple of 6)
    size_px: int = Field(default=768, ge=6, multiple_of=6)
    seed: int = 0
    #: stop after the ingest when false
    pretrain: bool = True
    pretrain_config: str = "configs/pretrain/spectralgpt_tiny.yaml"
    #: ``--set`` overrides of the pretraining config (``key=value`` strings)
    pretrain_overrides: list[str] = Field(default_factory=list)


def run(cfg: DemoConfig) -> dict:
    from jobs import ingest
    from jobs import pretrain as pt
    from pipeline import synthetic
    from pipeline.ingest import format_summary

    out = Path(cfg.out).resolve()
    archive_dir = out / "archive"
    items = archive_dir / "items.json"
    if items.is_file():
        log.info("reusing the synthetic archive in %s", archive_dir)
    else:
        log.info("writing a synthetic archive (%d S2 + %d S1 scenes, %d px) to %s", cfg.scenes, cfg.s1_scenes,
                 cfg.size_px, archive_dir)
        synthetic.make_archive(archive_dir, scenes=cfg.scenes, s1_scenes=cfg.s1_scenes, seed=cfg.seed,
                               size_px=cfg.size_px)

    cli.init_ray()
    icfg = cli.load_config(ingest.IngestJobConfig, REPO / "configs" / "ingest" / "tiny.yaml",
                           fields={"items": str(items), "output": str(out / "ingest")})
    summary = ingest.run(icfg)
    print(format_summary(summary), flush=True)
    result = {"ingest": summary}
    if not cfg.pretrain:
        return result

    pcfg = cli.load_config(pt.PretrainConfig, REPO / cfg.pretrain_config, cfg.pretrain_overrides,
                           fields={"data.path": str(out / "ingest"), "storage": str(out / "runs"),
                                   "name": "demo"})
    res = pt.run(pcfg)
    hist = res.get("history") or []
    if hist:
        print(f"pretrain {pcfg.model.name}: {len(hist)} logged steps, loss {hist[0]['loss']:.4f} -> "
              f"{hist[-1]['loss']:.4f}", flush=True)
    print(f"run directory: {res['run_dir']}", flush=True)
    if res.get("export"):
        print(f"exported encoder: {res['export']}", flush=True)
    result["pretrain"] = res
    return result


def main(argv: list[str] | None = None) -> int:
    return cli.run_job(DemoConfig, run, argv, show=lambda r: "demo finished", aliases={
        "--out": cli.Alias("out", "where everything is written (default: demo-out)"),
        "--scenes": cli.Alias("scenes", "Sentinel-2 scenes in the synthetic archive"),
        "--s1-scenes": cli.Alias("s1_scenes", "Sentinel-1 scenes in the synthetic archive"),
        "--size-px": cli.Alias("size_px", "scene size in 10 m pixels (multiple of 6)"),
        "--seed": cli.Alias("seed", "seed of the synthetic archive"),
        "--skip-pretrain": cli.Alias("pretrain", "stop after the ingest", const=False),
        "--pretrain-config": cli.Alias("pretrain_config", "pretraining preset"),
    })


if __name__ == "__main__":
    raise SystemExit(main())
