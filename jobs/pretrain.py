"""Pretrain SpectralGPT (MAE) or SkySense (MGCL + GeoCP) on the shards with Ray Train + DeepSpeed ZeRO.

    python -m jobs.pretrain --config configs/pretrain/spectralgpt_tiny.yaml \
        --data out/ingest --storage out/runs [--name RUN] [--set deepspeed.zero_stage=3 ...]

On a cluster the same command runs under ``ray job submit`` (``--data``/``--storage`` may be
``s3://``), scaled with ``--set scaling.num_workers=16 scaling.use_gpu=true``. Relaunching with
the same ``--name`` and ``--storage`` resumes from the latest checkpoint.

Data: Ray Data ``read_parquet`` (only the columns the model needs) -> seeded file/block-order
shuffle per epoch -> ``make_*_preprocess_fn`` (slot choice, band selection, normalisation from the
manifest) -> ``streaming_split`` to the workers -> ``iter_torch_batches`` with a seeded local
shuffle buffer and ``make_augment_fn`` (crop to the stage's size, rot90, flip; identical across
bands, dates and modalities of a sample).

Training: one DeepSpeed engine per worker (ZeRO 0-3, offload, bf16 on GPU / fp32 on CPU, grad
accumulation, clipping), AdamW with decay on ≥ 2-D weights only, LR = ``lr_at(step)`` set every
step; progressive stages change crop size and batch (SpectralGPT and SkySense resample their
position embeddings, so one engine and its optimizer state carry across stages). Every
``checkpoint.every_steps`` each rank writes its DeepSpeed shard and they are reported together
through ``ray.train.report``; ``FailureConfig`` restarts the worker group from the latest one.
At the end the encoder is exported to safetensors (``jobs.export``) and PNGs are drawn.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import shutil
import signal
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from jobs.cli import (
    ConfigError,
    add_config_args,
    config_json,
    init_ray,
    load_config,
    log_config,
    setup_logging,
)
from jobs.train_common import (
    CONFIG_FILE,
    DS_TAG,
    SKYSENSE_COLUMNS,
    SPECTRALGPT_COLUMNS,
    AugmentConfig,
    DeepSpeedConfig,
    OptimConfig,
    ScalingSection,
    StageConfig,
    Strict,
    build_deepspeed_config,
    build_partitioned,
    cosine_momentum,
    count_flops,
    ema_update,
    format_step_line,
    lr_at,
    make_augment_fn,
    make_skysense_preprocess_fn,
    make_spectralgpt_preprocess_fn,
    micro_batch,
    param_groups,
    peak_flops,
    peak_memory_gb,
    read_state,
    stage_at,
    use_bf16,
    write_state,
)
from pipeline.config import StorageConfig

log = logging.getLogger("skyray.pretrain")


#: written into the run directory by rank 0 when the loss is non-finite; the driver raises from it
NON_FINITE_FILE = "non_finite.json"


class NonFiniteLossError(RuntimeError):
    """The loss became NaN/inf; the message names the step. ``starts``: the steps the worker
    group started at in this run's lineage (one entry: it was not restarted)."""

    def __init__(self, message: str, step: int | None = None, starts: list[int] | None = None):
        super().__init__(message)
        self.step, self.starts = step, list(starts or [])


# ---------------------------------------------------------------------------------------------
# config
# ---------------------------------------------------------------------------------------------


class ModelSection(Strict):
    #: registry preset; the family (spectralgpt / skysense) is its prefix
    name: str = "spectralgpt_tiny"
    #: preset overrides (e.g. img_size) and, for SkySense, pretrainer settings (e.g. proj_dim)
    overrides: dict[str, Any] = Field(default_factory=dict)
    #: SpectralGPT: fraction of tokens masked (None: the preset's)
    mask_ratio: float | None = Field(default=None, ge=0.0, lt=1.0)
    #: SkySense: EMA teacher momentum, cosine from this to ``teacher_momentum_final``
    teacher_momentum: float = Field(default=0.996, ge=0.0, le=1.0)
    teacher_momentum_final: float = Field(default=1.0, ge=0.0, le=1.0)

    @property
    def family(self) -> Literal["spectralgpt", "skysense"]:
        return "skysense" if self.name.startswith("skysense") else "spectralgpt"


class DataSection(Strict):
    #: shards root (``<path>/manifest.json``, ``<path>/shards/*.parquet``); ``--data`` sets it
    path: str | None = None
    #: SpectralGPT: which S2 date of a sample to use (``all``: every valid date is a sample)
    s2_slot: Literal["least_cloudy", "random", "all"] = "least_cloudy"
    #: rows in each worker's local shuffle buffer (0: none)
    shuffle_buffer: int = Field(default=256, ge=0)
    prefetch_batches: int = Field(default=2, ge=0)
    #: rows per Ray Data preprocessing task call
    preprocess_batch_size: int = Field(default=64, ge=1)
    #: keep the preprocessed samples in the object store after the first pass (small data sets,
    #: tests, demos): later epochs only re-shuffle block order and re-split
    cache: bool = False
    storage: StorageConfig = Field(default_factory=StorageConfig)


class CheckpointSection(Strict):
    every_steps: int = Field(default=100, ge=1)
    keep: int = Field(default=2, ge=1)


class LogSection(Strict):
    every_steps: int = Field(default=10, ge=1)
    tensorboard: bool = True
    plots: bool = True


class DebugSection(Strict):
    """Fault injection for tests and drills: the last rank SIGKILLs itself once at this step
    (``marker`` records that it happened, so the restarted run does not repeat it)."""

    kill_worker_at_step: int | None = Field(default=None, ge=1)
    kill_marker: str | None = None
    #: every rank's loss becomes NaN at this step (a deterministic non-finite loss)
    nan_loss_at_step: int | None = Field(default=None, ge=1)


class PretrainConfig(Strict):
    name: str | None = None
    #: where runs go: ``<storage>/<name>/`` holds checkpoints, TensorBoard, PNGs, the export
    storage: str | None = None
    seed: int = 0
    model: ModelSection = Field(default_factory=ModelSection)
    data: DataSection = Field(default_factory=DataSection)
    stages: list[StageConfig] = Field(min_length=1)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    deepspeed: DeepSpeedConfig = Field(default_factory=DeepSpeedConfig)
    scaling: ScalingSection = Field(default_factory=ScalingSection)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    checkpoint: CheckpointSection = Field(default_factory=CheckpointSection)
    log: LogSection = Field(default_factory=LogSection)
    max_failures: int = Field(default=2, ge=0)
    export: bool = True
    debug: DebugSection = Field(default_factory=DebugSection)

    @model_validator(mode="after")
    def _check(self) -> PretrainConfig:
        for i, s in enumerate(self.stages):
            try:
                micro_batch(s.batch_size, self.scaling.num_workers, self.deepspeed.grad_accum)
            except ValueError as e:
                raise ValueError(f"stages.{i}.batch_size: {e}") from None
        if self.deepspeed.zero_init and self.model.family == "skysense":
            raise ValueError("deepspeed.zero_init is not supported for SkySense (the teacher is a deepcopy)")
        if self.debug.kill_worker_at_step is not None and not self.debug.kill_marker:
            raise ValueError("debug.kill_marker is required with debug.kill_worker_at_step")
        if self.name is not None and (not self.name or "/" in self.name or ".." in self.name):
            raise ValueError(f"name {self.name!r} must be a plain directory name")
        return self

    @property
    def total_steps(self) -> int:
        return sum(s.steps for s in self.stages)


# ---------------------------------------------------------------------------------------------
# storage
# ---------------------------------------------------------------------------------------------


def _join(base: str, *parts: str) -> str:
    out = base.rstrip("/")
    for p in parts:
        out += "/" + p.strip("/")
    return out


def pyarrow_fs(uri: str, storage: StorageConfig):
    """``(pyarrow filesystem, path)`` for a local path or ``s3://`` URI (s3fs configured from
    ``storage`` behind pyarrow's fsspec handler, so Ray Data and Ray Train see the same endpoint)."""
    import pyarrow.fs as pafs

    from pipeline.storage import filesystem, scheme_of

    fs, path = filesystem(uri, storage)
    if scheme_of(uri) == "file":
        return pafs.LocalFileSystem(), path
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


#: v1 stored s2/s1 as FixedShapeTensor, v2 as fixed_size_binary; both decode the same (train_common)
READABLE_SCHEMA_VERSIONS = (1, 2)


def read_manifest(data_uri: str, storage: StorageConfig) -> dict:
    """The ingest's manifest; ValueError if its shard contract is not one this code reads (v1 or v2)."""
    from pipeline.storage import filesystem

    fs, path = filesystem(_join(data_uri, "manifest.json"), storage)
    if not fs.exists(path):
        raise FileNotFoundError(f"no manifest.json under data.path {data_uri!r}")
    manifest = json.loads(fs.cat_file(path))
    if manifest.get("schema_version") not in READABLE_SCHEMA_VERSIONS:
        raise ValueError(f"manifest schema_version {manifest.get('schema_version')!r} is not one of "
                         f"{READABLE_SCHEMA_VERSIONS} (shard contract versions this code reads)")
    return manifest


# ---------------------------------------------------------------------------------------------
# the dataset (driver side)
# ---------------------------------------------------------------------------------------------


def build_dataset(cfg: PretrainConfig, manifest: dict):
    """Ray Dataset of preprocessed samples: projected read in a seeded file order reshuffled every
    epoch, then the family's preprocess function (normalisation from the manifest). Cached
    (``data.cache``): materialised, and its block order reshuffled every epoch."""
    import ray.data
    from ray.data import FileShuffleConfig, RandomSeedConfig

    fs, root = pyarrow_fs(cfg.data.path, cfg.data.storage)
    paths = [_join(root, s["path"]) for s in manifest["shards"]]
    if cfg.model.family == "spectralgpt":
        columns = list(SPECTRALGPT_COLUMNS)
        fn = make_spectralgpt_preprocess_fn(manifest["band_stats"], slot=cfg.data.s2_slot, seed=cfg.seed)
    else:
        columns = list(SKYSENSE_COLUMNS)
        fn = make_skysense_preprocess_fn(manifest["band_stats"])
    ds = ray.data.read_parquet(
        paths,
        filesystem=fs,
        columns=columns,
        shuffle=FileShuffleConfig(seed=cfg.seed, reseed_after_execution=True),
    )
    ds = ds.map_batches(fn, batch_format="pyarrow", batch_size=cfg.data.preprocess_batch_size)
    if not cfg.data.cache:
        # Streaming: file order (above) + each worker's local shuffle buffer. A block-order
        # shuffle here would be an all-to-all barrier materialising every block before batch one.
        return ds
    # Materialised once; reshuffling its block order per epoch is then only metadata.
    return ds.materialize().randomize_block_order(
        seed=RandomSeedConfig(seed=cfg.seed, reseed_after_execution=True)
    )


# ---------------------------------------------------------------------------------------------
# model adapters: one forward per family
# ---------------------------------------------------------------------------------------------


def build_model(cfg: PretrainConfig):
    """The module the engine trains: SpectralGPT MAE, or the SkySense pretrainer (student + teacher)."""
    if cfg.model.family == "skysense":
        from models.skysense import build_pretrainer

        return build_pretrainer(cfg.model.name, **cfg.model.overrides)
    from models.registry import create

    return create(cfg.model.name, **cfg.model.overrides)


def forward_loss(engine, cfg: PretrainConfig, batch: dict) -> tuple[Any, dict[str, float]]:
    """One forward; returns the scalar loss and the family's component losses (floats)."""
    if cfg.model.family == "spectralgpt":
        loss, _, _ = engine(batch["x"], cfg.model.mask_ratio)
        return loss, {}
    out = engine(batch)
    return out["loss"], {k: float(v.detach()) for k, v in out.items() if k != "loss"}


# ---------------------------------------------------------------------------------------------
# the per-worker loop
# ---------------------------------------------------------------------------------------------


def _upload_dir(local: str, dest_rel: str) -> None:
    """Copy a local directory into the run's storage (``<storage>/<name>/<dest_rel>``)."""
    import pyarrow.fs as pafs
    import ray.train

    storage = ray.train.get_context().get_storage()
    dest = _join(storage.experiment_fs_path, dest_rel)
    storage.storage_filesystem.create_dir(dest, recursive=True)
    pafs.copy_files(local, dest, destination_filesystem=storage.storage_filesystem)


def train_loop_per_worker(loop_cfg: dict) -> None:
    cfg = PretrainConfig.model_validate(loop_cfg["cfg"])
    if not cfg.scaling.use_gpu:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed
    import ray.train
    import torch
    import torch.distributed as dist
    from ray.train import Checkpoint

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device() if cfg.scaling.use_gpu else torch.device("cpu")
    if cfg.scaling.use_gpu:
        torch.cuda.set_device(device)
    if not cfg.scaling.use_gpu:
        torch.set_num_threads(max(1, int(cfg.scaling.cpus_per_worker)))

    # model: the same init on every rank, then per-rank randomness (masks, views)
    torch.manual_seed(cfg.seed)
    first_stage = cfg.stages[0]
    ds_config = build_deepspeed_config(
        cfg.deepspeed,
        cfg.optim,
        micro_batch_size=micro_batch(first_stage.batch_size, world, cfg.deepspeed.grad_accum),
        world_size=world,
        use_gpu=cfg.scaling.use_gpu,
    )
    if cfg.deepspeed.zero_init:
        model = build_partitioned(lambda: build_model(cfg), ds_config)
    else:
        model = build_model(cfg)
    if cfg.deepspeed.activation_checkpointing:
        target = model.student if cfg.model.family == "skysense" else model
        if hasattr(target, "set_grad_checkpointing"):
            target.set_grad_checkpointing(True)
    engine, optimizer, _, _ = deepspeed.initialize(
        model=model, model_parameters=param_groups(model, cfg.optim.weight_decay), config=ds_config
    )
    torch.manual_seed(cfg.seed * 1000 + rank + 1)

    # resume
    step, history, starts = 0, [], []
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            engine.load_checkpoint(d, tag=DS_TAG, load_lr_scheduler_states=False)
            state = read_state(d)
        step, history, starts = state["step"], state["history"], state.get("starts", [])
    starts.append(step)
    if rank == 0:
        print(f"[pretrain] worker group start at step {step} (starts so far: {starts})", flush=True)

    writer = None
    tb_dir = tempfile.mkdtemp(prefix="tb-")
    if rank == 0 and cfg.log.tensorboard:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(tb_dir)

    bf16 = use_bf16(cfg.deepspeed, cfg.scaling.use_gpu)
    shard = ray.train.get_dataset_shard("train")
    peak = peak_flops(torch.cuda.get_device_name(device) if cfg.scaling.use_gpu else None)
    total = cfg.total_steps
    epoch = step  # distinct shuffle seeds for every (re)start and epoch
    it, it_stage, flops_per_sample = None, -1, None
    win_t0, win_wait, win_samples = time.perf_counter(), 0.0, 0
    last_batch = None

    def save_checkpoint(metrics: dict) -> None:
        tmp = tempfile.mkdtemp(prefix="ckpt-")
        engine.save_checkpoint(tmp, tag=DS_TAG, client_state={"step": step})
        if rank == 0:
            write_state(tmp, {"step": step, "history": history, "starts": starts, "config": loop_cfg["cfg"]})
            Path(tmp, CONFIG_FILE).write_text(loop_cfg["config_json"])
        ray.train.report(metrics, checkpoint=Checkpoint.from_directory(tmp))
        shutil.rmtree(tmp, ignore_errors=True)
        if writer is not None:
            writer.flush()
            _upload_dir(tb_dir, "tensorboard")

    metrics: dict[str, Any] = {"step": step}
    while step < total:
        si, _ = stage_at(step, cfg.stages)
        stage = cfg.stages[si]
        mb = micro_batch(stage.batch_size, world, cfg.deepspeed.grad_accum)
        if si != it_stage:
            it, it_stage, flops_per_sample = None, si, None
        lr = lr_at(
            step,
            base_lr=cfg.optim.base_lr,
            global_batch=stage.batch_size,
            warmup_steps=cfg.optim.warmup_steps,
            total_steps=total,
            min_lr_ratio=cfg.optim.min_lr_ratio,
        )
        for g in optimizer.param_groups:
            g["lr"] = lr

        loss_sum, comps = 0.0, {}
        for _ in range(cfg.deepspeed.grad_accum):
            t_wait = time.perf_counter()
            batch = None
            while batch is None:
                if it is None:
                    epoch += 1
                    it = iter(
                        shard.iter_torch_batches(
                            batch_size=mb,
                            drop_last=True,
                            prefetch_batches=cfg.data.prefetch_batches,
                            local_shuffle_buffer_size=cfg.data.shuffle_buffer or None,
                            local_shuffle_seed=cfg.seed * 100003 + epoch * 101 + rank,
                            collate_fn=make_augment_fn(
                                stage.img_size,
                                flip=cfg.augment.flip,
                                rot90=cfg.augment.rot90,
                                seed=cfg.seed * 7919 + epoch * 31 + rank,
                            ),
                        )
                    )
                batch = next(it, None)
                if batch is None:
                    it = None
            win_wait += time.perf_counter() - t_wait
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            if bf16:  # image tensors in the engine's dtype; lon/lat, days of year stay as they are
                batch.update({k: batch[k].to(torch.bfloat16) for k in ("x", "s2", "s1") if k in batch})
            last_batch = batch
            if flops_per_sample is None and rank == 0 and cfg.scaling.use_gpu:
                flops_per_sample = (
                    count_flops(lambda b=batch: forward_loss(engine.module, cfg, b)) * 3 / mb
                )
            loss, c = forward_loss(engine, cfg, batch)
            if cfg.debug.nan_loss_at_step == step + 1:
                loss = loss * float("nan")
            engine.backward(loss)
            engine.step()
            loss_sum += float(loss.detach())
            for k, v in c.items():
                comps[k] = comps.get(k, 0.0) + v / cfg.deepspeed.grad_accum
            win_samples += mb * world
        if cfg.model.family == "skysense":
            ema_update(engine.module, cosine_momentum(step, total, cfg.model.teacher_momentum,
                                                      cfg.model.teacher_momentum_final))
        step += 1

        # one all-reduce: mean loss across ranks + a non-finite flag
        red = torch.tensor([loss_sum / cfg.deepspeed.grad_accum, 0.0 if math.isfinite(loss_sum) else 1.0])
        dist.all_reduce(red)
        # A deterministic NaN would recur after every restart, so it is not a worker failure: every
        # rank leaves the loop, rank 0's report carries the flag, and the driver raises.
        if red[1] > 0:
            if rank == 0:  # Ray Train's result keeps only checkpointed metrics: a file in the run
                flag = tempfile.mkdtemp(prefix="flag-")
                Path(flag, NON_FINITE_FILE).write_text(json.dumps({
                    "step": step, "starts": starts,
                    "message": f"non-finite loss at step {step} (stage {si}, lr {lr:.3e})"}))
                _upload_dir(flag, ".")
                shutil.rmtree(flag, ignore_errors=True)
            ray.train.report({"step": step})
            if writer is not None:
                writer.close()
            return
        mean_loss = float(red[0]) / world
        history.append({"step": step, "loss": mean_loss, "lr": lr, "stage": si, **comps})

        kill = cfg.debug.kill_worker_at_step == step and rank == world - 1
        if kill and not os.path.exists(cfg.debug.kill_marker):
            Path(cfg.debug.kill_marker).write_text(f"killed rank {rank} at step {step}\n")
            # Ray Train collects reports when it polls the workers (every health-check interval); a
            # worker killed before that poll takes its last report, and so that checkpoint, with it.
            # The drill waits for the poll so it tests resuming from the last checkpoint reported.
            time.sleep(3 * float(os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "2")))
            os.kill(os.getpid(), signal.SIGKILL)

        do_log = step % cfg.log.every_steps == 0 or step == total
        do_ckpt = step % cfg.checkpoint.every_steps == 0 or step == total
        if do_log or do_ckpt:
            dt = time.perf_counter() - win_t0
            sps = win_samples / max(dt, 1e-9)
            metrics = {
                "step": step,
                "stage": si,
                "epoch": epoch,
                "loss": mean_loss,
                "lr": lr,
                "samples_per_s": sps,
                "data_wait_frac": min(1.0, win_wait / max(dt, 1e-9)),
                "peak_mem_gb": peak_memory_gb(device),
                "mfu": (flops_per_sample * sps / (world * peak)) if (flops_per_sample and peak) else None,
                **comps,
            }
            win_t0, win_wait, win_samples = time.perf_counter(), 0.0, 0
            history[-1].update(samples_per_s=sps, data_wait_frac=metrics["data_wait_frac"])
            if rank == 0:
                print(f"[pretrain] {format_step_line(metrics)}", flush=True)
                if writer is not None:
                    for k, v in metrics.items():
                        if isinstance(v, int | float) and k != "step":
                            writer.add_scalar(f"train/{k}", v, step)
            if do_ckpt:
                save_checkpoint(metrics)
            else:
                ray.train.report(metrics)

    # pictures (every rank runs the forward: under ZeRO-3 the parameters are gathered collectively)
    if cfg.log.plots and last_batch is not None:
        recon = None
        if cfg.model.family == "spectralgpt":
            engine.eval()
            with torch.no_grad():
                x = last_batch["x"][:4]
                _, pred, mask = engine(x, cfg.model.mask_ratio)
                recon = (x.float().cpu(), pred.float().cpu(), mask.float().cpu(), engine.module)
            engine.train()
        if rank == 0:
            plot_dir = tempfile.mkdtemp(prefix="plots-")
            write_plots(plot_dir, history, recon, cfg)
            _upload_dir(plot_dir, "plots")
            shutil.rmtree(plot_dir, ignore_errors=True)
    if writer is not None:
        writer.close()
        _upload_dir(tb_dir, "tensorboard")
    shutil.rmtree(tb_dir, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# pictures
# ---------------------------------------------------------------------------------------------


def false_colour(x, bands=(7, 3, 2), stretch=None):
    """(C, H, W) normalised -> (H, W, 3) in [0, 1] from the given band indices.

    ``stretch`` = (lo, hi) maps values to [0, 1]; None: the image's own 2-98 % percentiles.
    """
    import numpy as np

    img = np.stack([x[b] for b in bands], -1).astype("float32")
    lo, hi = stretch if stretch is not None else (np.percentile(img, 2), np.percentile(img, 98))
    return np.clip((img - lo) / max(hi - lo, 1e-6), 0, 1)


def write_plots(out_dir: str, history: list[dict], recon, cfg: PretrainConfig) -> list[str]:
    """``loss.png`` (loss and LR per step) and, for SpectralGPT, ``reconstruction.png``
    (input / masked input / reconstruction with the visible tokens pasted back, in false colour
    NIR-red-green; masking is per spectral group, so a masked cell can keep some bands)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    if history:
        fig, ax = plt.subplots(figsize=(7, 4))
        steps = [h["step"] for h in history]
        ax.plot(steps, [h["loss"] for h in history], label="loss")
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax2 = ax.twinx()
        ax2.plot(steps, [h["lr"] for h in history], color="tab:orange", alpha=0.6, label="lr")
        ax2.set_ylabel("lr")
        ax.set_title(f"{cfg.model.name} pretraining")
        fig.tight_layout()
        path = os.path.join(out_dir, "loss.png")
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    if recon is not None:
        x, pred, mask, model = recon
        import numpy as np
        import torch

        hw = (x.shape[-2] // model.config.patch_size, x.shape[-1] // model.config.patch_size)
        tokens = model.patchify(x)  # (B, L, g*p*p)
        masked = model.unpatchify(tokens * (1 - mask)[..., None], hw)  # (B, C, H, W)
        # MAE-style: visible tokens as they were, masked ones from the prediction
        rec = model.unpatchify(tokens * (1 - mask)[..., None] + pred * mask[..., None], hw)
        n = x.shape[0]
        fig, axes = plt.subplots(n, 3, figsize=(7, 2.4 * n), squeeze=False)
        for i in range(n):
            # one stretch per row, the input's, so the three panels share a colour scale
            bands = torch.as_tensor(x[i]).numpy()[[7, 3, 2]]
            stretch = (float(np.percentile(bands, 2)), float(np.percentile(bands, 98)))
            for j, (img, title) in enumerate(((x, "input"), (masked, "masked"), (rec, "reconstruction"))):
                axes[i, j].imshow(false_colour(torch.as_tensor(img[i]).numpy(), stretch=stretch))
                axes[i, j].set_axis_off()
                if i == 0:
                    axes[i, j].set_title(title)
        fig.tight_layout()
        path = os.path.join(out_dir, "reconstruction.png")
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


# ---------------------------------------------------------------------------------------------
# driver
# ---------------------------------------------------------------------------------------------


def default_name(cfg: PretrainConfig) -> str:
    """``pretrain-<model>-<8 hex>``: the digest of the resolved config without its name, so
    relaunching the same command (same config, data and storage) finds the same run and resumes."""
    body = json.dumps(cfg.model_dump(mode="json", exclude={"name"}), sort_keys=True)
    return f"pretrain-{cfg.model.name}-{hashlib.sha256(body.encode()).hexdigest()[:8]}"


def run(cfg: PretrainConfig) -> dict[str, Any]:
    """Train; returns ``{"name", "run_dir", "checkpoint", "metrics", "history", "starts", "export"}``."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    if not cfg.data.path:
        raise ValueError("data.path is not set (pass --data)")
    if not cfg.storage:
        raise ValueError("storage is not set (pass --storage)")
    manifest = read_manifest(cfg.data.path, cfg.data.storage)
    for i, s in enumerate(cfg.stages):
        if s.img_size > manifest["tile_px"]:
            raise ValueError(
                f"stages.{i}.img_size {s.img_size} exceeds the shards' tile_px {manifest['tile_px']}"
            )
    name = cfg.name or default_name(cfg)
    cfg = cfg.model_copy(update={"name": name})
    init_ray()

    ds = build_dataset(cfg, manifest)
    fs, storage_path = pyarrow_fs(cfg.storage, cfg.data.storage)
    resources = {"CPU": cfg.scaling.cpus_per_worker}
    if cfg.scaling.use_gpu:
        resources["GPU"] = 1
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"cfg": cfg.model_dump(mode="json"), "config_json": config_json(cfg)},
        scaling_config=ScalingConfig(
            num_workers=cfg.scaling.num_workers, use_gpu=cfg.scaling.use_gpu, resources_per_worker=resources
        ),
        torch_config=TorchConfig(backend="nccl" if cfg.scaling.use_gpu else "gloo"),
        run_config=RunConfig(
            name=name,
            storage_path=storage_path,
            storage_filesystem=fs,
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.checkpoint.keep),
            failure_config=FailureConfig(max_failures=cfg.max_failures),
        ),
        datasets={"train": ds},
    )
    from pipeline.storage import filesystem

    flag_fs, flag = filesystem(_join(cfg.storage, name, NON_FINITE_FILE), cfg.data.storage)
    if flag_fs.exists(flag):  # from an earlier launch of this run
        flag_fs.rm(flag)
    result = trainer.fit()
    if result.error:
        raise result.error
    if flag_fs.exists(flag):
        f = json.loads(flag_fs.cat_file(flag))
        raise NonFiniteLossError(f["message"], step=f["step"], starts=f["starts"])
    metrics = result.metrics or {}
    out: dict[str, Any] = {"name": name, "run_dir": _join(cfg.storage, name), "metrics": metrics}
    ckpt = result.checkpoint
    out["checkpoint"] = ckpt.path if ckpt else None
    if ckpt is not None:
        with ckpt.as_directory() as d:
            state = read_state(d)
            out["history"], out["starts"] = state["history"], state["starts"]
            if cfg.export:
                from jobs.export import export_checkpoint

                out["export"] = export_checkpoint(d, _join(cfg.storage, name, "export"), cfg.data.storage)
    log.info("run %s finished at step %s: %s", name, metrics.get("step"), out.get("export"))
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    setup_logging()
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    add_config_args(p, default_config="configs/pretrain/spectralgpt_tiny.yaml")
    p.add_argument("--data", help="shards root (local path or s3://)")
    p.add_argument("--storage", help="runs root (local path or s3://)")
    p.add_argument("--name", help="run name (default: pretrain-<model>-<digest of the config>); "
                                  "relaunching with the same name resumes")
    a = p.parse_args(argv)
    extra = [f"data.path={a.data}"] if a.data else []
    extra += [f"storage={a.storage}"] if a.storage else []
    extra += [f"name={a.name}"] if a.name else []
    cfg = load_config(PretrainConfig, a.config, a.overrides + extra)
    log_config(cfg, "pretrain config")
    return run(cfg)


if __name__ == "__main__":
    try:
        main()
    except ConfigError as e:
        raise SystemExit(f"error: {e}") from None
