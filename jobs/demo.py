"""The whole flow on embedded defaults, locally: synthetic archive -> ingest -> pretrain -> export.

    make demo                                   # = python -m jobs.demo
    python -m jobs.demo --out demo-out --scenes 4 --skip-pretrain

Everything is written under ``--out`` (default ``demo-out/``): ``archive/`` (COGs + ``items.json``),
``ingest/`` (shards, ``manifest.json``, ``rejects.parquet``), ``runs/demo/`` (checkpoints,
TensorBoard events, PNGs, the exported encoder). Running it again reuses what is already there:
the ingest resumes/does nothing, the pretraining run resumes from its last checkpoint.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from jobs.cli import init_ray, load_config, setup_logging
from pipeline.config import IngestConfig

REPO = Path(__file__).resolve().parents[1]
log = logging.getLogger("skyray.jobs.demo")


def run(out: Path, scenes: int, s1_scenes: int, size_px: int, seed: int, pretrain: bool,
        pretrain_config: str, overrides: list[str]) -> dict:
    from jobs import ingest
    from pipeline import synthetic
    from pipeline.ingest import format_summary

    out = out.resolve()
    archive_dir = out / "archive"
    items = archive_dir / "items.json"
    if items.is_file():
        log.info("reusing the synthetic archive in %s", archive_dir)
    else:
        log.info("writing a synthetic archive (%d S2 + %d S1 scenes, %d px) to %s", scenes, s1_scenes,
                 size_px, archive_dir)
        synthetic.make_archive(archive_dir, scenes=scenes, s1_scenes=s1_scenes, seed=seed, size_px=size_px)

    init_ray()
    cfg = load_config(IngestConfig, REPO / "configs" / "ingest" / "tiny.yaml")
    summary = ingest.run(cfg, str(items), str(out / "ingest"))
    print(format_summary(summary), flush=True)
    result = {"ingest": summary}
    if not pretrain:
        return result

    from jobs import pretrain as pt

    pcfg = load_config(pt.PretrainConfig, REPO / pretrain_config,
                       [f"data.path={out / 'ingest'}", f"storage={out / 'runs'}", "name=demo", *overrides])
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
    p = argparse.ArgumentParser(prog="python -m jobs.demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="demo-out", help="where everything is written (default: demo-out)")
    p.add_argument("--scenes", type=int, default=4, help="Sentinel-2 scenes in the synthetic archive")
    p.add_argument("--s1-scenes", type=int, default=2, help="Sentinel-1 scenes in the synthetic archive")
    p.add_argument("--size-px", type=int, default=768, help="scene size in 10 m pixels (multiple of 6)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-pretrain", action="store_true", help="stop after the ingest")
    p.add_argument("--pretrain-config", default="configs/pretrain/spectralgpt_tiny.yaml")
    p.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="pretrain config overrides")
    a = p.parse_args(argv)
    setup_logging()
    run(Path(a.out), a.scenes, a.s1_scenes, a.size_px, a.seed, not a.skip_pretrain, a.pretrain_config,
        a.overrides)
    return 0


if __name__ == "__main__":
    sys.exit(main())
