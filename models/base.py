"""The protocol every encoder and pretrainer implements, and the EMA primitive pretrainers share.

Jobs call these methods directly (no ``hasattr`` probing): a preset that lacks one fails the
registry-parametrized protocol test (``tests/models/test_protocol.py``), not a training run.

Encoder (``models.registry.create(name)``)::

    config                          frozen dataclass of the architecture
    init_weights(gather: Gather = contextlib.nullcontext) -> None
                                    (re-)initialise every parameter from the global RNG, one
                                    submodule at a time: each step runs inside ``gather(params)``
                                    for the parameters it writes (a submodule's own ones), so under
                                    ``deepspeed.zero.Init`` the job passes ``lambda ps:
                                    zero.GatheredParameters(ps, modifier_rank=0)`` and no rank
                                    holds more than one submodule whole; the values and the RNG
                                    draws are those of the plain build. Tensors without storage
                                    (meta, ZeRO-3 partitions outside a gather) are skipped
    set_grad_checkpointing(enable: bool = True) -> None
                                    activation checkpointing of every block stack while training
    no_weight_decay() -> set[str]   full names (as in ``named_parameters()``) of the parameters
                                    that take no weight decay beyond the 1-D ones (biases, norms):
                                    tokens, position/calendar/modality embeddings, prototypes
    forward_features(batch: Mapping[str, Tensor]) -> Tensor | dict[str, Tensor]
                                    the encoder's features of a batch of the family's inputs

Pretrainer (``models.registry.create_pretrainer(name)``), additionally::

    forward(batch: dict[str, Tensor]) -> dict[str, Tensor]
        "loss": the scalar to back-propagate; "loss_<part>": each scalar component (logged);
        other keys (e.g. SpectralGPT's "pred" (B, L, g·p·p) and "mask" (B, L) for pictures) are
        tensors a job may use but never logs as losses.
    after_step(step: int, total_steps: int) -> None
        called once after every optimizer step with the 0-based step just taken; SkySense moves
        its EMA teacher (cosine momentum schedule from its own config), SpectralGPT does nothing.

Pure torch: no deepspeed, no ray. ZeRO-3 is met by duck typing: a parameter carrying a
``ds_tensor`` attribute holds its local partition there (see ``ema_``).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

__all__ = [
    "Encoder", "Gather", "Pretrainer", "apply_gathered", "cosine_momentum", "ema_", "gathered", "has_storage",
    "join_fp32", "split_fp32",
]

#: ``gather(params)``: a context inside which ``params`` hold their full tensors, and after which
#: what was written to them is kept (ZeRO-3: ``zero.GatheredParameters(params, modifier_rank=0)``).
Gather = Callable[[list[nn.Parameter]], AbstractContextManager]


@runtime_checkable
class Encoder(Protocol):
    """What every registered preset's module provides (see the module docstring)."""

    config: Any

    def init_weights(self, gather: Gather = contextlib.nullcontext) -> None:
        """Initialise every parameter from the global RNG (idempotent per seed), one submodule at a
        time inside ``gather(its parameters)``."""

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Turn activation checkpointing of every block stack on or off."""

    def no_weight_decay(self) -> set[str]:
        """Full ``named_parameters()`` names exempt from weight decay (beyond the 1-D ones)."""
        ...

    def forward_features(self, batch: Mapping[str, torch.Tensor]) -> Any:
        """Encoder features of a batch of the family's inputs."""


@runtime_checkable
class Pretrainer(Encoder, Protocol):
    """An ``Encoder`` that also trains itself: a loss dict per batch and a hook after each step."""

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``{"loss": (), "loss_<part>": (), ...}`` plus optional non-loss tensors."""
        ...

    def after_step(self, step: int, total_steps: int) -> None:
        """Called after optimizer step ``step`` (0-based) of ``total_steps``."""


def has_storage(t: torch.Tensor | None) -> bool:
    """False for None, meta tensors and ZeRO-3-partitioned parameters (numel 0)."""
    return t is not None and t.numel() > 0 and not t.is_meta


def gathered(gather: Gather, fn: Callable[..., Any], *tensors: torch.Tensor | None, **kw) -> None:
    """``fn(t, **kw)`` for each of ``tensors`` that has storage, all inside one ``gather`` of the
    parameters among them (None entries, e.g. a Linear without bias, are skipped)."""
    ts = [t for t in tensors if t is not None]
    with gather([t for t in ts if isinstance(t, nn.Parameter)]):
        for t in ts:
            if has_storage(t):
                fn(t, **kw)


def apply_gathered(
    module: nn.Module, fn: Callable[[nn.Module], None], gather: Gather, types: tuple[type, ...]
) -> None:
    """``module.apply(fn)`` (the same post-order, so the same RNG draws) with each call on a
    submodule of one of ``types`` (those ``fn`` writes) inside ``gather`` of that submodule's own
    parameters: the largest set ever gathered is one submodule's direct parameters, never the model."""
    for child in module.children():
        apply_gathered(child, fn, gather, types)
    own = list(module.parameters(recurse=False)) if isinstance(module, types) else []
    if own:
        with gather(own):
            fn(module)
    else:
        fn(module)


def cosine_momentum(step: int, total_steps: int, m0: float, m1: float = 1.0) -> float:
    """EMA momentum, cosine from ``m0`` at step 0 to ``m1`` at ``total_steps`` (BYOL/DINO):
    ``m1 − (m1 − m0) · ½ (1 + cos(π · min(1, step / total)))``."""
    p = min(1.0, step / max(1, total_steps))
    return m1 - (m1 - m0) * 0.5 * (1.0 + math.cos(math.pi * p))


def _gathered(p: torch.Tensor) -> bool:
    """A ZeRO-3 parameter whose full tensor is present (inside ``GatheredParameters``, or persistent)."""
    return p.data.numel() > 0 and p.data.numel() == getattr(p, "ds_numel", None)


def _same_storage(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


def _ema_pairs(t: torch.Tensor, s: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The (teacher, student) tensors one EMA step updates for a parameter pair.

    Outside ZeRO-3: the parameters' data. A ZeRO-3 parameter (duck-typed: it has ``ds_tensor``)
    holds its local partition in ``ds_tensor``, the source of truth DeepSpeed gathers from and
    checkpoints: two parameters of equal numel are partitioned identically (the same flat slice
    on every rank), so the update runs on the partitions alone: exact, no communication, memory
    stays sharded. A teacher parameter that is also gathered in its own storage (a persistent
    small parameter, which DeepSpeed never re-gathers for a frozen module, or inside
    ``GatheredParameters``) has its full tensor updated too, from the student's full tensor.
    """
    tp, sp = getattr(t, "ds_tensor", None), getattr(s, "ds_tensor", None)
    if (tp is None) != (sp is None):
        raise ValueError(
            f"teacher and student parameters are partitioned differently: {t.shape} vs {s.shape}"
        )
    if tp is None:
        return [(t.data, s.data)]
    for p, part in ((t, tp), (s, sp)):
        if part.numel() == 0 and getattr(p, "ds_numel", 0) > 0:  # swapped out (NVMe parameter offload)
            raise RuntimeError(
                f"the ZeRO-3 partition of a parameter of shape {tuple(p.ds_shape)} is not in memory "
                "(parameters offloaded to NVMe?): an EMA teacher needs its own and its student's partitions "
                "in RAM"
            )
    pairs = [(tp.data, sp.data)]
    if _gathered(t) and not _same_storage(t.data, tp.data):
        if not _gathered(s):
            raise RuntimeError(
                f"teacher parameter of shape {tuple(t.ds_shape)} is gathered but its student counterpart "
                "is not: gather both (or neither) around the EMA step"
            )
        pairs.append((t.data, s.data))
    return pairs


def split_fp32(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """An fp32 tensor as ``(hi, lo)``: ``hi`` bf16, ``x`` rounded to nearest (ties away from zero);
    ``lo`` int16, the low 16 bits of ``x``'s bit pattern. ``join_fp32(hi, lo)`` is ``x`` bit for bit.

    bf16 is fp32 without its 16 low mantissa bits, so ``hi`` plus those bits is the whole fp32
    value: an fp32 EMA accumulator for a bf16 tensor costs 2 more bytes per element, not 4. On
    the bit patterns (mod 2**32): ``hi = (x + 0x8000) >> 16`` rounds the magnitude; ``lo = x & 0xFFFF``
    says whether it rounded up (``lo >= 0x8000``), which ``join_fp32`` undoes.
    """
    bits = x.contiguous().view(torch.int32)
    hi = ((bits + 0x8000) >> 16).to(torch.int16).view(torch.bfloat16)
    return hi, (bits & 0xFFFF).to(torch.int16)


def join_fp32(hi: torch.Tensor, lo: torch.Tensor) -> torch.Tensor:
    """The fp32 tensor that ``split_fp32`` split into ``hi`` (bf16) and ``lo`` (int16), same shape."""
    low = lo.to(torch.int32) & 0xFFFF
    top = hi.contiguous().view(torch.int16).to(torch.int32) - (low >= 0x8000).to(torch.int32)
    return ((top << 16) | low).view(torch.float32)


@torch.no_grad()
def ema_(teacher: Iterable[nn.Parameter], student: Iterable[nn.Parameter], momentum: float) -> None:
    """``teacher ← m · teacher + (1 − m) · student``, parameter by parameter, correct under ZeRO 0-3.

    Both sequences must pair parameters of equal shape (a second build of the same config).
    Precision: with bf16/fp16 parameters an update ``(1 − m)(s − t)`` with m ≥ 0.99 is mostly
    below the format's resolution and would be lost, so each low-precision teacher tensor is
    updated in fp32. A bf16 tensor keeps only the 16 low bits of its fp32 value next to it
    (``_ema_lo``; ``_ema_lo_full`` for a gathered ZeRO-3 parameter's full tensor; ``split_fp32``):
    the update is fp32-exact at 4 B per element in all, where a separate fp32 copy would make it 6.
    An fp16 tensor keeps an fp32 copy (``_ema_fp32``, ``_ema_fp32_full``).
    """
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must be in [0, 1], got {momentum}")
    t_views, s_views = [], []
    for t, s in zip(teacher, student, strict=True):
        for i, (a, b) in enumerate(_ema_pairs(t, s)):
            if a.numel() == 0:
                continue
            lo_attr, acc_attr = ("_ema_lo", "_ema_lo_full")[i], ("_ema_fp32", "_ema_fp32_full")[i]
            if momentum == 0.0:  # an exact copy, also over uninitialised (NaN) teacher memory
                a.copy_(b)
                for attr in (lo_attr, acc_attr):
                    if hasattr(t, attr):
                        delattr(t, attr)
                continue
            if a.dtype in (torch.float32, torch.float64):
                t_views.append(a)
                s_views.append(b.to(a.dtype))
                continue
            if a.dtype == torch.bfloat16:
                lo = getattr(t, lo_attr, None)
                fresh = lo is None or lo.shape != a.shape or lo.device != a.device
                acc = a.float() if fresh else join_fp32(a, lo)
                acc.mul_(momentum).add_(b.float(), alpha=1.0 - momentum)
                hi, lo_new = split_fp32(acc)
                a.copy_(hi)
                if fresh:
                    setattr(t, lo_attr, lo_new)
                else:
                    lo.copy_(lo_new)
                continue
            acc = getattr(t, acc_attr, None)
            if acc is None or acc.shape != a.shape or acc.device != a.device:
                acc = a.float()
                setattr(t, acc_attr, acc)
            acc.mul_(momentum).add_(b.float(), alpha=1.0 - momentum)
            a.copy_(acc)
    if t_views:
        torch._foreach_mul_(t_views, momentum)
        torch._foreach_add_(t_views, s_views, alpha=1.0 - momentum)
