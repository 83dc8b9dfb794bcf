"""Pretrain SpectralGPT (MAE) or SkySense (MGCL + GeoCP) on the shards with Ray Train + DeepSpeed ZeRO.

    python -m jobs.pretrain --config configs/pretrain/spectralgpt_tiny.yaml \
        --data out/ingest --storage out/runs [--name RUN] [--set deepspeed.zero_stage=3 ...]

On a cluster the same command runs under ``ray job submit`` (``--data``/``--storage`` may be
``s3://``), scaled with ``--set scaling.num_workers=16 scaling.use_gpu=true``. Relaunching the same
command resumes from the latest checkpoint: without ``--name`` the run is named
``pretrain-<model>-<8 hex of the config's sha256>`` (``default_name``), so the same config finds it.

The machinery is ``jobs.train``: the dataset (``data.build_dataset``: projected ``read_parquet``
of shard contract v1, v2 or v3, a seeded file order per epoch, the family's preprocess function,
each worker's local shuffle buffer and ``make_augment_fn``; v3's native-resolution Sentinel-2
becomes the 12-band cube on the GPU when training on GPUs), the loop (``loop.TrainLoop``:
DeepSpeed ZeRO 0-3, schedules, progressive stages, checkpoints through ``ray.train.report``,
restarts from the latest one, a non-finite loss failing the run at once) and the report (step
line, TensorBoard, MFU). This job adds the pictures (loss curve; for a masked autoencoder input /
masked / reconstruction) and the export of the encoder to safetensors (``jobs.export``).
"""

from __future__ import annotations

import json
import logging
from typing import Any

import torch

from jobs import cli
from jobs.train.configs import TrainConfig
from jobs.train.data import build_dataset, read_manifest
from jobs.train.engine import read_state
from jobs.train.loop import NonFiniteLossError, TrainLoop, fit
from jobs.train.report import Reconstruction, write_plots
from pipeline.storage import join

__all__ = ["NonFiniteLossError", "PretrainConfig", "PretrainLoop", "default_name", "main", "run"]

log = logging.getLogger("skyray.pretrain")


class PretrainConfig(TrainConfig):
    #: export the encoder to ``<storage>/<name>/export/`` at the end
    export: bool = True


class PretrainLoop(TrainLoop):
    """``TrainLoop`` + the pretraining pictures."""

    config_cls = PretrainConfig
    tag = "pretrain"

    def pictures(self, out_dir: str) -> None:
        recon = None
        if self.family.reconstructs:
            self.engine.eval()
            with torch.no_grad():
                x = self.last_batch["x"][:4]
                out = self.forward(self.engine, {"x": x})
                recon = Reconstruction(x.float().cpu(), out["pred"].float().cpu(), out["mask"].float().cpu(),
                                       self.engine.module)
            self.engine.train()
        if self.rank == 0:
            write_plots(out_dir, self.history, recon, f"{self.cfg.model.name} pretraining")


def default_name(cfg: PretrainConfig) -> str:
    """``pretrain-<model>-<8 hex>`` (:meth:`TrainConfig.digest_name`): relaunching resumes."""
    return cfg.digest_name("pretrain")


def run(cfg: PretrainConfig) -> dict[str, Any]:
    """Train; returns ``{"name", "run_dir", "checkpoint", "metrics", "history", "starts", "export"}``."""
    if not cfg.data.path:
        raise cli.ConfigError("data.path is not set (pass --data)")
    if not cfg.storage:
        raise cli.ConfigError("storage is not set (pass --storage)")
    manifest = read_manifest(cfg.data.path, cfg.data.storage)
    for i, s in enumerate(cfg.stages):
        if s.img_size > manifest["tile_px"]:
            raise cli.ConfigError(
                f"stages.{i}.img_size {s.img_size} exceeds the shards' tile_px {manifest['tile_px']}"
            )
    name = cfg.name or default_name(cfg)
    cfg = cfg.model_copy(update={"name": name})
    cli.log_config(cfg, "pretrain config")
    cli.init_ray()

    result = fit(cfg, PretrainLoop, {"train": build_dataset(cfg, manifest)}, cli.config_json(cfg))
    metrics = result.metrics or {}
    out: dict[str, Any] = {"name": name, "run_dir": join(cfg.storage, name), "metrics": metrics}
    ckpt = result.checkpoint
    out["checkpoint"] = ckpt.path if ckpt else None
    if ckpt is not None:
        with ckpt.as_directory() as d:
            state = read_state(d)
            out["history"], out["starts"] = state["history"], state["starts"]
            if cfg.export:
                from jobs.export import export_checkpoint

                out["export"] = export_checkpoint(d, join(cfg.storage, name, "export"), cfg.data.storage)
    log.info("run %s finished at step %s: %s", name, metrics.get("step"), out.get("export"))
    return out


def main(argv: list[str] | None = None) -> int:
    return cli.run_job(
        PretrainConfig, run, argv, default_config="configs/pretrain/spectralgpt_tiny.yaml",
        aliases={
            "--data": cli.Alias("data.path", "shards root (local path or s3://)"),
            "--storage": cli.Alias("storage", "runs root (local path or s3://)"),
            "--name": cli.Alias("name", "run name (default: pretrain-<model>-<digest of the config>); "
                                        "relaunching with the same name resumes"),
        },
        show=lambda out: json.dumps({k: out.get(k) for k in ("name", "run_dir", "checkpoint", "export")},
                                    indent=1, default=str),
    )


if __name__ == "__main__":
    raise SystemExit(main())
