"""bf16 training-step throughput, MFU, peak memory and the largest batch that fits, on one GPU.

    bash bench/gpu_check.sh                     # spectralgpt_huge + skysense_1b, ~7 minutes on one H100/H200
    bash bench/gpu_check.sh --smoke             # tiny presets on the CPU: proves the script runs
    python bench/gpu_check.py --models spectralgpt_base --budget-s 120

Needs only torch and einops (``models/`` is pure PyTorch): no Ray, no DeepSpeed, no pyarrow. Each
model is its pretraining module (``models.registry.create_pretrainer``: SpectralGPT's masked
autoencoder at its 90 % mask ratio on 12 × 128 × 128 cubes; SkySense's MGCL + GeoCP pretrainer,
student + EMA teacher, on S2 + S1 series of ``--dates`` dates at 128 px) with activation
checkpointing on. A step is forward + backward + fused AdamW + ``after_step`` (the EMA), under
``torch.autocast(bfloat16)`` with fp32 weights and optimizer states (mixed precision).

Per model:

1. the model FLOPs of one sample: ``torch.utils.flop_counter`` over a step at batch 2 with
   checkpointing *off* (so recomputation is not counted, the MFU convention), divided by 2;
2. ``--steps`` timed steps at ``--batch`` (halved until it fits) after ``--warmup`` steps (CUDA-synchronised):
   step time, samples/s, achieved TFLOP/s, MFU = achieved / the device's dense bf16 peak, and
   the peak memory allocated;
3. the largest batch that fits: doubling from ``--batch`` until a step runs out of memory (or
   ``--max-batch``, or the model's share of ``--budget-s`` is spent), then bisection between the
   last fit and the first failure; each probe is one step.

Prints one markdown table (paste it into ``bench/RESULTS.md`` with the date and device).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from models.registry import create_pretrainer, get_preset  # noqa: E402

#: dense bf16 peak FLOP/s by device name (NVIDIA datasheets, without sparsity)
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12, "L4": 121e12}


@dataclass
class Row:
    model: str
    params: int
    trainable: int
    shape: str
    batch: int
    step_s: float
    samples_per_s: float
    tflops: float
    mfu: float | None
    peak_gib: float
    max_batch: int
    max_batch_note: str
    max_batch_gib: float


def peak_flops(device: torch.device, override_tflops: float | None) -> float | None:
    if override_tflops:
        return override_tflops * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def memory_gib(device: torch.device) -> float:
    """Peak allocated GPU memory since the last reset; on the CPU the process's peak RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def reset_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def make_batch(name: str, pre: torch.nn.Module, b: int, dates: int, device: torch.device) -> dict:
    """Random pretraining inputs of the family at the model's configured size."""
    if get_preset(name).family == "spectralgpt":
        c = pre.config
        return {"x": torch.randn(b, c.in_chans, c.img_size, c.img_size, device=device)}
    c = pre.config.encoder
    h = c.img_size
    doy = torch.linspace(1, 365, dates, device=device).long().expand(b, -1)
    valid = torch.ones(b, dates, dtype=torch.bool, device=device)
    return {
        "s2": torch.randn(b, dates, c.s2_in_chans, h, h, device=device),
        "s2_doy": doy,
        "s2_valid": valid,
        "s1": torch.randn(b, dates, c.s1_in_chans, h, h, device=device),
        "s1_doy": doy,
        "s1_valid": valid,
        "lonlat": torch.tensor([[11.6, 48.1]], device=device).expand(b, -1),
    }


def describe(name: str, pre: torch.nn.Module, dates: int) -> str:
    if get_preset(name).family == "spectralgpt":
        c = pre.config
        return f"{c.in_chans}×{c.img_size}², mask {c.mask_ratio}"
    c = pre.config.encoder
    return f"S2 {dates}×{c.s2_in_chans}×{c.img_size}² + S1 {dates}×{c.s1_in_chans}×{c.img_size}²"


class Trainer:
    """One model, its optimizer and a step function; ``step(b)`` runs one training step at batch b."""

    def __init__(self, name: str, device: torch.device, dates: int, overrides: dict) -> None:
        self.name, self.device, self.dates = name, device, dates
        torch.manual_seed(0)
        with torch.device(device):
            self.pre = create_pretrainer(name, **overrides).train()
        self.pre.set_grad_checkpointing(True)
        params = [p for p in self.pre.parameters() if p.requires_grad]
        fused = {"fused": True} if device.type == "cuda" else {}
        self.opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.05, **fused)

    def step(self, b: int) -> None:
        batch = make_batch(self.name, self.pre, b, self.dates, self.device)
        with torch.autocast(self.device.type, dtype=torch.bfloat16):
            out = self.pre(batch)
        out["loss"].backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.pre.after_step(0, 1)

    def flops_per_sample(self) -> float:
        """Model FLOPs of one sample's step (checkpointing off, so no recomputation is counted)."""
        from torch.nn.attention import SDPBackend, sdpa_kernel
        from torch.utils.flop_counter import FlopCounterMode

        self.pre.set_grad_checkpointing(False)
        # The CPU flash-attention kernel has no FLOP formula: count attention through the math one.
        attention = sdpa_kernel(SDPBackend.MATH) if self.device.type == "cpu" else contextlib.nullcontext()
        counter = FlopCounterMode(display=False)
        batch = make_batch(self.name, self.pre, 2, self.dates, self.device)
        try:
            with counter, attention, torch.autocast(self.device.type, dtype=torch.bfloat16):
                self.pre(batch)["loss"].backward()
        finally:
            self.pre.zero_grad(set_to_none=True)
            self.pre.set_grad_checkpointing(True)
        return counter.get_total_flops() / 2

    def fits(self, b: int) -> tuple[bool, float]:
        """Whether one step at batch ``b`` runs; and its peak memory (GiB)."""
        reset_memory(self.device)
        oom = False
        try:
            self.step(b)
            sync(self.device)
        except torch.cuda.OutOfMemoryError:
            oom = True
        if oom:  # outside the except block, so the traceback's frames no longer pin tensors
            self.opt.zero_grad(set_to_none=True)
            reset_memory(self.device)
            return False, float("nan")
        return True, memory_gib(self.device)


def largest_batch(tr: Trainer, start: int, cap: int, deadline: float) -> tuple[int, str, float]:
    """Doubling then bisection; returns (largest batch that ran, why the search stopped, its GiB)."""
    ok, ok_gib, bad = 0, float("nan"), None
    b = start
    while b <= cap and time.monotonic() < deadline:
        fit, gib = tr.fits(b)
        if not fit:
            bad = b
            break
        ok, ok_gib = b, gib
        b *= 2
    if bad is None:  # nothing failed: the true limit is higher
        return ok, "cap" if b > cap else "time", ok_gib
    lo, hi = ok, bad
    while hi - lo > max(1, lo // 16) and time.monotonic() < deadline:
        mid = (lo + hi) // 2
        fit, gib = tr.fits(mid)
        if fit:
            lo, ok_gib = mid, gib
        else:
            hi = mid
    return lo, f"OOM at {hi}", ok_gib  # bisection may stop early (time) with hi - lo > lo / 16


def measure(name: str, args, device: torch.device, deadline: float) -> Row:
    overrides = {"img_size": args.img_size} if args.img_size else {}
    tr = Trainer(name, device, args.dates, overrides)
    n_all = sum(p.numel() for p in tr.pre.parameters())
    n_train = sum(p.numel() for p in tr.pre.parameters() if p.requires_grad)
    flops = tr.flops_per_sample()
    batch = args.batch
    while not tr.fits(batch)[0]:  # the timed batch must fit: halve it until it does
        if batch == 1:
            raise RuntimeError(f"{name}: not even batch 1 fits on {device}")
        batch //= 2
    for _ in range(args.warmup):
        tr.step(batch)
    reset_memory(device)
    sync(device)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        tr.step(batch)
    sync(device)
    step_s = (time.perf_counter() - t0) / args.steps
    peak = memory_gib(device)
    sps = batch / step_s
    achieved = flops * sps
    pk = peak_flops(device, args.peak_tflops)
    max_b, note, max_gib = largest_batch(tr, batch, args.max_batch, deadline)
    row = Row(
        model=name,
        params=n_all,
        trainable=n_train,
        shape=describe(name, tr.pre, args.dates),
        batch=batch,
        step_s=step_s,
        samples_per_s=sps,
        tflops=achieved / 1e12,
        mfu=achieved / pk if pk else None,
        peak_gib=peak,
        max_batch=max_b,
        max_batch_note=note,
        max_batch_gib=max_gib,
    )
    del tr
    reset_memory(device)
    return row


def table(rows: list[Row], device: torch.device) -> str:
    dev = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    head = (
        "| model | params (trainable) | input per sample | batch | step s | samples/s | TFLOP/s "
        "| MFU | peak GiB | largest batch | GiB there |\n"
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    )
    setup = "bf16 autocast, activation checkpointing on"
    lines = [f"device: {dev}; torch {torch.__version__}; {setup}", "", head]
    for r in rows:
        mfu = f"{100 * r.mfu:.1f} %" if r.mfu is not None else "n/a"
        oom = r.max_batch_note.startswith("OOM")
        stopped = f"≥ {r.max_batch} (search stopped: {r.max_batch_note})"
        largest = f"{r.max_batch} ({r.max_batch_note})" if oom else stopped
        lines.append(
            f"| {r.model} | {r.params / 1e6:,.1f} M ({r.trainable / 1e6:,.1f} M) | {r.shape} | {r.batch} "
            f"| {r.step_s:.3f} | {r.samples_per_s:.1f} | {r.tflops:.3g} | {mfu} | {r.peak_gib:.1f} "
            f"| {largest} | {r.max_batch_gib:.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--models", nargs="+", default=["spectralgpt_huge", "skysense_1b"])
    p.add_argument("--smoke", action="store_true", help="tiny presets on the CPU, a few seconds")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--batch", type=int, default=32, help="timed batch and the search's start")
    p.add_argument("--max-batch", type=int, default=8192)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--dates", type=int, default=4, help="SkySense: S2 and S1 dates per sample")
    p.add_argument("--img-size", type=int, default=None, help="override the presets' input size")
    p.add_argument("--budget-s", type=float, default=400.0, help="wall-clock budget of the whole run")
    p.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak if the device is unknown")
    args = p.parse_args(argv)
    if args.smoke:
        args.models = ["spectralgpt_tiny", "skysense_tiny"]
        args.device = args.device or "cpu"
        args.batch, args.max_batch, args.steps, args.warmup = 2, 8, 2, 1
        args.budget_s = min(args.budget_s, 120.0)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    t_start = time.monotonic()
    rows = []
    for i, name in enumerate(args.models):
        share = (args.budget_s - (time.monotonic() - t_start)) / (len(args.models) - i)
        t0 = time.monotonic()
        rows.append(measure(name, args, device, deadline=t0 + share))
        print(f"# {name}: {time.monotonic() - t0:.0f} s", file=sys.stderr, flush=True)
    print(table(rows, device), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
