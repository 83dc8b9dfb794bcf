"""What a training run shows: the rank-0 step line, TensorBoard scalars, MFU, and the pictures.

    >>> format_step_line({"step": 5, "stage": 0, "loss": 1.0, "lr": 1e-3, "samples_per_s": 10.0,
    ...                   "data_wait_frac": 0.1, "peak_mem_gb": 0.5})
    'step      5 | stage 0 | loss 1.0000 | lr 1.000e-03 |     10.0 samples/s | data-wait 10.0% | mem 0.50 GiB'
"""

from __future__ import annotations

import os
import resource
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import numpy as np
import torch

from pipeline.sensors import S2


class Reconstruction(NamedTuple):
    """A masked autoencoder's view of a few samples: input ``x (B, C, H, W)``, prediction ``pred
    (B, L, g·p·p)``, ``mask (B, L)`` (1 = masked) and the model (its ``patchify``/``unpatchify``)."""

    x: torch.Tensor
    pred: torch.Tensor
    mask: torch.Tensor
    model: Any


class TensorBoard:
    """Rank 0's scalar writer into a local directory (uploaded with the checkpoints); a no-op elsewhere."""

    def __init__(self, log_dir: str, enabled: bool) -> None:
        self.log_dir = log_dir
        self.writer = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir)

    def scalars(self, metrics: Mapping[str, Any], step: int, prefix: str = "train") -> None:
        if self.writer is None:
            return
        for k, v in metrics.items():
            if isinstance(v, int | float) and k != "step":
                self.writer.add_scalar(f"{prefix}/{k}", v, step)

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


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
    evals = [f"{k} {v:.4f}" for k, v in m.items()
             if k.startswith(("val_", "test_")) and k != "val_score" and isinstance(v, int | float)]
    if evals:
        parts.append(" ".join(evals))
    return " | ".join(parts)


# ---------------------------------------------------------------------------------------------
# pictures
# ---------------------------------------------------------------------------------------------


#: NIR, red, green of the 12-band cube (positions in the shard's band order)
FALSE_COLOUR = tuple(S2.band_names.index(b) for b in ("B08", "B04", "B03"))


def false_colour(x, bands=FALSE_COLOUR, stretch=None):
    """(C, H, W) normalised -> (H, W, 3) in [0, 1] from the given band indices.

    ``stretch`` = (lo, hi) maps values to [0, 1]; None: the image's own 2-98 % percentiles.
    """
    img = np.stack([x[b] for b in bands], -1).astype("float32")
    lo, hi = stretch if stretch is not None else (np.percentile(img, 2), np.percentile(img, 98))
    return np.clip((img - lo) / max(hi - lo, 1e-6), 0, 1)


def write_plots(out_dir: str, history: list[dict], recon: Reconstruction | None, title: str) -> list[str]:
    """``loss.png`` (loss and LR per step) and, for SpectralGPT, ``reconstruction.png``
    (input / masked input / reconstruction with the visible tokens pasted back, in false colour
    NIR-red-green; masking is per spectral group, so a masked cell can keep some bands)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    if history:
        fig, ax = plt.subplots(figsize=(7, 4))
        steps = [h["step"] for h in history]
        ax.plot(steps, [h["loss"] for h in history], label="loss")
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax2 = ax.twinx()
        ax2.plot(steps, [h["lr"] for h in history], color="tab:orange", alpha=0.6, label="lr")
        ax2.set_ylabel("lr")
        ax.set_title(title)
        fig.tight_layout()
        path = os.path.join(out_dir, "loss.png")
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    if recon is not None:
        x, pred, mask, model = recon.x, recon.pred, recon.mask, recon.model

        hw = (x.shape[-2] // model.config.patch_size, x.shape[-1] // model.config.patch_size)
        tokens = model.patchify(x)  # (B, L, g*p*p)
        masked = model.unpatchify(tokens * (1 - mask)[..., None], hw)  # (B, C, H, W)
        # MAE-style: visible tokens as they were, masked ones from the prediction
        rec = model.unpatchify(tokens * (1 - mask)[..., None] + pred * mask[..., None], hw)
        n = x.shape[0]
        fig, axes = plt.subplots(n, 3, figsize=(7, 2.4 * n), squeeze=False)
        for i in range(n):
            # one stretch per row, the input's, so the three panels share a colour scale
            bands = torch.as_tensor(x[i]).numpy()[list(FALSE_COLOUR)]
            stretch = (float(np.percentile(bands, 2)), float(np.percentile(bands, 98)))
            for j, (img, panel) in enumerate(((x, "input"), (masked, "masked"), (rec, "reconstruction"))):
                axes[i, j].imshow(false_colour(torch.as_tensor(img[i]).numpy(), FALSE_COLOUR, stretch))
                axes[i, j].set_axis_off()
                if i == 0:
                    axes[i, j].set_title(panel)
        fig.tight_layout()
        path = os.path.join(out_dir, "reconstruction.png")
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


def write_curves(out_dir: str, history: list[dict], evals: list[dict], title: str) -> str:
    """``curves.png``: the training loss per step (left) and every validation metric at each
    evaluation (right; ``evals``: ``{"step", "val_<metric>": ...}`` records) of a fine-tuning run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 4))
    ax.plot([h["step"] for h in history], [h["loss"] for h in history])
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    keys = sorted({k for e in evals for k in e if k.startswith("val_") and k != "val_score"})
    for k in keys:
        pts = [(e["step"], e[k]) for e in evals if k in e]
        bx.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=k.removeprefix("val_"))
    bx.set_xlabel("step")
    bx.set_ylabel("validation")
    if keys:
        bx.legend()
    fig.suptitle(title)
    fig.tight_layout()
    path = os.path.join(out_dir, "curves.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
