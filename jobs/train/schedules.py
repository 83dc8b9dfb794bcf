"""Pure schedules of a training run: LR warmup + cosine, progressive stages, micro batches.

    >>> lr_at(0, base_lr=1.5e-4, global_batch=512, warmup_steps=10, total_steps=100)
    3e-05
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol


class _Stage(Protocol):
    steps: int


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


def stage_at(step: int, stages: Sequence[_Stage]) -> tuple[int, int]:
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
