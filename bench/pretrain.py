"""Pretraining throughput: samples/s and data-wait fraction of the whole job, and one-device engine figures.

    python -m bench.pretrain          # CPU: tiny presets through jobs.pretrain (Ray Train, 2 workers)
    python -m bench.pretrain --engine --device cuda --models skysense_1b:3:8 spectralgpt_huge:3:32
    python -m bench.pretrain --engine --device cpu --models spectralgpt_tiny:3:8   # same path on CPU

Job mode runs ``jobs.pretrain.run`` on synthetic shards (contract v2) (streaming from Parquet, no
cache) and prints the median samples/s and data-wait fraction over the logged windows after the
first (warm-up). Engine mode builds one DeepSpeed engine in this process (world size 1, no Ray,
random inputs of the model's native shape) and prints samples/s, MFU (FLOPs counted by torch's
FlopCounterMode on the model itself), peak memory, and the measured parameter + optimizer memory
against the ``16 B × params / world size`` estimate of mixed-precision Adam (fp32 master, m, v;
bf16 params and grads).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".cache" / "torch_extensions"))


def job_mode(args) -> list[dict]:
    from jobs.cli import init_ray, load_config
    from jobs.pretrain import PretrainConfig, run
    from pipeline.synthetic.samples import make_shards

    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    init_ray(num_cpus=args.cpus) if args.cpus else init_ray()
    out = Path(args.out or tempfile.mkdtemp(prefix="bench-pretrain-"))
    data = make_shards(out / "data", rows=args.rows, shards=4, tile_px=32, slots=3)
    rows = []
    for preset in ("spectralgpt_tiny", "skysense_tiny"):
        batch = 16 if preset.startswith("spectral") else 8
        cfg = load_config(
            PretrainConfig,
            REPO / "configs" / "pretrain" / f"{preset}.yaml",
            [f"data.path={data}", f"storage={out / 'runs'}", f"name={preset}-{int(time.time())}",
             f"stages=[{{img_size: 32, steps: {args.steps}, batch_size: {batch}}}]",
             "log.every_steps=5", "checkpoint.every_steps=100000", "log.plots=false", "export=false",
             "log.tensorboard=false", f"data.cache={str(args.cache).lower()}"],
        )
        t0 = time.perf_counter()
        res = run(cfg)
        wall = time.perf_counter() - t0
        windows = [h for h in res["history"] if "samples_per_s" in h][1:]  # skip the warm-up window
        row = {
            "preset": preset,
            "steps": args.steps,
            "global_batch": batch,
            "samples_per_s": statistics.median(h["samples_per_s"] for h in windows),
            "data_wait_frac": statistics.median(h["data_wait_frac"] for h in windows),
            "wall_s": wall,
        }
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def engine_mode(args) -> list[dict]:
    import deepspeed
    import torch
    import torch.distributed as dist

    from jobs.train.configs import DeepSpeedConfig, ModelSection, OptimConfig
    from jobs.train.engine import build_deepspeed_config, param_groups
    from jobs.train.family import family_of
    from jobs.train.report import count_flops, peak_flops

    device = torch.device(args.device)
    if device.type == "cpu":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=os.environ.get("MASTER_PORT", "29561"),
                      RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    if not dist.is_initialized():
        deepspeed.init_distributed("nccl" if device.type == "cuda" else "gloo")
    gpu = device.type == "cuda"
    rows = []
    for spec in args.models:
        name, stage, mb = spec.split(":")
        stage, mb = int(stage), int(mb)
        fam = family_of(name)
        img = args.img
        model_cfg = ModelSection(name=name, overrides={"img_size": img})
        ds_cfg = build_deepspeed_config(DeepSpeedConfig(zero_stage=stage, activation_checkpointing=gpu),
                                        OptimConfig(), micro_batch_size=mb, world_size=1, use_gpu=gpu)
        torch.manual_seed(0)
        model = fam.build(model_cfg)
        model.set_grad_checkpointing(gpu)
        n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
        n_all = sum(p.numel() for p in model.parameters())
        if gpu:
            torch.cuda.reset_peak_memory_stats(device)
        engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=param_groups(model, 0.05),
                                               config=ds_cfg)
        dtype = torch.bfloat16 if ds_cfg["bf16"]["enabled"] else torch.float32
        if fam.reconstructs:
            batch = {"x": torch.randn(mb, 12, img, img, device=device, dtype=dtype)}
        else:
            t = 4
            batch = {
                "s2": torch.randn(mb, t, 10, img, img, device=device, dtype=dtype),
                "s2_doy": torch.randint(1, 366, (mb, t), device=device),
                "s2_valid": torch.ones(mb, t, dtype=torch.bool, device=device),
                "s1": torch.randn(mb, t, 2, img, img, device=device, dtype=dtype),
                "s1_doy": torch.randint(1, 366, (mb, t), device=device),
                "s1_valid": torch.ones(mb, t, dtype=torch.bool, device=device),
                "lonlat": torch.rand(mb, 2, device=device) * 100,
            }

        def step(engine=engine, batch=batch):
            loss = engine(batch)["loss"]
            engine.backward(loss)
            engine.step()
            return loss

        step()  # allocates optimizer states
        if gpu:
            torch.cuda.synchronize(device)
            state_mem = torch.cuda.memory_allocated(device)
        # fwd + bwd ≈ 3 × fwd
        flops = count_flops(lambda e=engine, b=batch: e.module(b)) * 3
        for _ in range(args.warmup):
            step()
        if gpu:
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        for _ in range(args.steps):
            step()
        if gpu:
            torch.cuda.synchronize(device)
        dt = (time.perf_counter() - t0) / args.steps
        peak = peak_flops(torch.cuda.get_device_name(device)) if gpu else None
        row = {
            "model": name,
            "zero_stage": stage,
            "micro_batch": mb,
            "img": img,
            "trainable_params": n_params,
            "all_params": n_all,
            "step_s": dt,
            "samples_per_s": mb / dt,
            "tflops_per_s": flops / dt / 1e12,
            "mfu": (flops / dt / peak) if peak else None,
        }
        if gpu:
            row["peak_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
            row["states_mem_gib"] = state_mem / 2**30
            row["estimate_16B_per_param_gib"] = 16 * n_params / 2**30 + 2 * (n_all - n_params) / 2**30
        print(json.dumps(row), flush=True)
        rows.append(row)
        engine = model = batch = None
        if gpu:
            torch.cuda.empty_cache()
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--engine", action="store_true", help="one-device DeepSpeed engine benchmark (no Ray)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--models", nargs="+", default=["skysense_1b:3:8", "spectralgpt_huge:3:32"],
                   help="name:zero_stage:micro_batch")
    p.add_argument("--img", type=int, default=128)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--rows", type=int, default=256, help="job mode: rows per synthetic shard (4 shards)")
    p.add_argument("--cache", action="store_true", help="job mode: cache preprocessed samples")
    p.add_argument("--cpus", type=int, default=None)
    p.add_argument("--out")
    a = p.parse_args(argv)
    return engine_mode(a) if a.engine else job_mode(a)


if __name__ == "__main__":
    main()
