"""Fine-tune or linear-probe an encoder (SpectralGPT or SkySense) on a converted benchmark with Ray Train.

    python -m jobs.finetune --config configs/finetune/spectralgpt_tiny.yaml --data out/eurosat \
        --encoder out/runs/RUN/export/spectralgpt_tiny.safetensors --storage out/runs --name eurosat-probe \
        [--set mode=finetune model.name=spectralgpt_base ...]

``--encoder``: ``random`` (the baseline: the preset's own init), one of our safetensors exports
(``jobs.export``) or an official SpectralGPT checkpoint (``SpectralGPT.pth`` / ``SpectralGPT+.pth``);
the weights go through the one checkpoint filter (``models.checkpoint``) and the only keys they may
lack are the task head's. ``mode``: ``linear_probe`` (the encoder frozen: no gradients, features under
``no_grad``, eval mode) or ``finetune`` (everything trains; layer-wise LR decay ``layer_decay`` and
stochastic depth ``drop_path``). The head follows the benchmark's task (``models.heads``):
classification -> ``LinearProbe``, multilabel -> ``MultiLabelHead``, segmentation -> ``SegmentationHead``,
change -> ``ChangeHead`` over the pair's two dates.

Training reads the ``train`` split (augmented crops of ``stages[*].img_size``); every
``eval.every_steps`` steps and at the end the ``val`` split is scored on whole tiles (dataset-level
torchmetrics, synced over the ranks: ``jobs.train.metrics``) and reported with ``step``, ``val_score``
(the task's primary metric) and ``val_<metric>``; the weights with the best ``val_score`` are kept
(in memory and in every checkpoint), the last report adds ``test_<metric>`` of the ``test`` split
scored with them. Outputs under ``<storage>/<name>/``: ``metrics.json`` (``benchmark``, ``task``,
``encoder``, ``mode``, ``best_step``, ``val``, ``test``, ``config``), checkpoints (the best by
``val_score`` and the latest), ``predictions/test_rank<r>.npz``, ``plots/curves.png`` (loss and
validation curves), TensorBoard. ``jobs.tune`` builds the same trainer from ``prepare`` and
``make_trainer`` with its own ``RunConfig``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, model_validator
from ray.train import DataConfig

from jobs import cli
from jobs.train.configs import StageConfig, Strict, TrainConfig
from jobs.train.data import (
    build_dataset,
    make_eval_collate_fn,
    make_finetune_preprocess_fn,
    make_spectralgpt_pair_fn,
    read_manifest,
)
from jobs.train.loop import TrainLoop, fit, ingest_options, upload_dir
from jobs.train.loop import default_run_config as loop_run_config
from jobs.train.loop import make_trainer as make_loop_trainer
from jobs.train.metrics import METRICS, PRIMARY, TaskMetrics, predictions, prefixed
from jobs.train.report import write_curves
from jobs.train.task import TaskModel, build_task_model, layer_decay_groups, load_encoder
from pipeline.shards import IGNORE_INDEX, SPLITS, TASK_LABELS
from pipeline.storage import absolute, join

__all__ = ["EvalSection", "FinetuneConfig", "FinetuneLoop", "HeadSection", "default_name",
           "default_run_config", "main", "make_trainer", "prepare", "run"]

log = logging.getLogger("skyray.finetune")

METRICS_FILE = "metrics.json"
BEST_FILE = "best.safetensors"
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt")


class EvalSection(Strict):
    #: validate (and report) every this many steps and at the last step
    every_steps: int = Field(default=50, ge=1)
    #: samples per evaluation batch on each worker
    batch_size: int = Field(default=32, ge=1)
    #: write each rank's test predictions to ``predictions/test_rank<r>.npz`` (sample_id, pred, label)
    save_predictions: bool = True


class HeadSection(Strict):
    #: linear probe: a BatchNorm without affine parameters before the linear layer (the MAE protocol)
    probe_norm: bool = True
    #: width of the segmentation / change decoder
    channels: int = Field(default=128, ge=8)


class FinetuneConfig(TrainConfig):
    """``TrainConfig`` + the encoder, the mode and the evaluation; ``benchmark``, ``task`` and ``classes``
    are the shards' (``prepare`` fills them in; a ``task`` set here must be the shards' task)."""

    #: ``random``, a ``.safetensors`` export of ours or an official SpectralGPT ``.pth`` (local or ``s3://``)
    encoder: str = "random"
    mode: Literal["linear_probe", "finetune"] = "linear_probe"
    #: finetune: LR of layer i = LR × layer_decay ** (top − i) (the head is the top layer)
    layer_decay: float = Field(default=0.75, gt=0.0, le=1.0)
    #: finetune: stochastic depth rate (linearly rising over each block stack)
    drop_path: float = Field(default=0.0, ge=0.0, lt=1.0)
    eval: EvalSection = Field(default_factory=EvalSection)
    head: HeadSection = Field(default_factory=HeadSection)
    task: Literal["classification", "multilabel", "segmentation", "change"] | None = None
    benchmark: str | None = None
    classes: tuple[str, ...] | None = None

    @model_validator(mode="after")
    def _check_finetune(self) -> FinetuneConfig:
        if self.data.s2_slot == "all":
            raise ValueError("data.s2_slot 'all' makes several samples of one labelled row; use least_cloudy "
                             "or random")
        if self.checkpoint.every_steps % self.eval.every_steps:
            raise ValueError(f"checkpoint.every_steps {self.checkpoint.every_steps} must be a multiple of "
                             f"eval.every_steps {self.eval.every_steps} (a checkpoint carries val_score)")
        if self.deepspeed.zero_stage == 3:
            raise ValueError("deepspeed.zero_stage 3 is not supported by fine-tuning (the best-by-val "
                             "weights "
                             "are kept whole on every rank); use 0, 1 or 2")
        if self.encoder != "random" and not self.encoder.endswith(WEIGHT_SUFFIXES):
            raise ValueError(f"encoder {self.encoder!r} must be 'random' or a weights file ending in "
                             f"{', '.join(WEIGHT_SUFFIXES)}")
        return self

    @property
    def frozen(self) -> bool:
        return self.mode == "linear_probe"


# ---------------------------------------------------------------------------------------------
# the worker loop
# ---------------------------------------------------------------------------------------------


class FinetuneLoop(TrainLoop):
    """``TrainLoop`` + evaluation: reports at every ``eval.every_steps`` carry the validation metrics,
    the best weights by ``val_score`` are kept, the last report adds the test metrics of those."""

    config_cls = FinetuneConfig
    tag = "finetune"

    def build_module(self) -> TaskModel:
        cfg = self.cfg
        model = build_task_model(
            cfg.model.name, cfg.model.overrides, task=cfg.task, num_classes=len(cfg.classes),
            frozen=cfg.frozen,
            drop_path=0.0 if cfg.frozen else cfg.drop_path, probe_norm=cfg.head.probe_norm,
            channels=cfg.head.channels)
        if cfg.encoder != "random":
            with tempfile.TemporaryDirectory() as tmp:
                load_encoder(model, local_weights(cfg, tmp))
        return model

    def param_groups(self, module: TaskModel) -> list[dict[str, Any]]:
        return layer_decay_groups(module, self.cfg.optim.weight_decay,
                                  1.0 if self.cfg.frozen else self.cfg.layer_decay)

    def after_step(self, step: int) -> None:
        """No EMA teacher or schedule inside the task model."""

    def setup(self) -> None:
        super().setup()
        import ray.train

        cfg = self.cfg
        self.primary = PRIMARY[cfg.task]
        self.metrics = TaskMetrics(cfg.task, len(cfg.classes), self.device)
        self.eval_shards = {s: ray.train.get_dataset_shard(s) for s in ("val", "test")}
        self.collate_eval = make_eval_collate_fn(self.engine.module.encoder.config.patch_size, IGNORE_INDEX)
        self.evals: list[dict[str, Any]] = []
        self.best: dict[str, Any] = {"step": None, "val_score": -math.inf, "val": {}}
        self.best_state: dict[str, torch.Tensor] | None = None

    # ------------------------------------------------------------------ reports

    def report_due(self, step: int) -> tuple[bool, bool]:
        last = step == self.total
        due = step % self.cfg.eval.every_steps == 0 or last
        return due, due and (step % self.cfg.checkpoint.every_steps == 0 or last)

    def report_metrics(self, step: int) -> dict[str, Any]:
        val = self.evaluate("val")
        rec = {"step": step, "val_score": val[self.primary], **prefixed(val, "val")}
        self.evals.append(rec)
        if val[self.primary] > self.best["val_score"]:  # NaN never wins
            self.best = {"step": step, "val_score": val[self.primary], "val": val}
            self.best_state = _snapshot(self.engine.module)
        out = {**rec, "best_step": self.best["step"]}
        if step == self.total:
            out.update(self.test_with_best())
        return out

    def test_with_best(self) -> dict[str, Any]:
        """The test metrics of the best-by-val weights (the current ones are put back afterwards)."""
        module = self.engine.module
        current = _snapshot(module)
        if self.best_state is not None:
            module.load_state_dict(self.best_state)
        test = self.evaluate("test", keep=self.cfg.eval.save_predictions)
        module.load_state_dict(current)
        return {**prefixed(test, "test"), **prefixed(self.best["val"], "best_val")}

    def evaluate(self, split: str, keep: bool = False) -> dict[str, float]:
        """The task's metrics over this split (every rank scores its rows, ``compute`` syncs them); with
        ``keep`` each rank writes its predictions to ``predictions/<split>_rank<r>.npz``."""
        cfg, module = self.cfg, self.engine.module
        was_training = module.training
        module.eval()
        self.metrics.reset()
        kept: dict[str, list[np.ndarray]] = {"sample_id": [], "pred": [], "label": []}
        with torch.no_grad():
            for raw in self.eval_shards[split].iter_batches(
                    batch_size=cfg.eval.batch_size, batch_format="numpy",
                    prefetch_batches=cfg.data.prefetch_batches):
                batch = self.collate_eval(raw)
                ids = batch.pop("sample_id", None)
                batch = self.prepare_batch(batch)
                logits = module.predict(batch).float()
                self.metrics.update(logits, batch["label"])
                if keep:
                    kept["sample_id"].append(np.asarray(ids).astype(str))
                    kept["pred"].append(predictions(cfg.task, logits).cpu().numpy())
                    kept["label"].append(batch["label"].cpu().numpy())
        values = self.metrics.compute()
        module.train(was_training)
        if keep:
            tmp = tempfile.mkdtemp(prefix="pred-")
            np.savez_compressed(Path(tmp, f"{split}_rank{self.rank}.npz"),
                                **{k: np.concatenate(v) if v else np.zeros((0,)) for k, v in kept.items()})
            upload_dir(tmp, "predictions")
            shutil.rmtree(tmp, ignore_errors=True)
        return values

    # ------------------------------------------------------------------ checkpoints, pictures

    def state(self) -> dict[str, Any]:
        return {"evals": self.evals, "best": self.best}

    def checkpoint_files(self, ckpt_dir: str) -> None:
        if self.best_state is not None:
            from safetensors.torch import save_file

            save_file({k: v.contiguous() for k, v in self.best_state.items()}, str(Path(ckpt_dir, BEST_FILE)))

    def restore_state(self, state: Mapping[str, Any], ckpt_dir: str) -> None:
        self.evals = list(state.get("evals", []))
        self.best = dict(state.get("best", self.best))
        path = Path(ckpt_dir, BEST_FILE)
        if path.exists():
            from safetensors.torch import load_file

            self.best_state = load_file(str(path))

    def pictures(self, out_dir: str) -> None:
        if self.rank == 0:
            write_curves(out_dir, self.history, self.evals,
                         f"{self.cfg.model.name} {self.cfg.mode} on {self.cfg.benchmark}")


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


class SplitEveryRow(DataConfig):
    """Ray Train's ``DataConfig`` with the training set split into equal shards (DeepSpeed steps every rank
    in lockstep) and the evaluation sets split without dropping rows (``equal=False``): each row reaches
    exactly one rank, so a metric synced over the ranks covers the whole split."""

    def configure(self, datasets, world_size, worker_handles, worker_node_ids, **kwargs):
        output = [{} for _ in range(world_size)]
        hints = worker_node_ids if self._enable_shard_locality else None
        for name, ds in datasets.items():
            if ds.name is None:
                ds.set_name(name)
            ds = ds.copy(ds)
            ds.context.execution_options = self._resolve_execution_options(name)
            parts = ds.streaming_split(world_size, equal=name == "train", locality_hints=hints)
            for i, part in enumerate(parts):
                output[i][name] = part
        return output


# ---------------------------------------------------------------------------------------------
# driver
# ---------------------------------------------------------------------------------------------


def default_name(cfg: FinetuneConfig) -> str:
    """``finetune-<model>-<8 hex>`` (:meth:`TrainConfig.digest_name`): relaunching resumes."""
    return cfg.digest_name("finetune")


def local_weights(cfg: FinetuneConfig, tmp: str) -> str:
    """A local path of ``cfg.encoder`` (an ``s3://`` file is copied into ``tmp``)."""
    from pipeline.storage import filesystem, scheme_of

    fs, path = filesystem(cfg.encoder, cfg.data.storage)
    if scheme_of(cfg.encoder) == "file":
        return path
    dest = os.path.join(tmp, os.path.basename(path))
    fs.get_file(path, dest)
    return dest


def _check_encoder(cfg: FinetuneConfig) -> None:
    """The encoder weights exist and fit the preset: built on the meta device (nothing allocated), the
    weights go through the checkpoint filter and the key check; ConfigError naming ``encoder``."""
    from pipeline.storage import filesystem

    fs, path = filesystem(cfg.encoder, cfg.data.storage)
    if not fs.exists(path):
        raise cli.ConfigError(f"encoder {cfg.encoder!r}: weights file not found")
    with torch.device("meta"):
        model = build_task_model(cfg.model.name, cfg.model.overrides, task=cfg.task,
                                 num_classes=len(cfg.classes), frozen=cfg.frozen)
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        # loading into meta parameters is a no-op by design here: only names and shapes are checked
        warnings.filterwarnings("ignore", message=".*copying from a non-meta parameter")
        try:
            load_encoder(model, local_weights(cfg, tmp))
        except (RuntimeError, ValueError, TypeError, KeyError) as e:
            raise cli.ConfigError(
                f"encoder {cfg.encoder!r} does not fit model {cfg.model.name}: {e}") from None


def _check_stages(stages: list[StageConfig], tile_px: int, patch: int) -> None:
    for i, s in enumerate(stages):
        if s.img_size > tile_px:
            raise cli.ConfigError(f"stages.{i}.img_size {s.img_size} exceeds the shards' tile_px {tile_px}")
        if s.img_size % patch:
            raise cli.ConfigError(f"stages.{i}.img_size {s.img_size} is not a multiple of the encoder's "
                                  f"patch size {patch}")


def prepare(cfg: FinetuneConfig) -> tuple[FinetuneConfig, dict[str, Any]]:
    """Check everything before any work (ConfigError naming the field), resolve the benchmark facts and the
    run name into the config, and build the ``train``/``val``/``test`` Ray Datasets."""
    from jobs.train.family import family_of
    from models.registry import get_config, split_overrides

    if not cfg.data.path:
        raise cli.ConfigError("data.path is not set (pass --data)")
    if not cfg.storage:
        raise cli.ConfigError("storage is not set (pass --storage)")
    try:
        fam = family_of(cfg.model.name)
        enc_config = get_config(cfg.model.name, **split_overrides(cfg.model.name, cfg.model.overrides)[0])
    except (ValueError, TypeError) as e:
        raise cli.ConfigError(f"model: {e}") from None
    manifest = read_manifest(cfg.data.path, cfg.data.storage)
    bench = manifest.get("benchmark")
    if not bench:
        raise cli.ConfigError(f"data.path {cfg.data.path!r} holds shards without labels (no benchmark in its "
                              "manifest.json): convert a benchmark with jobs.convert")
    if cfg.task is not None and cfg.task != bench["task"]:
        raise cli.ConfigError(f"task {cfg.task!r} does not match the shards' task {bench['task']!r} "
                              f"(benchmark {bench['name']})")
    if cfg.classes is not None and tuple(cfg.classes) != tuple(bench["classes"]):
        raise cli.ConfigError(f"classes {list(cfg.classes)} differ from the shards' {bench['classes']}")
    for split in SPLITS:
        if not bench.get("splits", {}).get(split):
            raise cli.ConfigError(f"data.path {cfg.data.path!r} has no {split!r} rows (splits: "
                                  f"{bench.get('splits')}); model selection needs a val split: convert "
                                  "with one (e.g. OSCD --set options.val_cities=[...])")
    if bench["task"] == "change" and manifest.get("max_slots", 0) < 2:
        raise cli.ConfigError("a change benchmark needs two S2 slots per sample (max_slots >= 2)")
    _check_stages(cfg.stages, manifest["tile_px"], enc_config.patch_size)
    cfg = cfg.model_copy(update={"task": bench["task"], "benchmark": bench["name"],
                                 "classes": tuple(bench["classes"])})
    if cfg.encoder != "random":
        cfg = cfg.model_copy(update={"encoder": absolute(cfg.encoder)})  # the workers' cwd is not ours
        _check_encoder(cfg)
    cfg = cfg.model_copy(update={"name": cfg.name or default_name(cfg)})
    cli.init_ray()

    task, label_column = cfg.task, TASK_LABELS[cfg.task]
    if task == "change" and fam.name == "spectralgpt":
        base = make_spectralgpt_pair_fn(manifest["band_stats"], device_cube=cfg.scaling.use_gpu)
    else:
        base = fam.make_preprocess(manifest, cfg)
    cols = (label_column, "split", "sample_id")
    datasets = {
        split: build_dataset(cfg, manifest, columns=cols, split=split, train=split == "train",
                             preprocess=make_finetune_preprocess_fn(base, task, label_column,
                                                                    keep_ids=split != "train"))
        for split in SPLITS
    }
    return cfg, datasets


def default_run_config(cfg: FinetuneConfig, callbacks=None):
    """The run's ``RunConfig``: ``<storage>/<name>``, checkpoints ranked by ``val_score`` (the best
    ``checkpoint.keep`` and the latest are kept)."""
    from ray.train import CheckpointConfig

    ckpt = CheckpointConfig(num_to_keep=cfg.checkpoint.keep, checkpoint_score_attribute="val_score",
                            checkpoint_score_order="max")
    return loop_run_config(cfg, checkpoint_config=ckpt, callbacks=callbacks)


def make_trainer(cfg: FinetuneConfig, datasets: Mapping[str, Any], run_config=None):
    """The ``TorchTrainer`` of a prepared config (``prepare``); ``run_config`` default:
    ``default_run_config(cfg)`` (``jobs.tune`` passes one with its ``TuneReportCallback``)."""
    rc = run_config or default_run_config(cfg)
    return make_loop_trainer(cfg, FinetuneLoop, datasets, cli.config_json(cfg), run_config=rc,
                             dataset_config=SplitEveryRow(execution_options=ingest_options(cfg)))


def summary(cfg: FinetuneConfig, metrics: Mapping[str, Any]) -> dict[str, Any]:
    """``metrics.json`` from the last report (``best_val_*``, ``test_*``)."""
    names = METRICS[cfg.task]
    return {
        "benchmark": cfg.benchmark, "task": cfg.task, "encoder": cfg.encoder, "mode": cfg.mode,
        "best_step": metrics.get("best_step"),
        "val": {k: metrics.get(f"best_val_{k}") for k in names},
        "test": {k: metrics.get(f"test_{k}") for k in names},
        "config": cfg.model_dump(mode="json"),
    }


def run(cfg: FinetuneConfig) -> dict[str, Any]:
    """Train and evaluate; writes ``<storage>/<name>/metrics.json``. Returns ``{"name", "run_dir",
    "metrics" (metrics.json), "report" (the last report), "checkpoint", "best_checkpoint"}``."""
    from pipeline.storage import write_bytes_atomic

    cfg, datasets = prepare(cfg)
    cli.log_config(cfg, "finetune config")
    result = fit(cfg, FinetuneLoop, datasets, cli.config_json(cfg), trainer=make_trainer(cfg, datasets))
    report = dict(result.metrics or {})
    out = summary(cfg, report)
    run_dir = join(cfg.storage, cfg.name)
    write_bytes_atomic(join(run_dir, METRICS_FILE),
                       json.dumps(out, indent=1, sort_keys=True).encode(), cfg.data.storage)
    best = max(result.best_checkpoints or [], key=lambda cm: cm[1].get("val_score", -math.inf), default=None)
    log.info("run %s: best step %s, test %s", cfg.name, out["best_step"], out["test"])
    return {"name": cfg.name, "run_dir": run_dir, "metrics": out, "report": report,
            "checkpoint": result.checkpoint.path if result.checkpoint else None,
            "best_checkpoint": best[0].path if best else None}


def main(argv: list[str] | None = None) -> int:
    return cli.run_job(
        FinetuneConfig, run, argv, default_config="configs/finetune/spectralgpt_tiny.yaml",
        aliases={
            "--data": cli.Alias("data.path", "benchmark shards root (jobs.convert output; path or s3://)"),
            "--encoder": cli.Alias("encoder", "random, a .safetensors export or an official SpectralGPT "
                                              ".pth"),
            "--storage": cli.Alias("storage", "runs root (local path or s3://)"),
            "--name": cli.Alias("name", "run name (default: finetune-<model>-<digest of the config>)"),
        },
        show=lambda out: json.dumps({k: out.get(k) for k in ("name", "run_dir", "metrics")}, indent=1,
                                    default=str),
    )


if __name__ == "__main__":
    raise SystemExit(main())
