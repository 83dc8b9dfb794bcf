"""Training-step throughput of every model preset, and SpectralGPT against a plain reference.

    python bench/model_step.py                                  # all presets that fit, + comparison
    python bench/model_step.py --presets spectralgpt_tiny spectralgpt_base --steps 3
    python bench/model_step.py --compare-only --pairs 5         # ours vs reference only
    python bench/model_step.py --device cuda --presets spectralgpt_large spectralgpt_huge skysense_1b

1. Per preset: forward + backward samples/s at the preset's native input (SpectralGPT: masked
   autoencoder loss on (B, C, H, W); SkySense: the pretraining objective on an S2 + S1 time
   series), with the FLOPs of one step counted by ``torch.utils.flop_counter`` so the achieved
   FLOP/s — and on a GPU the bf16 MFU against the device's dense peak — follow.
2. ``spectralgpt_base`` at 12 × 128 × 128, batch 2, mask 0.9: our implementation against a
   straightforward reference of the same computation (the official layout: separate q/k/v,
   manual softmax attention, full-image Conv3d tokeniser; ``tests/models/test_checkpoint.py``),
   with identical weights and masks, alternating the two in the same run (the order flips each
   pair so drift cancels). Printed: the median of the per-pair time ratios (goal ≤ 0.5).

On a CPU, presets above ``--max-params`` are skipped and those above ``--one-step-params`` run
a single step (its time includes first-call overheads). Results go to ``bench/results/models.md``
by hand, with the date, the machine and the command.
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from models.checkpoint import load_weights  # noqa: E402
from models.registry import count_params, create, get_config, list_models  # noqa: E402

# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity), matched on torch.cuda.get_device_name().
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0}


def peak_tflops(device: torch.device, override: float | None) -> float | None:
    if override:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    if "H100" in name and "PCIe" in name:
        return 756.0
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------------------------
# one training step per model family (data, not branches in the timing loop)
# ---------------------------------------------------------------------------------------------


def spectralgpt_step(name: str, batch: int, device: torch.device) -> tuple[torch.nn.Module, Callable, str]:
    model = create(name).to(device).train()
    c = model.config
    x = torch.randn(batch, c.in_chans, c.img_size, c.img_size, device=device)

    def step() -> torch.Tensor:
        loss = model({"x": x})["loss"]
        loss.backward()
        return loss

    return model, step, f"{c.in_chans}x{c.img_size}x{c.img_size}, mask {c.mask_ratio}"


def skysense_step(name: str, batch: int, device: torch.device, dates: int = 4):
    from models.registry import create_pretrainer

    pre = create_pretrainer(name).to(device).train()
    c = pre.config.encoder
    h = c.img_size
    doy = torch.linspace(1, 365, dates, device=device).long().expand(batch, -1)
    data = {
        "s2": torch.randn(batch, dates, c.s2_in_chans, h, h, device=device),
        "s2_doy": doy,
        "s2_valid": torch.ones(batch, dates, dtype=torch.bool, device=device),
        "s1": torch.randn(batch, dates, c.s1_in_chans, h, h, device=device),
        "s1_doy": doy,
        "s1_valid": torch.ones(batch, dates, dtype=torch.bool, device=device),
        "lonlat": torch.tensor([[11.6, 48.1]], device=device).expand(batch, -1),
    }

    def step() -> torch.Tensor:
        loss = pre(data)["loss"]
        loss.backward()
        return loss

    return pre, step, f"S2 {dates}x{c.s2_in_chans}x{h}x{h} + S1 {dates}x{c.s1_in_chans}x{h}x{h}"


FAMILIES: dict[str, Callable] = {"spectralgpt": spectralgpt_step, "skysense": skysense_step}


def step_flops(step: Callable, model: torch.nn.Module, amp: bool, device: torch.device) -> int:
    """FLOPs of one forward + backward, counted by torch's FlopCounterMode (matmuls, convs, SDPA)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    # The CPU flash-attention kernel has no FLOP formula: count attention through the math backend.
    attention = sdpa_kernel(SDPBackend.MATH) if device.type == "cpu" else contextlib.nullcontext()
    counter = FlopCounterMode(display=False)
    with counter, attention, torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
        step()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


CLOCK = time.perf_counter  # --cpu-time: time.process_time (robust on a shared, oversubscribed CPU)


def time_steps(
    step: Callable, model: torch.nn.Module, n: int, amp: bool, device: torch.device
) -> list[float]:
    times = []
    for _ in range(n):
        model.zero_grad(set_to_none=True)
        sync(device)
        t0 = CLOCK()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            step()
        sync(device)
        times.append(CLOCK() - t0)
    return times


def bench_presets(args: argparse.Namespace, device: torch.device) -> None:
    amp = device.type == "cuda"
    peak = peak_tflops(device, args.peak_tflops)
    names = args.presets or list_models()
    print(f"\n## Training step per preset ({device}, {'bf16 autocast' if amp else 'fp32'})\n")
    print("| preset | params | input | batch | steps | s/step | samples/s | GFLOP/step | TFLOP/s | MFU |")
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name in names:
        family = name.split("_")[0]
        n_params = count_params(name)
        if device.type == "cpu" and n_params > args.max_params:
            print(f"| {name} | {n_params / 1e6:.1f} M | skipped on CPU (> --max-params) | | | | | | | |")
            continue
        steps = 1 if device.type == "cpu" and n_params > args.one_step_params else args.steps
        batch = args.batch or (2 if device.type == "cpu" else 32)
        try:
            torch.manual_seed(0)
            model, step, desc = FAMILIES[family](name, batch, device)
            if steps > 1:
                time_steps(step, model, 1, amp, device)  # warm-up
            flops = step_flops(step, model, amp, device) if args.flops else 0
            times = time_steps(step, model, steps, amp, device)
        except Exception as e:  # a family under construction must not hide the others' figures
            print(f"| {name} | {n_params / 1e6:.1f} M | failed: {type(e).__name__}: {e} | | | | | | | |")
            continue
        t = statistics.median(times)
        tflops = flops / t / 1e12
        mfu = f"{tflops / peak:.1%}" if peak and flops else "—"
        print(
            f"| {name} | {n_params / 1e6:.1f} M | {desc} | {batch} | {steps} | {t:.3f} | {batch / t:.2f} "
            f"| {flops / 1e9:.1f} | {tflops:.4f} | {mfu} |",
            flush=True,
        )
        del model, step


def compare_reference(args: argparse.Namespace, device: torch.device) -> None:
    from tests.models.test_checkpoint import OfficialMAE

    torch.manual_seed(0)
    cfg = get_config("spectralgpt_base")
    ref = OfficialMAE(cfg).to(device).train()
    ours = create("spectralgpt_base").to(device).train()
    load_weights(ours, ref.state_dict())
    run_ours = torch.compile(ours) if args.compile else ours
    x = torch.randn(2, 12, 128, 128, device=device)
    noise = torch.rand(2, cfg.num_groups * cfg.grid_size**2, device=device)

    def step_ref():
        loss = ref(x, 0.9, noise)[0]
        loss.backward()
        return loss

    def step_ours():
        loss = run_ours(x, mask_ratio=0.9, noise=noise)[0]
        loss.backward()
        return loss

    amp = device.type == "cuda" and args.amp_compare
    losses = [
        time_steps(f, m, 1, amp, device) and f().item() for f, m in ((step_ref, ref), (step_ours, ours))
    ]
    print(f"\n## spectralgpt_base, 12x128x128, batch 2, mask 0.9: ours vs reference ({device})\n")
    print(f"warm-up losses: reference {losses[0]:.6f}, ours {losses[1]:.6f}")
    rows = []
    for i in range(args.pairs):
        order = [("ref", step_ref, ref), ("ours", step_ours, ours)]
        if i % 2:
            order.reverse()
        t, sys_t = {}, {}
        for tag, f, m in order:
            r0 = resource.getrusage(resource.RUSAGE_SELF).ru_stime
            t[tag] = time_steps(f, m, 1, amp, device)[0]
            sys_t[tag] = resource.getrusage(resource.RUSAGE_SELF).ru_stime - r0  # page faults etc.
        rows.append((t["ref"], t["ours"], t["ours"] / t["ref"]))
        print(
            f"pair {i}: reference {t['ref']:.3f} s (sys {sys_t['ref']:.2f}), "
            f"ours {t['ours']:.3f} s (sys {sys_t['ours']:.2f}), ratio {t['ours'] / t['ref']:.3f}"
        )
    ref_t, our_t, ratios = (statistics.median(c) for c in zip(*rows))
    ref_min, our_min = min(r[0] for r in rows), min(r[1] for r in rows)
    print(
        f"\nmedian: reference {ref_t:.3f} s/step, ours {our_t:.3f} s/step; "
        f"median per-pair ratio {ratios:.3f} (goal <= 0.5){' [ours compiled]' if args.compile else ''}"
    )
    print(
        f"fastest (least disturbed) steps: reference {ref_min:.3f} s, ours {our_min:.3f} s, "
        f"ratio {our_min / ref_min:.3f}"
    )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", nargs="*", help="registry names (default: all)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=0, help="default: 2 on CPU, 32 on GPU")
    p.add_argument("--steps", type=int, default=3, help="timed steps per preset (after one warm-up)")
    p.add_argument("--pairs", type=int, default=5, help="alternating ours/reference pairs")
    p.add_argument("--max-params", type=float, default=7e8, help="CPU: skip larger presets")
    p.add_argument("--one-step-params", type=float, default=2e8, help="CPU: one step above this")
    p.add_argument("--peak-tflops", type=float, default=None, help="override the device's bf16 peak")
    p.add_argument("--no-flops", dest="flops", action="store_false", help="skip FLOP counting")
    p.add_argument("--compile", action="store_true", help="torch.compile our model in the comparison")
    p.add_argument("--amp-compare", action="store_true", help="GPU: run the comparison in bf16 autocast")
    p.add_argument("--compare-only", action="store_true")
    p.add_argument("--no-compare", action="store_true")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (default: torch's)")
    p.add_argument(
        "--cpu-time",
        action="store_true",
        help="CPU: process CPU time instead of wall time (with --threads 1 on a shared machine)",
    )
    args = p.parse_args(argv)
    if args.cpu_time:
        global CLOCK
        CLOCK = time.process_time
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    clock = "process CPU time" if args.cpu_time else "wall time"
    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, {clock}")
    if not args.compare_only:
        bench_presets(args, device)
    if not args.no_compare:
        compare_reference(args, device)


if __name__ == "__main__":
    main()
