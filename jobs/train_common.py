"""Shared training glue for the pretrain and fine-tune jobs: typed config sections, the DeepSpeed
config builder, the LR schedule, parameter groups, the shard loader's per-batch functions,
metrics/MFU helpers and checkpoint helpers.

Everything here is either a pure function or a ``make_*_fn(...)`` factory returning the per-batch
function (Ray ``release/train_tests/benchmark`` style), so it is testable without a cluster:

    >>> lr_at(0, base_lr=1.5e-4, global_batch=512, warmup_steps=10, total_steps=100)
    3e-05
    >>> prep = make_spectralgpt_preprocess_fn(band_stats)     # pyarrow.Table -> dict of numpy
    >>> aug = make_augment_fn(crop=96, seed=0)                # dict of numpy -> dict of torch
"""

from __future__ import annotations

import copy
import json
import math
import os
import resource
import zlib
from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from models.base import cosine_momentum  # noqa: F401  (re-exported: the schedule lives with the EMA)
from pipeline.shards import tensor_field, tensor_to_numpy

# ---------------------------------------------------------------------------------------------
# sensors as data: the shard's S2 band order and the subsets each model consumes
# ---------------------------------------------------------------------------------------------

SHARD_S2_BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12")
SHARD_S1_BANDS = ("VV", "VH")
#: SkySense's 10 S2 bands (B02-B08, B8A, B11, B12): no coastal aerosol (B01) nor water vapour (B09).
SKYSENSE_S2_BANDS = ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12")
#: false-colour composite for pictures (NIR, red, green)
FALSE_COLOUR = ("B08", "B04", "B03")


def band_indices(bands: Sequence[str], order: Sequence[str] = SHARD_S2_BANDS) -> list[int]:
    """Positions of ``bands`` in ``order``; ValueError naming the unknown band."""
    unknown = [b for b in bands if b not in order]
    if unknown:
        raise ValueError(f"unknown band(s) {unknown}; the shard has {list(order)}")
    return [order.index(b) for b in bands]


# ---------------------------------------------------------------------------------------------
# typed config sections (pydantic, extra="forbid": unknown keys fail before any work)
# ---------------------------------------------------------------------------------------------


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


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
    #: "auto": bf16 on GPUs, fp32 on CPU.
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    grad_accum: int = Field(default=1, ge=1)
    #: build the model inside ``deepspeed.zero.Init`` (ZeRO-3): parameters never exist whole on one rank.
    zero_init: bool = False
    activation_checkpointing: bool = False
    override: dict[str, Any] | str | None = None

    @model_validator(mode="after")
    def _check(self) -> DeepSpeedConfig:
        if self.offload_params and self.zero_stage != 3:
            raise ValueError("offload_params needs zero_stage 3")
        if self.offload_optimizer and self.zero_stage == 0:
            raise ValueError("offload_optimizer needs zero_stage >= 1")
        if self.zero_init and self.zero_stage != 3:
            raise ValueError("zero_init needs zero_stage 3")
        return self


class ScalingSection(Strict):
    num_workers: int = Field(default=2, ge=1)
    use_gpu: bool = False
    #: CPUs reserved per worker; keep it below the node's share so Ray Data keeps some.
    cpus_per_worker: float = Field(default=1.0, gt=0)


class AugmentConfig(Strict):
    """Augmentations applied identically to every band, date and modality of a sample."""

    flip: bool = True
    rot90: bool = True


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_ratio: float = 0.0) -> float:
    """LR multiplier in [min_ratio, 1] for 0-based optimizer ``step``.

    Linear warmup ``(step + 1) / warmup`` for ``step < warmup``, then
    ``min + (1 − min) · ½ (1 + cos(π · p))`` with ``p = (step − warmup) / (total − warmup)``
    clamped to [0, 1].
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    p = min(1.0, max(0.0, (step - warmup_steps) / max(1, total_steps - warmup_steps)))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * p))


def lr_at(
    step: int,
    *,
    base_lr: float,
    global_batch: int,
    warmup_steps: int,
    total_steps: int,
    min_lr_ratio: float = 0.0,
) -> float:
    """LR of optimizer ``step``: ``base_lr × global_batch / 256 × warmup_cosine(step)`` (pure)."""
    return base_lr * global_batch / 256.0 * warmup_cosine(step, warmup_steps, total_steps, min_lr_ratio)


def stage_at(step: int, stages: Sequence[StageConfig]) -> tuple[int, int]:
    """``(stage index, first step of that stage)`` for global optimizer ``step``; the last stage
    extends past the end."""
    start = 0
    for i, s in enumerate(stages):
        if step < start + s.steps or i == len(stages) - 1:
            return i, start
        start += s.steps
    raise ValueError("no stages")


def micro_batch(global_batch: int, num_workers: int, grad_accum: int) -> int:
    """Per-worker micro batch; ValueError naming the fields when it does not divide."""
    per = num_workers * grad_accum
    if global_batch % per:
        raise ValueError(
            f"stages.batch_size {global_batch} must be divisible by "
            f"scaling.num_workers × deepspeed.grad_accum = {per}"
        )
    return global_batch // per


# ---------------------------------------------------------------------------------------------
# DeepSpeed
# ---------------------------------------------------------------------------------------------


def deep_merge(base: dict, over: Mapping) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), dict) else v
    return out


def use_bf16(ds: DeepSpeedConfig, use_gpu: bool) -> bool:
    return ds.precision == "bf16" or (ds.precision == "auto" and use_gpu)


def build_deepspeed_config(
    ds: DeepSpeedConfig,
    optim: OptimConfig,
    *,
    micro_batch_size: int,
    world_size: int,
    use_gpu: bool,
) -> dict[str, Any]:
    """The DeepSpeed JSON for one engine. The LR is set by us every step (``lr_at``), so no
    scheduler section; the optimizer is AdamW (DeepSpeedCPUAdam when offloading, torch's on CPU)."""
    zero: dict[str, Any] = {"stage": ds.zero_stage}
    if ds.zero_stage >= 1:
        zero.update(overlap_comm=use_gpu, contiguous_gradients=True)
    if ds.zero_stage == 3:
        zero.update(stage3_gather_16bit_weights_on_model_save=True)
    if ds.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": use_gpu}
    if ds.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": use_gpu}
    cfg: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "gradient_accumulation_steps": ds.grad_accum,
        "train_batch_size": micro_batch_size * ds.grad_accum * world_size,
        "optimizer": {
            "type": "AdamW",
            "params": {
                "lr": optim.base_lr,
                "betas": list(optim.betas),
                "eps": optim.eps,
                "weight_decay": optim.weight_decay,
                # torch's AdamW on CPU (no op to compile); fused/CPU-Adam elsewhere
                **({"torch_adam": True} if not use_gpu and not ds.offload_optimizer else {}),
            },
        },
        "zero_optimization": zero,
        "bf16": {"enabled": use_bf16(ds, use_gpu)},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }
    if optim.grad_clip > 0:
        cfg["gradient_clipping"] = optim.grad_clip
    if ds.override is not None:
        over = ds.override
        if isinstance(over, str):
            over = json.loads(Path(over).read_text())
        cfg = deep_merge(cfg, over)
    return cfg


def build_partitioned(build: Callable[[], torch.nn.Module], ds_config: Mapping[str, Any]) -> torch.nn.Module:
    """Build a model under ``deepspeed.zero.Init`` (ZeRO-3: no rank ever holds it whole), then run
    its own ``init_weights()`` on the gathered parameters.

    ``zero.Init`` partitions each submodule as soon as it is built, so the model's init in
    ``__init__`` saw empty tensors and skipped them (their values would be PyTorch's defaults, not
    the model's init). Rank 0's initialised values are broadcast when the gather exits.
    """
    import deepspeed

    with deepspeed.zero.Init(config_dict_or_path=dict(ds_config)):
        model = build()
    with deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=0):
        model.init_weights()
    return model


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: decay only ≥ 2-D weights not named by ``model.no_weight_decay()``; biases,
    norms, position embeddings and tokens get none. Frozen parameters (an EMA teacher) are left out.
    Uses ``ds_shape`` when parameters are already partitioned by ZeRO-3."""
    skip = model.no_weight_decay()  # full names (models.base protocol)
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        ndim = len(getattr(p, "ds_shape", p.shape))
        (no_decay if ndim < 2 or name in skip else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


@contextmanager
def local_partitions(params: Sequence[torch.nn.Parameter]):
    """Under ZeRO-3, temporarily point each parameter's ``.data`` at its local partition.

    Two parameters of equal numel are partitioned identically (the same flat slice on every
    rank), so element-wise updates between them (an EMA ``teacher ← m·teacher + (1−m)·student``)
    can run on the partitions alone: no all-gather, exact, and memory stays sharded. Outside
    ZeRO-3 (no ``ds_tensor``) this is a no-op.
    """
    saved = []
    for p in params:
        if hasattr(p, "ds_tensor"):
            saved.append((p, p.data))
            p.data = p.ds_tensor.data
    try:
        yield
    finally:
        for p, d in saved:
            p.data = d


def ema_update(model: torch.nn.Module, momentum: float) -> None:
    """Step the EMA teacher of ``model`` by ``momentum``: ``model.momentum_update(m)``, which is
    correct under ZeRO 0-3 and accumulates low-precision teachers in fp32 (``models.base.ema_``).
    Jobs call ``model.after_step(step, total)``, which takes the momentum from the model's config."""
    model.momentum_update(momentum)


# ---------------------------------------------------------------------------------------------
# shards -> numpy (the per-batch functions Ray Data runs)
# ---------------------------------------------------------------------------------------------


def column_to_numpy(col: pa.Array | pa.ChunkedArray, field: pa.Field | None = None) -> np.ndarray:
    """An Arrow column holding fixed-shape tensors -> one ndarray ``(N, *shape)``.

    Accepts the shard contract's tensor columns: v2 ``fixed_size_binary`` with the dtype/shape in
    ``field``'s metadata (required for those; see ``pipeline.shards.tensor_to_numpy``) and v1 pyarrow
    ``FixedShapeTensor``; also Ray's tensor extension, nested (fixed-size) lists and plain primitive
    columns.
    """
    if isinstance(col.type, pa.FixedShapeTensorType) or pa.types.is_fixed_size_binary(col.type):
        return tensor_to_numpy(col, field)
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    n = len(col)
    if isinstance(col.type, pa.ExtensionType):
        if hasattr(col, "to_numpy"):
            try:
                return np.asarray(col.to_numpy(zero_copy_only=False))
            except TypeError:
                return np.asarray(col.to_numpy())
        col = col.storage
    shape: list[int] = [n]
    values = col
    while pa.types.is_fixed_size_list(values.type) or pa.types.is_list(values.type) or pa.types.is_large_list(
        values.type
    ):
        if pa.types.is_fixed_size_list(values.type):
            shape.append(values.type.list_size)
        values = values.flatten()
        if not pa.types.is_fixed_size_list(col.type) and len(shape) == 1:
            shape.append(len(values) // max(n, 1))
    out = values.to_numpy(zero_copy_only=False)
    return out.reshape(shape) if len(shape) > 1 else out


def _table_col(batch: pa.Table | Mapping[str, Any], name: str) -> np.ndarray:
    """Column ``name`` of a batch as numpy. For a ``pa.Table`` the field travels along (the v2 tensor
    columns' dtype/shape metadata); should a reader have dropped that metadata, ``tensor_field``
    rebuilds it from the byte width and the ``{name}_valid`` column's T."""
    if isinstance(batch, pa.Table):
        return column_to_numpy(batch.column(name), tensor_field(batch.schema, name))
    return np.asarray(batch[name])


def _stats(
    band_stats: Mapping[str, Any], modality: str, bands: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    s = band_stats[modality]
    names = list(s["bands"])
    idx = [names.index(b) for b in bands]
    mean = np.asarray(s["mean"], dtype=np.float32)[idx]
    std = np.maximum(np.asarray(s["std"], dtype=np.float32)[idx], 1e-6)
    return mean, std


def normalize_s2(dn: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """uint16 DN ``(..., C, H, W)`` -> float32 ``(DN − mean) / std`` per band; nodata (0) -> 0."""
    shape = (len(mean), 1, 1)
    out = dn.astype(np.float32)  # one allocation, then in place
    out -= mean.reshape(shape)
    out *= (1.0 / std).reshape(shape)
    np.putmask(out, dn == 0, 0.0)
    return out


def normalize_s1(db: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """dB ``(..., 2, H, W)`` -> float32 standardised; non-finite -> 0."""
    shape = (len(mean), 1, 1)
    out = db.astype(np.float32)
    out -= mean.reshape(shape)
    out *= (1.0 / std).reshape(shape)
    np.putmask(out, ~np.isfinite(out), 0.0)
    return out


SPECTRALGPT_COLUMNS = ("sample_id", "s2", "s2_valid", "s2_cloud")
SKYSENSE_COLUMNS = ("s2", "s2_doy", "s2_valid", "s1", "s1_doy", "s1_valid", "lon", "lat")


def pick_slots(
    valid: np.ndarray, cloud: np.ndarray, how: str, rng: np.random.Generator
) -> list[tuple[int, int]]:
    """``(row, slot)`` pairs of the S2 slots to use: ``least_cloudy`` / ``random`` valid slot per
    row (slot 0 if none is valid), or ``all`` valid slots (each becomes a sample)."""
    pairs = []
    for i in range(valid.shape[0]):
        ok = np.flatnonzero(valid[i])
        if how == "all":
            pairs += [(i, int(t)) for t in ok]
        elif len(ok) == 0:
            pairs.append((i, 0))
        elif how == "least_cloudy":
            pairs.append((i, int(ok[np.argmin(cloud[i, ok])])))
        else:
            pairs.append((i, int(rng.choice(ok))))
    return pairs


def make_spectralgpt_preprocess_fn(
    band_stats: Mapping[str, Any],
    bands: Sequence[str] = SHARD_S2_BANDS,
    slot: Literal["least_cloudy", "random", "all"] = "least_cloudy",
    seed: int = 0,
) -> Callable[[pa.Table], dict[str, np.ndarray]]:
    """Shard rows -> ``{"x": (N, C, H, W) float32}``: one S2 date per sample, normalised.

    ``random`` is seeded by ``seed`` and the batch's sample ids, so re-reading gives the same picks.
    """
    idx = band_indices(bands)
    mean, std = _stats(band_stats, "s2", bands)

    def fn(batch: pa.Table) -> dict[str, np.ndarray]:
        s2 = _table_col(batch, "s2")  # (N, T, 12, H, W) uint16
        valid = _table_col(batch, "s2_valid").astype(bool)  # (N, T)
        cloud = _table_col(batch, "s2_cloud").astype(np.float32)  # (N, T)
        ids = _table_col(batch, "sample_id")
        rng = np.random.default_rng([seed, zlib.crc32("".join(map(str, ids[:4])).encode())])
        pairs = pick_slots(valid, cloud, slot, rng)
        rows = np.asarray([p[0] for p in pairs], dtype=np.int64)
        slots = np.asarray([p[1] for p in pairs], dtype=np.int64)
        dn = s2[rows, slots][:, idx]  # (M, C, H, W)
        return {"x": normalize_s2(dn, mean, std)}

    return fn


def make_skysense_preprocess_fn(
    band_stats: Mapping[str, Any], bands: Sequence[str] = SKYSENSE_S2_BANDS
) -> Callable[[pa.Table], dict[str, np.ndarray]]:
    """Shard rows -> the SkySense batch (numpy): ``s2 (N, T, 10, H, W) f32, s2_doy (N, T) i64,
    s2_valid (N, T) bool, s1 (N, T, 2, H, W) f32, s1_doy, s1_valid, lonlat (N, 2) f32``.
    Invalid slots are zeroed."""
    idx = band_indices(bands)
    m2, s2std = _stats(band_stats, "s2", bands)
    m1, s1std = _stats(band_stats, "s1", SHARD_S1_BANDS)

    def fn(batch: pa.Table) -> dict[str, np.ndarray]:
        s2 = _table_col(batch, "s2")[:, :, idx]  # (N, T, 10, H, W)
        s1 = _table_col(batch, "s1")  # (N, T, 2, H, W)
        s2_valid = _table_col(batch, "s2_valid").astype(bool)
        s1_valid = _table_col(batch, "s1_valid").astype(bool)
        x2 = normalize_s2(s2, m2, s2std) * s2_valid[:, :, None, None, None]
        x1 = normalize_s1(s1, m1, s1std) * s1_valid[:, :, None, None, None]
        lonlat = np.stack([_table_col(batch, "lon"), _table_col(batch, "lat")], axis=1).astype(np.float32)
        return {
            "s2": x2.astype(np.float32),
            "s2_doy": _table_col(batch, "s2_doy").astype(np.int64),
            "s2_valid": s2_valid,
            "s1": x1.astype(np.float32),
            "s1_doy": _table_col(batch, "s1_doy").astype(np.int64),
            "s1_valid": s1_valid,
            "lonlat": lonlat,
        }

    return fn


def augment_sample(
    arrays: Sequence[np.ndarray], y0: int, x0: int, crop: int, k: int, flip: bool
) -> list[np.ndarray]:
    """Crop ``[y0:y0+crop, x0:x0+crop]``, rotate by ``k × 90°`` and optionally flip left-right the
    last two axes of every array of one sample, so bands, dates and modalities stay aligned."""
    out = []
    for a in arrays:
        a = a[..., y0 : y0 + crop, x0 : x0 + crop]
        a = np.rot90(a, k, axes=(-2, -1))
        out.append(np.ascontiguousarray(a[..., ::-1] if flip else a))
    return out


def make_augment_fn(
    crop: int,
    flip: bool = True,
    rot90: bool = True,
    seed: int = 0,
    spatial_keys: Sequence[str] | None = None,
) -> Callable[[Mapping[str, np.ndarray]], dict[str, torch.Tensor]]:
    """Numpy batch -> torch batch with a random ``crop``, 90° rotation and flip per sample,
    identical across every spatial array of that sample (``spatial_keys``: arrays whose last two
    axes are H, W; default: every array with ≥ 3 dims). Seeded; successive calls draw new
    augmentations. With ``crop`` equal to the tile and both flags off it is the identity."""
    rng = np.random.default_rng(seed)

    def fn(batch: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
        keys = list(spatial_keys or [k for k, v in batch.items() if v.ndim >= 3])
        if not keys:
            return {k: torch.as_tensor(v) for k, v in batch.items()}
        n = len(batch[keys[0]])
        h, w = batch[keys[0]].shape[-2:]
        if crop > min(h, w):
            raise ValueError(f"crop {crop} larger than the tile ({h}×{w})")
        out = {k: [] for k in keys}
        for i in range(n):
            y0 = int(rng.integers(0, h - crop + 1))
            x0 = int(rng.integers(0, w - crop + 1))
            k = int(rng.integers(0, 4)) if rot90 else 0
            f = bool(rng.integers(0, 2)) if flip else False
            for key, a in zip(keys, augment_sample([batch[key][i] for key in keys], y0, x0, crop, k, f)):
                out[key].append(a)
        res = {k: torch.from_numpy(np.stack(v)) for k, v in out.items()}
        for k, v in batch.items():
            if k not in res:
                res[k] = torch.as_tensor(np.asarray(v))
        return res

    return fn


# ---------------------------------------------------------------------------------------------
# metrics
# ---------------------------------------------------------------------------------------------

#: dense bf16 peak FLOP/s per device, for MFU (names as torch.cuda.get_device_name reports them)
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12, "L4": 121e12}


def peak_flops(device_name: str | None) -> float | None:
    if not device_name:
        return None
    for key, v in PEAK_FLOPS.items():
        if key in device_name:
            return v
    return None


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of one call of ``fn`` (forward + backward if it runs both), by torch's counter."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def peak_memory_gb(device: torch.device) -> float:
    """Peak GPU memory allocated, or the process's peak RSS on CPU, in GiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def format_step_line(m: Mapping[str, Any]) -> str:
    """One console line per logged step (rank 0)."""
    parts = [
        f"step {m['step']:>6d}",
        f"stage {m['stage']}",
        f"loss {m['loss']:.4f}",
        f"lr {m['lr']:.3e}",
        f"{m['samples_per_s']:8.1f} samples/s",
        f"data-wait {100 * m['data_wait_frac']:4.1f}%",
        f"mem {m['peak_mem_gb']:.2f} GiB",
    ]
    if m.get("mfu") is not None:
        parts.append(f"MFU {100 * m['mfu']:.1f}%")
    return " | ".join(parts)


# ---------------------------------------------------------------------------------------------
# checkpoints
# ---------------------------------------------------------------------------------------------

DS_TAG = "ds"  # the DeepSpeed tag (sub-directory) of every checkpoint we write
STATE_FILE = "skyray_state.json"  # step, stage, lr, resolved config, metric history
CONFIG_FILE = "config.json"


def write_state(ckpt_dir: str | os.PathLike, state: Mapping[str, Any]) -> None:
    Path(ckpt_dir, STATE_FILE).write_text(json.dumps(state, sort_keys=True, indent=1))


def read_state(ckpt_dir: str | os.PathLike) -> dict[str, Any]:
    return json.loads(Path(ckpt_dir, STATE_FILE).read_text())


def consolidated_state_dict(ckpt_dir: str | os.PathLike) -> dict[str, torch.Tensor]:
    """fp32 module weights from one of our DeepSpeed checkpoints: DeepSpeed's own ``zero_to_fp32``
    for ZeRO 1-3 (gathers the partitioned fp32 master weights), the saved module for ZeRO-0."""
    ckpt_dir = str(ckpt_dir)
    tag_dir = Path(ckpt_dir, DS_TAG)
    if any(tag_dir.glob("*zero_pp_rank_*optim_states.pt")):
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        sd = get_fp32_state_dict_from_zero_checkpoint(ckpt_dir, tag=DS_TAG)
    else:
        obj = torch.load(tag_dir / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)
        sd = obj["module"]
    return {k: v.float() for k, v in sd.items()}
