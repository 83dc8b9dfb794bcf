"""Pure schedules of a training run: LR warmup + cosine, progressive stages, micro batches and the
gradient accumulation that keeps the global batch when an elastic worker group shrinks.

    >>> lr_at(0, base_lr=1.5e-4, global_batch=512, warmup_steps=10, total_steps=100)
    3e-05
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple, Protocol


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


class Accumulation(NamedTuple):
    """How a world of ``world`` workers makes each stage's global batch:
    ``micro_batches[i] × grad_accum × world == stages[i].batch_size``."""

    world: int
    grad_accum: int
    #: per-worker samples of one forward, one entry per stage
    micro_batches: tuple[int, ...]


def accumulation(batch_sizes: Sequence[int], world: int, max_workers: int, grad_accum: int) -> Accumulation:
    """The accumulation of a world of ``world`` workers that keeps every stage's global batch.

    At the full world (``world == max_workers``) it is the configured ``grad_accum``. A smaller world
    accumulates more micro batches so that no micro batch grows past the full world's (per-worker
    memory stays what the full world needs): the smallest ``a ≥ ⌈grad_accum · max_workers / world⌉``
    with ``world · a`` dividing every stage's batch size (one ``a`` for all stages: DeepSpeed fixes
    the accumulation when the engine is built). ValueError naming the fields when there is none.

    >>> accumulation([16, 16], world=1, max_workers=2, grad_accum=1)
    Accumulation(world=1, grad_accum=2, micro_batches=(8, 8))
    """
    if not 1 <= world <= max_workers:
        raise ValueError(f"world {world} is outside scaling.num_workers [1, {max_workers}]")
    for b in batch_sizes:
        micro_batch(b, max_workers, grad_accum)  # the full world's split must exist
    lowest = -(-grad_accum * max_workers // world)
    g = math.gcd(*batch_sizes)
    for a in range(lowest, g // world + 1):
        if g % (world * a) == 0:
            return Accumulation(world, a, tuple(b // (world * a) for b in batch_sizes))
    raise ValueError(
        f"stages.batch_size {list(batch_sizes)} cannot be kept by {world} worker(s) of scaling.num_workers "
        f"(max {max_workers}): no gradient accumulation >= {lowest} with {world} × accumulation dividing it"
    )
