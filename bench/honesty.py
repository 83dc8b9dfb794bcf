"""The honesty figure: does pretraining beat a random encoder on the synthetic benchmark?

    python -m bench.honesty [--family spectralgpt skysense] [--steps N] [--seeds 3] [--per-class 100]
                            [--size-px 1152] [--tiles 3] [--threads 1] [--work DIR] [--set key=value ...]

End to end on CPU, in one process (no Ray):

1. a synthetic archive's land-cover truth (``pipeline.synthetic.make_archive``, no scenes needed);
2. the synthetic benchmark converter (``pipeline.convert.synthetic``, task ``classification``, balanced
   classes) written by ``pipeline.convert.writer.write_benchmark`` into contract-v3 shards + manifest;
3. per seed, pretraining of the tiny preset with the settings of
   ``configs/pretrain/<family>_tiny_synthetic.yaml`` (model, mask ratio / teacher momentum, steps, batch,
   optimizer, warmup + cosine LR, flips and 90° rotations; ``jobs.pretrain`` runs the same file) on the
   **train split** of those shards, normalised by the manifest's train statistics exactly as ``jobs.pretrain``
   does (``jobs.train.data`` preprocess functions), unlabelled; what differs from ``jobs.pretrain``: a plain
   fp32 AdamW loop in this process instead of Ray Train + DeepSpeed on 2 workers, one stage at the tile size;
4. the encoder exported to safetensors (``jobs.train.family`` encoder part, ``models.checkpoint``) and loaded
   back through ``models.registry.create(weights=...)``, as ``jobs.export`` + fine-tuning do;
5. a linear probe on frozen pooled features (SpectralGPT: the mean of its tokens of one date; SkySense: its
   ``pooled`` output of the S2 time series + S1), pretrained vs a random encoder of the same seed, test OA
   with torchmetrics; prints the table and the mean difference.

The probe reads what ``jobs.finetune --mode linear_probe`` reads (``jobs.train.task``: SpectralGPT's token
mean, SkySense's ``pooled``; standardised features as its parameter-free BatchNorm gives) and follows its
protocol (frozen encoder, linear head trained on train, model chosen on val, scored on test), in-process:
full-batch AdamW on precomputed features instead of a Ray Train run per encoder and seed.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
import yaml

from jobs.train import data as D
from jobs.train.configs import TrainConfig
from jobs.train.family import family_of
from jobs.train.schedules import warmup_cosine

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "pretrain"


@dataclass(frozen=True)
class Split:
    """One split of the benchmark as the model families see it (numpy)."""

    spectralgpt: dict  # {"x": (N, 12, H, W)} one date (least cloudy)
    spectralgpt_all: dict  # {"x": (N * T, 12, H, W)} every date (pretraining samples)
    skysense: dict  # the SkySense batch (N, T, ...)
    y: np.ndarray  # (N,) class ids


def build_benchmark(work: Path, *, tiles: int, size_px: int, per_class: int, seed: int) -> Path:
    """Archive truth -> converter -> shards under ``work/bench``; returns that directory."""
    from pipeline.convert.writer import convert_in_process
    from pipeline.synthetic import make_archive

    out = work / "bench"
    if (out / "manifest.json").exists():  # a --work directory of an earlier run: same arguments, same bytes
        return out
    epsgs = [32633 + i for i in range(tiles)]
    arch = make_archive(work / "archive", scenes=0, s1_scenes=0, seed=seed, size_px=size_px, epsg=epsgs)
    convert_in_process("synthetic", arch.root, str(out),
                       {"task": "classification", "per_class": per_class, "seed": seed})
    return out


def load_splits(bench: Path) -> dict[str, Split]:
    """The shards -> per split, each family's preprocessed arrays (manifest train statistics)."""
    import pyarrow as pa

    manifest = json.loads((bench / "manifest.json").read_text())
    table = pa.concat_tables([pq.read_table(bench / s["path"]) for s in manifest["shards"]])
    stats = manifest["band_stats"]
    one = D.make_spectralgpt_preprocess_fn(stats, slot="least_cloudy")
    every = D.make_spectralgpt_preprocess_fn(stats, slot="all")
    sky = D.make_skysense_preprocess_fn(stats)
    split = np.asarray(table["split"].to_pylist())
    label = table["label_class"].to_numpy().astype(np.int64)
    out = {}
    for name in ("train", "val", "test"):
        t = table.filter(pa.array(split == name))
        out[name] = Split(one(t), every(t), sky(t), label[split == name])
    return out


def _augment(batch: dict[str, torch.Tensor], g: torch.Generator) -> dict[str, torch.Tensor]:
    """A random flip and 90° rotation per sample over every image array (as ``make_augment_fn``)."""
    out = dict(batch)
    keys = [k for k, v in batch.items() if v.ndim >= 4]
    n = batch[keys[0]].shape[0]
    k = torch.randint(0, 4, (n,), generator=g)
    f = torch.randint(0, 2, (n,), generator=g)
    for key in keys:
        v = batch[key]
        rows = []
        for i in range(n):
            a = torch.rot90(v[i], int(k[i]), dims=(-2, -1))
            rows.append(a.flip(-1) if f[i] else a)
        out[key] = torch.stack(rows)
    return out


def train_config(family: str, steps: int | None, overrides: list[str]) -> TrainConfig:
    """``configs/pretrain/<family>_tiny_synthetic.yaml`` (the one stage ``jobs.pretrain`` runs with it too),
    ``steps`` (None: the file's) replacing its length, then ``overrides`` (``key=value``, yaml values)."""
    raw = yaml.safe_load((CONFIGS / f"{family}_tiny_synthetic.yaml").read_text())
    if len(raw["stages"]) != 1:
        raise ValueError(f"stages: the honesty pretraining runs one stage, {family}_tiny_synthetic.yaml has "
                         f"{len(raw['stages'])}")
    if steps is not None:
        raw["stages"] = [{**raw["stages"][0], "steps": steps}]
    for o in overrides:
        key, value = o.split("=", 1)
        node = raw
        *path, leaf = key.split(".")
        for p in path:
            node = node.setdefault(p, {})
        node[leaf] = yaml.safe_load(value)
    return TrainConfig.model_validate(raw)


def pretrain(cfg: TrainConfig, data: dict[str, np.ndarray], seed: int,
             log=print) -> tuple[torch.nn.Module, list]:
    """Plain fp32 AdamW pretraining of ``cfg.model`` on ``data`` (numpy batch arrays, first axis = samples);
    returns the trained pretrainer and the loss curve [(step, loss)]."""
    fam = family_of(cfg.model.name)
    torch.manual_seed(seed)
    module = fam.build(cfg.model)
    module.train()
    decay, no_decay = [], []
    skip = module.no_weight_decay()
    for n, p in module.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 or n in skip else decay).append(p)
    o = cfg.optim
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": o.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=0.0, betas=o.betas, eps=o.eps)
    stage = cfg.stages[0]
    steps, bs = stage.steps, stage.batch_size
    peak = o.base_lr * bs / 256.0
    arrays = {k: torch.as_tensor(v) for k, v in data.items()}
    n = next(iter(arrays.values())).shape[0]
    g = torch.Generator().manual_seed(seed)
    curve = []
    for step in range(steps):
        for pg in opt.param_groups:
            pg["lr"] = peak * warmup_cosine(step, o.warmup_steps, steps, o.min_lr_ratio)
        idx = torch.randint(0, n, (bs,), generator=g)
        batch = _augment({k: v[idx] for k, v in arrays.items()}, g)
        out = module(batch)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        if o.grad_clip:
            torch.nn.utils.clip_grad_norm_(module.parameters(), o.grad_clip)
        opt.step()
        module.after_step(step, steps)
        curve.append((step, float(out["loss"].detach())))
        if step % max(1, steps // 4) == 0 or step == steps - 1:
            log(f"    step {step:4d} loss {float(out['loss'].detach()):.4f}")
    return module, curve


def export_and_load(cfg: TrainConfig, module: torch.nn.Module, tmp: Path) -> torch.nn.Module:
    """The encoder part of ``module`` -> safetensors -> a fresh registry encoder loading it."""
    from jobs.export import model_config
    from models.checkpoint import export_safetensors
    from models.registry import create

    fam = family_of(cfg.model.name)
    config, enc_overrides = model_config(cfg.model.name, cfg.model.overrides)
    sd = fam.encoder_state_dict(module.state_dict())
    path = tmp / f"{cfg.model.name}.safetensors"
    export_safetensors(module, path, config, state_dict=sd)
    return create(cfg.model.name, weights=str(path), **enc_overrides)


def random_encoder(cfg: TrainConfig, seed: int) -> torch.nn.Module:
    """The same preset, randomly initialised with ``seed`` (the baseline)."""
    from jobs.export import model_config
    from models.registry import create

    _, enc_overrides = model_config(cfg.model.name, cfg.model.overrides)
    torch.manual_seed(seed)
    return create(cfg.model.name, **enc_overrides)


@torch.no_grad()
def features(family: str, encoder: torch.nn.Module, batch: dict[str, np.ndarray],
             chunk: int = 64) -> torch.Tensor:
    """Frozen pooled features (N, D): SpectralGPT mean over tokens, SkySense ``pooled``."""
    encoder.eval()
    n = next(iter(batch.values())).shape[0]
    out = []
    for i in range(0, n, chunk):
        b = {k: torch.as_tensor(v[i:i + chunk]) for k, v in batch.items()}
        f = encoder.forward_features(b)
        out.append(f.mean(1) if family == "spectralgpt" else f["pooled"])
    return torch.cat(out).float()


def linear_probe(ftr, ytr, fval, yval, fte, yte, num_classes: int, seed: int, epochs: int = 300) -> float:
    """Linear head on standardised frozen features (full-batch AdamW, cross-entropy); the epoch with the best
    val OA is scored on test. Returns test OA (torchmetrics, micro = overall accuracy)."""
    from torchmetrics.classification import MulticlassAccuracy

    mu, sd = ftr.mean(0), ftr.std(0) + 1e-6
    ftr, fval, fte = (ftr - mu) / sd, (fval - mu) / sd, (fte - mu) / sd
    g = torch.Generator().manual_seed(seed)
    head = torch.nn.Linear(ftr.shape[1], num_classes)
    torch.nn.init.normal_(head.weight, std=0.01, generator=g)
    torch.nn.init.zeros_(head.bias)
    opt = torch.optim.AdamW(head.parameters(), lr=1e-2, weight_decay=1e-4)
    ytr, yval, yte = (torch.as_tensor(a) for a in (ytr, yval, yte))
    best, best_state = -1.0, None
    for _ in range(epochs):
        opt.zero_grad()
        F.cross_entropy(head(ftr), ytr).backward()
        opt.step()
        with torch.no_grad():
            acc = float((head(fval).argmax(1) == yval).float().mean())
        if acc > best:
            best, best_state = acc, {k: v.clone() for k, v in head.state_dict().items()}
    head.load_state_dict(best_state)
    metric = MulticlassAccuracy(num_classes=num_classes, average="micro")
    with torch.no_grad():
        metric.update(head(fte).argmax(1), yte)
    return float(metric.compute())


@dataclass(frozen=True)
class Row:
    family: str
    seed: int
    random_oa: float
    pretrained_oa: float
    final_loss: float
    seconds: float


def run_family(family: str, splits: dict[str, Split], *, steps: int | None, seeds: int, overrides: list[str],
               log=print) -> list[Row]:
    """Pretrain (``train_config``) and probe ``seeds`` seeds (0, 1, ...): one ``Row`` per seed."""
    cfg = train_config(family, steps, overrides)
    steps = cfg.stages[0].steps
    key = "spectralgpt" if family == "spectralgpt" else "skysense"
    pre_data = splits["train"].spectralgpt_all if family == "spectralgpt" else splits["train"].skysense
    k = int(max(s.y.max() for s in splits.values())) + 1
    rows = []
    for seed in range(seeds):
        t0 = time.time()
        log(f"  {family} seed {seed}: pretraining {steps} steps")
        module, curve = pretrain(cfg, pre_data, seed, log)
        with tempfile.TemporaryDirectory() as tmp:
            enc = export_and_load(cfg, module, Path(tmp))
        oa = {}
        for label, e in (("pretrained", enc), ("random", random_encoder(cfg, seed))):
            f = {s: features(family, e, getattr(splits[s], key)) for s in ("train", "val", "test")}
            oa[label] = linear_probe(f["train"], splits["train"].y, f["val"], splits["val"].y,
                                     f["test"], splits["test"].y, k, seed)
        tail = [loss for _, loss in curve[-max(1, len(curve) // 10):]]
        rows.append(Row(family, seed, oa["random"], oa["pretrained"], float(np.mean(tail)), time.time() - t0))
        log(f"  {family} seed {seed}: random {oa['random']:.3f}  pretrained {oa['pretrained']:.3f}")
    return rows


def table(rows: list[Row]) -> str:
    lines = ["| family | seed | random OA | pretrained OA | difference (points) | final loss | s |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r.family} | {r.seed} | {100 * r.random_oa:.1f} | {100 * r.pretrained_oa:.1f} | "
                     f"{100 * (r.pretrained_oa - r.random_oa):+.1f} | {r.final_loss:.4f} | {r.seconds:.0f} |")
    for fam in dict.fromkeys(r.family for r in rows):
        rs = [r for r in rows if r.family == fam]
        ra, pa_ = np.mean([r.random_oa for r in rs]), np.mean([r.pretrained_oa for r in rs])
        lines.append(f"| **{fam} mean** | {len(rs)} seeds | {100 * ra:.1f} | {100 * pa_:.1f} | "
                     f"**{100 * (pa_ - ra):+.1f}** | | |")
    return "\n".join(lines)


def mean_gap(rows: list[Row], family: str) -> float:
    """Mean (pretrained - random) OA in points over the seeds of ``family``."""
    rs = [r for r in rows if r.family == family]
    return 100 * float(np.mean([r.pretrained_oa - r.random_oa for r in rs]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.honesty", description=__doc__.split("\n\n")[0])
    ap.add_argument("--family", nargs="+", default=["spectralgpt", "skysense"],
                    choices=["spectralgpt", "skysense"])
    ap.add_argument("--steps", type=int, default=None,
                    help="pretraining steps (default: configs/pretrain/<family>_tiny_synthetic.yaml's)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--per-class", type=int, default=100, help="chips per class (balanced)")
    ap.add_argument("--tiles", type=int, default=3)
    ap.add_argument("--size-px", type=int, default=1152)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", default=None, help="working directory (default: a temporary one)")
    ap.add_argument("--set", nargs="*", default=[], dest="overrides",
                    help="config overrides key=value on the pretraining preset, e.g. optim.base_lr=0.05")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        t0 = time.time()
        bench = build_benchmark(work, tiles=args.tiles, size_px=args.size_px, per_class=args.per_class,
                                seed=0)
        splits = load_splits(bench)
        print(f"benchmark: {', '.join(f'{k} {len(v.y)}' for k, v in splits.items())} chips "
              f"({time.time() - t0:.0f} s)", flush=True)
        rows = []
        for fam in args.family:
            rows += run_family(fam, splits, steps=args.steps, seeds=args.seeds,
                               overrides=args.overrides, log=lambda s: print(s, flush=True))
    print()
    print(table(rows))
    for fam in args.family:
        gap = mean_gap(rows, fam)
        print(f"{fam}: pretrained - random = {gap:+.1f} points OA (mean of {args.seeds} seeds)")
    print(f"machine: {platform.node()} {platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; python {sys.version.split()[0]}; "
          f"total {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
