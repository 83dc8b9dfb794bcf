"""The DeepSpeed side of a training job: engine config, partitioned builds, parameter groups and the
files of a checkpoint (an EMA teacher is the model's own ``after_step``, ``models.base.ema_``).

    ds_config = build_deepspeed_config(cfg.deepspeed, cfg.optim, micro_batch_size=8, world_size=2,
                                       use_gpu=False)
    model = build_partitioned(build, ds_config)     # ZeRO-3: no rank ever holds the model whole
    engine, optimizer, _, _ = deepspeed.initialize(model=model, model_parameters=param_groups(model, 0.05),
                                                   config=ds_config)
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from jobs.cli import deep_merge
from jobs.train.configs import DeepSpeedConfig, OptimConfig


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
    if ds.bucket_elements is not None:
        n = ds.bucket_elements
        zero.update(reduce_bucket_size=n, allgather_bucket_size=n)
        if ds.zero_stage == 3:
            zero.update(sub_group_size=n, stage3_prefetch_bucket_size=n, stage3_max_live_parameters=n,
                        stage3_max_reuse_distance=n)
    offload = {"device": ds.offload_device, "pin_memory": use_gpu,
               **({"nvme_path": ds.nvme_path} if ds.offload_device == "nvme" else {})}
    if ds.offload_optimizer:
        zero["offload_optimizer"] = dict(offload)
    if ds.offload_params:
        zero["offload_param"] = dict(offload)
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


def set_host_mmap_threshold(nbytes: int) -> bool:
    """Serve this process's host allocations of ``nbytes`` or more by ``mmap`` from now on, so a
    freed tensor's memory goes back to the OS at once (glibc ``mallopt(M_MMAP_THRESHOLD)``, which
    also stops glibc raising the threshold to the size of each freed block). False where the C
    library is not glibc or refuses the value."""
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_mmap_threshold = -3  # <malloc.h>
    return bool(libc.mallopt(m_mmap_threshold, int(nbytes)))


def build_partitioned(build: Callable[[], torch.nn.Module], ds_config: Mapping[str, Any]) -> torch.nn.Module:
    """Build a model under ``deepspeed.zero.Init`` (ZeRO-3: no rank ever holds it whole), then run
    its own ``init_weights(gather)``, which gathers one submodule at a time.

    ``zero.Init`` partitions each submodule as soon as it is built, so the model's init in
    ``__init__`` saw empty tensors and skipped them (their values would be PyTorch's defaults, not
    the model's init). ``gather`` makes one submodule's parameters whole on every rank, rank 0
    writes them from the seeded RNG, and its values are broadcast and re-partitioned when the
    gather exits: the peak per rank is the largest submodule, not the model (the values equal a
    plain build's, ``tests/models/test_protocol.py``).
    """
    import deepspeed
    import torch.distributed as tdist

    # zero.Init reads the config (train_batch_size = micro × accum × world) before it joins the
    # process group; DeepSpeed's comm layer must know the world already or it checks against 1.
    if tdist.is_initialized() and not deepspeed.comm.is_initialized():
        deepspeed.init_distributed(dist_backend=tdist.get_backend())
    with deepspeed.zero.Init(config_dict_or_path=dict(ds_config)):
        model = build()
    model.init_weights(init_gather)
    return model


@contextlib.contextmanager
def init_gather(params: list[torch.nn.Parameter]):
    """The ``gather`` that ``build_partitioned`` hands to ``init_weights``:
    ``zero.GatheredParameters(params, modifier_rank=0)``, leaving the global CPU RNG (and CUDA's, for
    parameters on a GPU) exactly as the model's own draws leave it. DeepSpeed's gather and re-partition
    are not ours to audit for RNG use (a lazily built op, a version's sanity check); a draw there would
    shift every value after it, and the partitioned build would no longer equal the plain one for the
    same seed."""
    import deepspeed

    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()  # GPU parameters draw from CUDA's
    state = torch.get_rng_state(), torch.cuda.get_rng_state() if cuda else None
    with deepspeed.zero.GatheredParameters(params, modifier_rank=0):
        _set_rng(state)
        yield
        state = torch.get_rng_state(), torch.cuda.get_rng_state() if cuda else None
    _set_rng(state)


def _set_rng(state: tuple[torch.Tensor, torch.Tensor | None]) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1])


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: decay only ≥ 2-D weights not named by ``model.no_weight_decay()``; biases,
    norms, position embeddings and tokens get none. Frozen parameters (an EMA teacher) are left out.
    Uses ``ds_shape`` when parameters are already partitioned by ZeRO-3."""
    skip = model.no_weight_decay()  # full parameter names (models.base protocol)
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


# ---------------------------------------------------------------------------------------------
# checkpoint files
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
