"""Typed config sections of the training jobs (pydantic, ``Strict``: unknown keys fail before any work).

``TrainConfig`` holds what every training job has (run name and storage, model, data, stages,
optimiser, DeepSpeed, scaling, checkpoints, logging, fault injection); a job's config extends it.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from jobs.train.schedules import accumulation, micro_batch
from pipeline.config import StorageConfig, Strict

__all__ = [
    "AugmentConfig", "CheckpointSection", "DataSection", "DebugSection", "DeepSpeedConfig", "LogSection",
    "ModelSection", "OptimConfig", "ScalingSection", "StageConfig", "Strict", "TrainConfig",
]


class StageConfig(Strict):
    """One progressive-training stage: input size, length, global batch (samples per optimizer step)."""

    img_size: int = Field(ge=8)
    steps: int = Field(ge=1)
    batch_size: int = Field(ge=1)


class OptimConfig(Strict):
    """AdamW with warmup + cosine; the peak LR is ``base_lr × global_batch / 256``."""

    base_lr: float = Field(default=1.5e-4, gt=0)
    weight_decay: float = Field(default=0.05, ge=0)
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = Field(default=1e-8, gt=0)
    warmup_steps: int = Field(default=0, ge=0)
    min_lr_ratio: float = Field(default=0.0, ge=0, le=1)
    grad_clip: float = Field(default=1.0, ge=0)  # 0 disables clipping


class DeepSpeedConfig(Strict):
    """The DeepSpeed knobs we expose; ``override`` (a dict or a JSON file path) is merged on top."""

    zero_stage: Literal[0, 1, 2, 3] = 2
    offload_optimizer: bool = False
    offload_params: bool = False
    #: where the offloads go: host RAM, or swap files under ``nvme_path`` (a local disk)
    offload_device: Literal["cpu", "nvme"] = "cpu"
    nvme_path: str | None = None
    #: "auto": bf16 on GPUs, fp32 on CPU.
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    grad_accum: int = Field(default=1, ge=1)
    #: build the model inside ``deepspeed.zero.Init`` (ZeRO-3): parameters never exist whole on one rank.
    zero_init: bool = False
    activation_checkpointing: bool = False
    #: elements per ZeRO buffer: reduce (and all-gather) bucket, and under ZeRO-3 the prefetch bucket,
    #: live and reused gathered parameters and the optimizer's sub-group. None: DeepSpeed's defaults,
    #: sized for GPUs (5e8-element buckets, 1e9 live parameters: a whole 1 B model gathered at once)
    bucket_elements: int | None = Field(default=None, ge=1)
    #: bytes from which host allocations are served by mmap and so go back to the OS when freed
    #: (glibc; ``jobs.train.engine.set_host_mmap_threshold``). glibc's own threshold grows with freed
    #: blocks up to 32 MiB, so the transients of a partitioned build and of every step stay resident
    #: (skysense_1b on CPU: 8 GiB per rank before its first forward instead of 4). At most 32 MiB,
    #: glibc's documented maximum. None: glibc's default.
    host_mmap_threshold: int | None = Field(default=None, ge=0, le=2**25)
    override: dict[str, Any] | str | None = None

    @model_validator(mode="after")
    def _check(self) -> DeepSpeedConfig:
        if self.offload_params and self.zero_stage != 3:
            raise ValueError("offload_params needs zero_stage 3")
        if self.offload_optimizer and self.zero_stage == 0:
            raise ValueError("offload_optimizer needs zero_stage >= 1")
        if self.zero_init and self.zero_stage != 3:
            raise ValueError("zero_init needs zero_stage 3")
        if self.bucket_elements is not None and self.zero_stage == 0:
            raise ValueError("bucket_elements needs zero_stage >= 1")
        if self.offload_device == "nvme":
            if not (self.offload_optimizer or self.offload_params):
                raise ValueError("offload_device nvme needs offload_optimizer or offload_params")
            if not self.nvme_path:
                raise ValueError("nvme_path is required with offload_device nvme")
        elif self.nvme_path is not None:
            raise ValueError("nvme_path needs offload_device nvme")
        return self


class ScalingSection(Strict):
    """How many Ray Train workers, on what. ``num_workers`` is a fixed count or an elastic
    ``[min, max]`` pair (Ray Train V2's ``ScalingConfig(num_workers=(min, max))``): the group starts
    with as many workers as the cluster holds (up to ``max``), restarts from the latest checkpoint
    with the workers left when a node dies (not below ``min``), and grows back when capacity returns.
    The global batch (``stages.batch_size``) is the same at every size: a smaller world accumulates
    more micro batches (``schedules.accumulation``)."""

    num_workers: int | tuple[int, int] = 2
    use_gpu: bool = False
    #: CPUs reserved per worker; keep it below the node's share so Ray Data keeps some.
    cpus_per_worker: float = Field(default=1.0, gt=0)
    #: elastic only: how often a healthy group checks whether more workers fit (Ray's default: 60 s)
    resize_interval_s: float = Field(default=60.0, ge=0)

    @field_validator("num_workers", mode="before")
    @classmethod
    def _pair(cls, v: Any) -> Any:
        if isinstance(v, list):  # yaml and --set give a [min, max] list
            v = tuple(v)
        if isinstance(v, bool) or not (isinstance(v, int) or (
                isinstance(v, tuple) and len(v) == 2 and all(isinstance(x, int) and not isinstance(x, bool)
                                                             for x in v))):
            raise ValueError(f"scaling.num_workers must be an int or a [min, max] pair of ints, not {v!r}")
        lo, hi = (v, v) if isinstance(v, int) else v
        if lo < 1 or lo > hi:
            raise ValueError(f"scaling.num_workers {list(v) if isinstance(v, tuple) else v} needs "
                             "1 <= min <= max")
        return v

    @property
    def elastic(self) -> bool:
        return isinstance(self.num_workers, tuple)

    @property
    def min_workers(self) -> int:
        return self.num_workers[0] if isinstance(self.num_workers, tuple) else self.num_workers

    @property
    def max_workers(self) -> int:
        return self.num_workers[1] if isinstance(self.num_workers, tuple) else self.num_workers

    @property
    def worlds(self) -> range:
        """Every world size the group may run at."""
        return range(self.min_workers, self.max_workers + 1)


class AugmentConfig(Strict):
    """Augmentations applied identically to every band, date and modality of a sample."""

    flip: bool = True
    rot90: bool = True


class ModelSection(Strict):
    #: registry preset; its family (``jobs.train.family``) is the name's prefix
    name: str = "spectralgpt_tiny"
    #: preset overrides (e.g. img_size) and, for SkySense, pretrainer settings (e.g. proj_dim)
    overrides: dict[str, Any] = Field(default_factory=dict)
    #: SpectralGPT: fraction of tokens masked (None: the preset's)
    mask_ratio: float | None = Field(default=None, ge=0.0, lt=1.0)
    #: SkySense: EMA teacher momentum, cosine from this to ``teacher_momentum_final``
    teacher_momentum: float = Field(default=0.996, ge=0.0, le=1.0)
    teacher_momentum_final: float = Field(default=1.0, ge=0.0, le=1.0)


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
    #: the same seed gives the same batches in the same order: Ray Data keeps the order of blocks
    #: (reading, preprocessing, the split between workers) and of batches (the prefetch threads),
    #: which it otherwise hands on as they finish. What sweeps need to compare configs (the
    #: fine-tuning presets and ``jobs.tune`` turn it on); at scale it costs a wait behind the slowest task
    preserve_order: bool = False
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


class TrainConfig(Strict):
    """The fields every Ray Train + DeepSpeed job has; ``<storage>/<name>/`` is the run."""

    name: str | None = None
    #: where runs go: ``<storage>/<name>/`` holds checkpoints, TensorBoard, PNGs, the export
    storage: str | None = None
    seed: int = Field(default=0, ge=0)
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
    debug: DebugSection = Field(default_factory=DebugSection)

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        sc, accum = self.scaling, self.deepspeed.grad_accum
        for i, s in enumerate(self.stages):
            try:
                micro_batch(s.batch_size, sc.max_workers, accum)
            except ValueError as e:
                raise ValueError(f"stages.{i}.batch_size: {e}") from None
        for w in sc.worlds:  # an elastic group keeps the global batch at every size it may run at
            try:
                accumulation([s.batch_size for s in self.stages], w, sc.max_workers, accum)
            except ValueError as e:
                raise ValueError(f"scaling.num_workers [{sc.min_workers}, {sc.max_workers}]: {e}") from None
        if self.debug.kill_worker_at_step is not None and not self.debug.kill_marker:
            raise ValueError("debug.kill_marker is required with debug.kill_worker_at_step")
        if self.name is not None and (not self.name or "/" in self.name or ".." in self.name):
            raise ValueError(f"name {self.name!r} must be a plain directory name")
        return self

    @property
    def total_steps(self) -> int:
        return sum(s.steps for s in self.stages)

    def digest_name(self, job: str) -> str:
        """``<job>-<model>-<8 hex>``: the digest of the resolved config without its name, so relaunching
        the same command (same config, data and storage) finds the same run and resumes."""
        body = json.dumps(self.model_dump(mode="json", exclude={"name"}), sort_keys=True)
        return f"{job}-{self.model.name}-{hashlib.sha256(body.encode()).hexdigest()[:8]}"
