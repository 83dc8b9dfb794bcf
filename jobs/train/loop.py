"""``TrainLoop``: one Ray Train worker's training loop, and ``fit``, the driver side that runs it.

Shaped like Ray's benchmark ``TrainLoopRunner`` (``release/train_tests/benchmark``)::

    run()          setup() -> restore() -> train_epoch() until the last step -> finish()
    train_epoch()  one pass over this worker's dataset shard at the current stage (ends early at a
                   stage switch or the last step); every ``accum.grad_accum`` micro batches -> train_step()
    train_step()   LR from the schedule, forward/backward/step per micro batch, ``after_step``, one
                   all-reduce (mean loss + non-finite flag), history, then log() and save() or a report
    log()          the window's metrics, the rank-0 step line and TensorBoard scalars
    save()/restore()  the DeepSpeed shard of every rank + rank 0's state (step, history, starts,
                   config) reported together through ``ray.train.report``

A job supplies its parts by subclassing: ``build_module()`` (the ``nn.Module`` the engine trains),
``forward(module, batch) -> {"loss", "loss_<part>", ...}``, ``after_step(step)``,
``make_collate(stage, epoch)`` (numpy batch -> torch batch), ``pictures()``; everything else
(DeepSpeed, schedules, resume, logging, fault handling) is shared.

Faults: a dead worker raises in Ray Train, which restarts the group from the latest checkpoint
(``max_failures``). An elastic group (``scaling.num_workers: [min, max]``) restarts with the workers the
cluster still holds: the micro batch and gradient accumulation come from the *current* world
(``schedules.accumulation``), so every optimizer step still sees ``stages.batch_size`` samples, and a
ZeRO 1-3 checkpoint saved by another world is resharded through DeepSpeed's universal checkpoint
(``ds_to_universal``) before it loads (DeepSpeed refuses partitioned optimizer states of another world).
A non-finite loss is deterministic and would recur after every restart, so it is not raised in the
workers: all ranks leave the loop, rank 0 writes ``non_finite.json`` (step, message) into the run
directory, and ``fit`` raises ``NonFiniteLossError`` from it in the driver.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from jobs.train.configs import StageConfig, TrainConfig
from jobs.train.data import assemble_s2, make_augment_fn, pyarrow_fs
from jobs.train.engine import (
    CONFIG_FILE,
    DS_TAG,
    STATE_FILE,
    build_deepspeed_config,
    build_partitioned,
    param_groups,
    read_state,
    set_host_mmap_threshold,
    use_bf16,
    write_state,
)
from jobs.train.family import Family, family_of
from jobs.train.report import TensorBoard, count_flops, format_step_line, peak_flops, peak_memory_gb
from jobs.train.schedules import Accumulation, accumulation, lr_at, stage_at
from pipeline.storage import join

Batch = dict[str, torch.Tensor]
#: written into the run directory by rank 0 when the loss is non-finite; ``fit`` raises from it
NON_FINITE_FILE = "non_finite.json"
#: DeepSpeed tag of a checkpoint resharded for another world (``ds_to_universal`` output)
UNIVERSAL_TAG = f"{DS_TAG}_universal"


class NonFiniteLossError(RuntimeError):
    """The loss became NaN/inf; the message names the step. ``starts``: the steps the worker
    group started at in this run's lineage (one entry: it was not restarted)."""

    def __init__(self, message: str, step: int | None = None, starts: list[int] | None = None):
        super().__init__(message)
        self.step, self.starts = step, list(starts or [])


def upload_dir(local: str, dest_rel: str) -> None:
    """Copy a local directory into the run's storage (``<storage>/<name>/<dest_rel>``)."""
    import pyarrow.fs as pafs
    import ray.train

    storage = ray.train.get_context().get_storage()
    dest = join(storage.experiment_fs_path, dest_rel)
    storage.storage_filesystem.create_dir(dest, recursive=True)
    pafs.copy_files(local, dest, destination_filesystem=storage.storage_filesystem)


class TrainLoop:
    """One worker's loop over ``cfg`` (see the module docstring); ``entry`` is Ray Train's
    ``train_loop_per_worker``."""

    #: the job's config class (``entry`` validates the dict Ray Train hands over into it)
    config_cls: ClassVar[type[TrainConfig]] = TrainConfig
    #: prefix of the rank-0 console lines
    tag: ClassVar[str] = "train"

    def __init__(self, cfg: TrainConfig, config_json: str) -> None:
        self.cfg, self.config_json = cfg, config_json
        self.family: Family = family_of(cfg.model.name)
        self.total = cfg.total_steps
        self.step, self.history, self.starts = 0, [], []
        self.stopped = False
        self.pending: list[Batch] = []
        self.last_batch: Batch | None = None

    @classmethod
    def entry(cls, loop_config: Mapping[str, Any]) -> None:
        cls(cls.config_cls.model_validate(loop_config["cfg"]), loop_config["config_json"]).run()

    # ------------------------------------------------------------------ the parts a job supplies

    def build_module(self) -> nn.Module:
        """The module the engine trains, a ``models.base.Pretrainer`` (same init on every rank:
        the global seed is set)."""
        return self.family.build(self.cfg.model)

    def forward(self, module: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        """``{"loss": (), "loss_<part>": (), ...}`` of one micro batch."""
        return module(batch)

    def after_step(self, step: int) -> None:
        """After optimizer step ``step`` (0-based) on every rank (SkySense: its EMA teacher)."""
        self.engine.module.after_step(step, self.total)

    def make_collate(self, stage: StageConfig, epoch: int) -> Callable[[Mapping[str, Any]], Batch]:
        """Numpy batch -> torch batch for this stage and epoch (seeded per rank and epoch)."""
        a = self.cfg.augment
        return make_augment_fn(stage.img_size, flip=a.flip, rot90=a.rot90,
                               seed=self.cfg.seed * 7919 + epoch * 31 + self.rank)

    def pictures(self, out_dir: str) -> None:
        """Write the job's end-of-run pictures into ``out_dir`` (called on every rank: a forward
        under ZeRO-3 gathers parameters collectively; only rank 0's directory is uploaded)."""

    def param_groups(self, module: nn.Module) -> list[dict[str, Any]]:
        """The optimizer's parameter groups; a group's optional ``lr_scale`` multiplies the
        scheduled LR (layer-wise LR decay)."""
        return param_groups(module, self.cfg.optim.weight_decay)

    def report_due(self, step: int) -> tuple[bool, bool]:
        """``(log, checkpoint)``: whether step ``step`` (1-based) reports, and with a checkpoint."""
        c = self.cfg
        last = step == self.total
        return step % c.log.every_steps == 0 or last, step % c.checkpoint.every_steps == 0 or last

    def report_metrics(self, step: int) -> dict[str, Any]:
        """Extra metrics of the report at ``step`` (called on every rank before it, so it may run
        collectives, e.g. an evaluation)."""
        return {}

    def state(self) -> dict[str, Any]:
        """Extra rank-0 state stored in every checkpoint (``restore_state`` reads it back)."""
        return {}

    def restore_state(self, state: Mapping[str, Any], ckpt_dir: str) -> None:
        """Read back what ``state`` and ``checkpoint_files`` stored (every rank)."""

    def checkpoint_files(self, ckpt_dir: str) -> None:
        """Write extra files into a checkpoint directory (rank 0)."""

    # ------------------------------------------------------------------ run

    def run(self) -> None:
        self.setup()
        self.restore()
        while self.step < self.total and not self.stopped:
            self.train_epoch()
        self.finish()

    def setup(self) -> None:
        cfg = self.cfg
        if not cfg.scaling.use_gpu:
            os.environ.setdefault("DS_ACCELERATOR", "cpu")
        import deepspeed
        import ray.train

        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        self.accum: Accumulation = accumulation([s.batch_size for s in cfg.stages], self.world,
                                                cfg.scaling.max_workers, cfg.deepspeed.grad_accum)
        self.checkpoint = ray.train.get_checkpoint()
        self.saved_world = None
        if self.checkpoint is not None:  # its state file only: the engine is not built yet
            with self.checkpoint.filesystem.open_input_stream(join(self.checkpoint.path, STATE_FILE)) as f:
                self.saved_world = json.loads(f.read()).get("world")
        # ZeRO 1-3 partition the optimizer states by world: another world's need resharding
        self.reshard = (cfg.deepspeed.zero_stage >= 1 and self.saved_world is not None
                        and self.saved_world != self.world)
        gpu = cfg.scaling.use_gpu
        self.device = ray.train.torch.get_device() if gpu else torch.device("cpu")
        if gpu:
            torch.cuda.set_device(self.device)
        else:
            torch.set_num_threads(max(1, int(cfg.scaling.cpus_per_worker)))

        if cfg.deepspeed.host_mmap_threshold is not None:
            set_host_mmap_threshold(cfg.deepspeed.host_mmap_threshold)
        # the same init on every rank, then per-rank randomness (masks, views)
        torch.manual_seed(cfg.seed)
        self.ds_config = build_deepspeed_config(
            cfg.deepspeed.model_copy(update={"grad_accum": self.accum.grad_accum}), cfg.optim,
            world_size=self.world, use_gpu=gpu, micro_batch_size=self.accum.micro_batches[0],
        )
        if self.reshard:
            self.ds_config["checkpoint"] = {"load_universal": True}
        if cfg.deepspeed.zero_init:
            module = build_partitioned(self.build_module, self.ds_config)
        else:
            module = self.build_module()
        module.set_grad_checkpointing(cfg.deepspeed.activation_checkpointing)
        self.engine, self.optimizer, _, _ = deepspeed.initialize(
            model=module, model_parameters=self.param_groups(module), config=self.ds_config
        )
        torch.manual_seed(cfg.seed * 1000 + self.rank + 1)

        self.bf16 = use_bf16(cfg.deepspeed, gpu)
        self.shard = ray.train.get_dataset_shard("train")
        self.peak = peak_flops(torch.cuda.get_device_name(self.device) if gpu else None)
        self.flops_per_sample: float | None = None
        self.flops_stage = -1
        self.tb_dir = tempfile.mkdtemp(prefix="tb-")
        self.tb = TensorBoard(self.tb_dir, enabled=self.rank == 0 and cfg.log.tensorboard)
        self._reset_window()

    def restore(self) -> None:
        ckpt = self.checkpoint
        if ckpt is not None:
            with ckpt.as_directory() as d:
                if self.reshard:
                    t0 = time.perf_counter()
                    tmp = reshard_checkpoint(d)
                    self.engine.load_checkpoint(tmp, tag=UNIVERSAL_TAG, load_lr_scheduler_states=False)
                    shutil.rmtree(tmp, ignore_errors=True)
                    if self.rank == 0:
                        print(f"[{self.tag}] resharded the world-{self.saved_world} checkpoint for "
                              f"{self.world} worker(s) in {time.perf_counter() - t0:.1f} s", flush=True)
                else:
                    self.engine.load_checkpoint(d, tag=DS_TAG, load_lr_scheduler_states=False)
                state = read_state(d)
                self.restore_state(state, d)
            self.step, self.history, self.starts = state["step"], state["history"], state.get("starts", [])
        self.starts.append(self.step)
        self.epoch = self.step  # distinct shuffle seeds for every (re)start and epoch
        if self.rank == 0:
            a = self.accum
            print(f"[{self.tag}] worker group start at step {self.step} (starts so far: {self.starts}) with "
                  f"{self.world} worker(s) x {a.grad_accum} micro batch(es) of {list(a.micro_batches)}",
                  flush=True)

    def train_epoch(self) -> None:
        cfg = self.cfg
        si, _ = stage_at(self.step, cfg.stages)
        stage = cfg.stages[si]
        self.epoch += 1
        t_wait = time.perf_counter()
        it = iter(self.shard.iter_torch_batches(
            batch_size=self.accum.micro_batches[si],
            drop_last=True,
            prefetch_batches=cfg.data.prefetch_batches,
            local_shuffle_buffer_size=cfg.data.shuffle_buffer or None,
            local_shuffle_seed=cfg.seed * 100003 + self.epoch * 101 + self.rank,
            collate_fn=self.make_collate(stage, self.epoch),
        ))
        while self.step < self.total and stage_at(self.step, cfg.stages)[0] == si and not self.stopped:
            batch = next(it, None)
            self.win_wait += time.perf_counter() - t_wait
            if batch is None:
                return
            self.pending.append(batch)
            if len(self.pending) == self.accum.grad_accum:
                micro, self.pending = self.pending, []
                self.train_step(micro, si)
            t_wait = time.perf_counter()

    def prepare_batch(self, batch: Batch) -> Batch:
        """To the device; v3 S2 groups into the cube there (``assemble_s2``); image tensors in the
        engine's dtype (lon/lat, days of year keep theirs)."""
        batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
        batch = assemble_s2(batch, self.family.s2_key, self.family.s2_bands)
        if self.bf16:
            batch.update({k: batch[k].to(torch.bfloat16) for k in self.family.image_keys if k in batch})
        return batch

    def train_step(self, micro: list[Batch], si: int) -> None:
        import ray.train
        import torch.distributed as dist

        cfg = self.cfg
        stage = cfg.stages[si]
        o = cfg.optim
        lr = lr_at(self.step, base_lr=o.base_lr, global_batch=stage.batch_size, warmup_steps=o.warmup_steps,
                   total_steps=self.total, min_lr_ratio=o.min_lr_ratio)
        for g in self.optimizer.param_groups:
            g["lr"] = lr * g.get("lr_scale", 1.0)
        loss_sum, parts, samples = 0.0, {}, 0
        for batch in micro:
            batch = self.last_batch = self.prepare_batch(batch)
            n = len(next(iter(batch.values())))
            if self.flops_stage != si and self.rank == 0 and cfg.scaling.use_gpu:
                flops = count_flops(lambda b=batch: self.forward(self.engine.module, b))
                self.flops_per_sample = flops * 3 / n
                self.flops_stage = si
            out = self.forward(self.engine, batch)
            loss = out["loss"]
            if cfg.debug.nan_loss_at_step == self.step + 1:
                loss = loss * float("nan")
            self.engine.backward(loss)
            self.engine.step()
            loss_sum += float(loss.detach())
            for k, v in out.items():
                if k.startswith("loss_"):
                    parts[k] = parts.get(k, 0.0) + float(v.detach()) / len(micro)
            self.win_samples += n * self.world
            samples += n * self.world
        self.after_step(self.step)
        self.step += 1
        step = self.step

        # one all-reduce: mean loss across ranks + a non-finite flag
        red = torch.tensor([loss_sum / len(micro), 0.0 if math.isfinite(loss_sum) else 1.0])
        dist.all_reduce(red)
        if red[1] > 0:
            if self.rank == 0:  # Ray Train's result keeps only checkpointed metrics: a file in the run
                flag = tempfile.mkdtemp(prefix="flag-")
                Path(flag, NON_FINITE_FILE).write_text(json.dumps({
                    "step": step, "starts": self.starts,
                    "message": f"non-finite loss at step {step} (stage {si}, lr {lr:.3e})"}))
                upload_dir(flag, ".")
                shutil.rmtree(flag, ignore_errors=True)
            ray.train.report({"step": step})
            self.stopped = True
            return
        mean_loss = float(red[0]) / self.world
        self.history.append({"step": step, "loss": mean_loss, "lr": lr, "stage": si, "world": self.world,
                             "samples": samples, **parts})
        self._maybe_kill(step)

        do_log, do_ckpt = self.report_due(step)
        if not (do_log or do_ckpt):
            return
        t_eval = time.perf_counter()
        extra = self.report_metrics(step)
        self.win_t0 += time.perf_counter() - t_eval  # evaluation time is not training throughput
        metrics = {**self.log(si, lr, mean_loss, parts, extra), **extra}
        if do_ckpt:
            self.save(metrics)
        else:
            ray.train.report(metrics)

    def log(self, si: int, lr: float, loss: float, parts: Mapping[str, float],
            extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The metrics of the window since the last log (throughput, data wait, memory, MFU, the
        loss parts); rank 0 prints the step line (with ``extra``'s scalars, e.g. validation
        metrics) and writes TensorBoard scalars."""
        dt = time.perf_counter() - self.win_t0
        sps = self.win_samples / max(dt, 1e-9)
        metrics = {
            "step": self.step, "stage": si, "epoch": self.epoch, "loss": loss, "lr": lr,
            "samples_per_s": sps,
            "data_wait_frac": min(1.0, self.win_wait / max(dt, 1e-9)),
            "peak_mem_gb": peak_memory_gb(self.device),
            "mfu": (self.flops_per_sample * sps / (self.world * self.peak))
            if (self.flops_per_sample and self.peak) else None,
            **parts,
        }
        self._reset_window()
        self.history[-1].update(samples_per_s=sps, data_wait_frac=metrics["data_wait_frac"])
        if self.rank == 0:
            print(f"[{self.tag}] {format_step_line({**metrics, **(extra or {})})}", flush=True)
            self.tb.scalars(metrics, self.step)
            if extra:
                self.tb.scalars(extra, self.step, prefix="eval")
        return metrics

    def save(self, metrics: dict[str, Any]) -> None:
        import ray.train
        from ray.train import Checkpoint

        tmp = tempfile.mkdtemp(prefix="ckpt-")
        self.engine.save_checkpoint(tmp, tag=DS_TAG, client_state={"step": self.step})
        if self.rank == 0:
            write_state(tmp, {"step": self.step, "history": self.history, "starts": self.starts,
                              "world": self.world,
                              "config": self.cfg.model_dump(mode="json"), **self.state()})
            self.checkpoint_files(tmp)
            Path(tmp, CONFIG_FILE).write_text(self.config_json)
        ray.train.report(metrics, checkpoint=Checkpoint.from_directory(tmp))
        shutil.rmtree(tmp, ignore_errors=True)
        if self.tb.writer is not None:
            self.tb.flush()
            upload_dir(self.tb_dir, "tensorboard")

    def finish(self) -> None:
        if self.cfg.log.plots and not self.stopped and self.last_batch is not None:
            plot_dir = tempfile.mkdtemp(prefix="plots-")
            self.pictures(plot_dir)
            if self.rank == 0:
                upload_dir(plot_dir, "plots")
            shutil.rmtree(plot_dir, ignore_errors=True)
        if self.tb.writer is not None:
            self.tb.close()
            upload_dir(self.tb_dir, "tensorboard")
        shutil.rmtree(self.tb_dir, ignore_errors=True)

    # ------------------------------------------------------------------ internals

    def _reset_window(self) -> None:
        self.win_t0, self.win_wait, self.win_samples = time.perf_counter(), 0.0, 0

    def _maybe_kill(self, step: int) -> None:
        d = self.cfg.debug
        if d.kill_worker_at_step != step or self.rank != self.world - 1 or os.path.exists(d.kill_marker):
            return
        Path(d.kill_marker).write_text(f"killed rank {self.rank} at step {step}\n")
        # Ray Train collects reports when it polls the workers (every health-check interval); a
        # worker killed before that poll takes its last report, and so that checkpoint, with it.
        # The drill waits for the poll so it tests resuming from the last checkpoint reported.
        time.sleep(3 * float(os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "2")))
        os.kill(os.getpid(), signal.SIGKILL)


def reshard_checkpoint(ckpt_dir: str) -> str:
    """A local directory holding ``ckpt_dir``'s DeepSpeed checkpoint (tag ``DS_TAG``) as a universal
    checkpoint (tag ``UNIVERSAL_TAG``), which DeepSpeed loads into any world size
    (``checkpoint.load_universal``). Every rank converts its own copy: ranks of a cluster share no
    local disk. ``inject_missing_state``: our engines carry no Megatron-style universal info."""
    import argparse
    import contextlib
    import io

    from deepspeed.checkpoint.ds_to_universal import main as ds_to_universal

    out = tempfile.mkdtemp(prefix="universal-")
    args = argparse.Namespace(input_folder=os.path.join(ckpt_dir, DS_TAG),
                              output_folder=os.path.join(out, UNIVERSAL_TAG), num_extract_workers=1,
                              num_merge_workers=1, keep_temp_folder=False, strict=True,
                              inject_missing_state=True)
    with contextlib.redirect_stdout(io.StringIO()):  # one line per parameter
        ds_to_universal(args)
    return out


# ---------------------------------------------------------------------------------------------
# driver
# ---------------------------------------------------------------------------------------------


def default_run_config(cfg: TrainConfig, checkpoint_config=None, callbacks=None):
    """The ``RunConfig`` of a run under ``<storage>/<name>`` (checkpoints: the last ``checkpoint.keep``
    unless ``checkpoint_config`` says otherwise)."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig

    fs, storage_path = pyarrow_fs(cfg.storage, cfg.data.storage)
    return RunConfig(
        name=cfg.name,
        storage_path=storage_path,
        storage_filesystem=fs,
        checkpoint_config=checkpoint_config or CheckpointConfig(num_to_keep=cfg.checkpoint.keep),
        failure_config=FailureConfig(max_failures=cfg.max_failures),
        callbacks=callbacks,
    )


def ingest_options(cfg: TrainConfig):
    """Ray Train's ingest ``ExecutionOptions`` for the workers' datasets, in order if
    ``data.preserve_order`` (the split between workers and the batches then follow the blocks' order);
    None: Ray's defaults."""
    if not cfg.data.preserve_order:
        return None
    from ray.train import DataConfig

    opts = DataConfig.default_ingest_options()
    opts.preserve_order = True
    return opts


def make_trainer(cfg: TrainConfig, loop_cls: type[TrainLoop], datasets: Mapping[str, Any], config_json: str,
                 run_config=None, dataset_config=None):
    """The ``TorchTrainer`` running ``loop_cls`` on ``cfg.scaling.num_workers`` workers (``run_config``:
    default ``default_run_config(cfg)``; ``dataset_config``: how datasets reach the workers, default
    Ray's)."""
    from ray.train import ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    sc = cfg.scaling
    resources = {"CPU": sc.cpus_per_worker}
    if sc.use_gpu:
        resources["GPU"] = 1
    elastic = {"elastic_resize_monitor_interval_s": sc.resize_interval_s} if sc.elastic else {}
    if dataset_config is None and (opts := ingest_options(cfg)) is not None:
        from ray.train import DataConfig

        dataset_config = DataConfig(execution_options=opts)
    extra = {} if dataset_config is None else {"dataset_config": dataset_config}
    return TorchTrainer(
        loop_cls.entry,
        train_loop_config={"cfg": cfg.model_dump(mode="json"), "config_json": config_json},
        scaling_config=ScalingConfig(num_workers=sc.num_workers, use_gpu=sc.use_gpu,
                                     resources_per_worker=resources, **elastic),
        torch_config=TorchConfig(backend="nccl" if cfg.scaling.use_gpu else "gloo"),
        run_config=run_config or default_run_config(cfg),
        datasets=dict(datasets),
        **extra,
    )


def fit(cfg: TrainConfig, loop_cls: type[TrainLoop], datasets: Mapping[str, Any], config_json: str,
        trainer=None):
    """Run ``loop_cls`` on ``cfg.scaling.num_workers`` Ray Train workers under ``<storage>/<name>``
    (``trainer``: one ``make_trainer`` built with other settings); the ``ray.train.Result``.
    ``NonFiniteLossError`` when a worker reported a non-finite loss."""
    trainer = trainer or make_trainer(cfg, loop_cls, datasets, config_json)
    from pipeline.storage import filesystem

    flag_fs, flag = filesystem(join(cfg.storage, cfg.name, NON_FINITE_FILE), cfg.data.storage)
    if flag_fs.exists(flag):  # from an earlier launch of this run
        flag_fs.rm(flag)
    result = trainer.fit()
    if result.error:
        raise result.error
    if flag_fs.exists(flag):
        f = json.loads(flag_fs.cat_file(flag))
        raise NonFiniteLossError(f["message"], step=f["step"], starts=f["starts"])
    return result
