"""Pretraining throughput: samples/s and data-wait fraction of the whole job, and one-device engine figures.

    python -m bench.pretrain          # CPU: tiny presets through jobs.pretrain (Ray Train, 2 workers)
    python -m bench.pretrain --engine --device cuda --models skysense_1b:3:8 spectralgpt_huge:3:32
    python -m bench.pretrain --engine --device cpu --models spectralgpt_tiny:3:8   # same path on CPU
    python -m bench.pretrain --zero3 --steps 3 --offload nvme --malloc mmap   # skysense_1b, 2 CPU workers

Job mode runs ``jobs.pretrain.run`` on synthetic shards (contract v2) (streaming from Parquet, no
cache) and prints the median samples/s and data-wait fraction over the logged windows after the
first (warm-up). Engine mode builds one DeepSpeed engine in this process (world size 1, no Ray,
random inputs of the model's native shape) and prints samples/s, MFU (FLOPs counted by torch's
FlopCounterMode on the model itself), peak memory, and the measured parameter + optimizer memory
against the ``16 B × params / world size`` estimate of mixed-precision Adam (fp32 master, m, v;
bf16 params and grads).

ZeRO-3 mode runs a preset's pretraining config through ``jobs.pretrain``'s loop (Ray Train, gloo,
``zero_init: true``: built partitioned, initialised one submodule at a time, activation
checkpointing on) for a few steps at a small input (``--img`` px, ``--slots`` dates, ``--pixel-samples``)
and reports per rank: the ZeRO-3 partitions of the trainable parameters, their gradients and the
optimizer's fp32 master weights + Adam moments, wherever they live (RAM or the NVMe swap
files), against ``16 B × trainable params / world size``; the frozen EMA teacher's partition
(extra: its bf16 partition and, from the first EMA step, the low bits of its fp32 value, 2 + 2 B
per parameter); the peak RSS after the engine is built, overall and per phase (build,
``deepspeed.initialize``, forward, backward, optimizer, EMA of each step; printed as they end, so
an OOM-killed run still tells what filled memory); and seconds per step. Buffers are host-sized
(``deepspeed.bucket_elements``, ``--sub-group-size``); ``--offload nvme`` puts the optimizer
states in swap files on local disk; ``--malloc mmap`` sets ``deepspeed.host_mmap_threshold``.
No checkpoint is written (one of ``skysense_1b`` is ~20 GB).
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


def _bytes(ts) -> int:
    return sum(t.numel() * t.element_size() for t in ts if t is not None)


def zero3_memory(engine, nvme_dir: str | None) -> dict:
    """This rank's ZeRO-3 state in bytes, by kind (``DeepSpeedZeroOptimizer_Stage3`` attributes)."""
    module, opt = engine.module, engine.optimizer
    trainable = [p for p in module.parameters() if p.requires_grad]
    frozen = [p for p in module.parameters() if not p.requires_grad]
    grads = getattr(opt, "grad_partitions_flat_buffer", None)
    if grads is None:  # offloaded optimizer: the fp32 gradient partitions of the flat groups
        grads = [t.grad for t in getattr(opt, "fp32_partitioned_groups_flat", []) if t.grad is not None]
    else:
        grads = [grads]
    states = [v for st in opt.optimizer.state.values() for v in st.values() if torch_is_tensor(v) and v.dim()]
    swap = swap_params = 0  # DeepSpeed's swap files: <nvme_path>/zero_stage_3/<kind>/rank<r>/
    if nvme_dir and os.path.isdir(nvme_dir):
        files = [os.path.join(d, f) for d, _, fs in os.walk(nvme_dir) for f in fs]
        mine = [f for f in files if f"{os.sep}rank{engine.global_rank}{os.sep}" in f]
        swap = sum(os.path.getsize(f) for f in mine if f"{os.sep}optimizer{os.sep}" in f)
        swap_params = sum(os.path.getsize(f) for f in mine if f"{os.sep}optimizer{os.sep}" not in f)

    def partition_bytes(ps) -> int:  # from the partition's size (its data may be swapped out)
        return sum(p.partition_numel() * p.element_size() for p in ps)

    return {
        "param_bytes": partition_bytes(trainable),
        "param_in_ram_bytes": _bytes(p.ds_tensor for p in trainable),
        "nvme_param_swap_bytes": swap_params,
        "grad_bytes": _bytes(grads),
        "master_bytes": _bytes(getattr(opt, "fp32_partitioned_groups_flat", [])),
        "optim_state_bytes": _bytes(states),
        "nvme_swap_bytes": swap,
        "frozen_param_bytes": partition_bytes(frozen),
        "frozen_ema_bytes": _bytes(getattr(p, a, None) for p in frozen for a in EMA_ATTRS),
        "n_trainable": sum(p.ds_numel for p in trainable),
        "n_frozen": sum(p.ds_numel for p in frozen),
    }


#: what ``models.base.ema_`` keeps next to a low-precision teacher parameter
EMA_ATTRS = ("_ema_lo", "_ema_lo_full", "_ema_fp32", "_ema_fp32_full")


def torch_is_tensor(v) -> bool:
    import torch

    return isinstance(v, torch.Tensor)


def _peak_rss_gib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _rss_gib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30


class PhaseRSS:
    """Peak RSS of this process per phase of the run, sampled every ``every`` s by a thread and
    printed at each phase change (the lines survive an OOM kill in the worker's log)."""

    def __init__(self, rank: int, every: float = 0.5) -> None:
        import threading

        self.rank, self.every, self.phase, self.peaks = rank, every, "start", {}
        self.lock = threading.Lock()
        threading.Thread(target=self._run, daemon=True).start()

    def _sample(self) -> None:
        with self.lock:
            self.peaks[self.phase] = max(self.peaks.get(self.phase, 0.0), _rss_gib())

    def _run(self) -> None:
        while True:
            self._sample()
            time.sleep(self.every)

    def enter(self, phase: str) -> None:
        self._sample()
        with self.lock:
            old, self.phase = self.phase, phase
        print(f"[rss] rank {self.rank} {old}: peak {self.peaks.get(old, 0.0):.2f} GiB; now {_rss_gib():.2f}"
              f" GiB entering {phase}", flush=True)
        self._sample()


def _malloc_trim() -> None:
    """Give the heap's free pages back to the OS (glibc keeps freed mid-heap chunks resident)."""
    import ctypes

    ctypes.CDLL("libc.so.6").malloc_trim(0)


def _bench_loop_cls(figures: str, trim: bool = False):
    """``PretrainLoop`` + per-rank memory and step times, gathered by rank 0 into ``figures`` (a JSON
    file) at the last step."""
    from jobs.pretrain import PretrainLoop

    class Zero3BenchLoop(PretrainLoop):
        def build_module(self):
            import ray.train

            self.rss = PhaseRSS(ray.train.get_context().get_world_rank())
            self.rss.enter("build")
            return super().build_module()

        def param_groups(self, module):
            self.rss.enter("deepspeed.initialize")
            return super().param_groups(module)

        def setup(self) -> None:
            t0 = time.perf_counter()
            super().setup()
            self.rss.enter("setup done")
            if trim:
                _malloc_trim()
                self.rss.enter("after malloc_trim")
            self.bench = {"setup_s": time.perf_counter() - t0, "peak_rss_setup_gib": _peak_rss_gib(),
                          "rss_setup_gib": _rss_gib(), "step_s": []}
            engine, rss = self.engine, self.rss
            backward, step = engine.backward, engine.step

            def timed_backward(*a, **k):
                rss.enter(f"step {self.step + 1} backward")
                return backward(*a, **k)

            def timed_step(*a, **k):
                rss.enter(f"step {self.step + 1} optimizer")
                return step(*a, **k)

            engine.backward, engine.step = timed_backward, timed_step

        def report_due(self, step: int) -> tuple[bool, bool]:
            return super().report_due(step)[0], False  # no checkpoint: a 1 B one is ~20 GB to write

        def forward(self, module, batch):
            self.rss.enter(f"step {self.step + 1} forward")
            return super().forward(module, batch)

        def after_step(self, step: int) -> None:
            self.rss.enter(f"step {step + 1} EMA")
            super().after_step(step)
            if trim:
                _malloc_trim()
            self.rss.enter(f"step {step + 1} done")

        def train_step(self, micro, si) -> None:
            self.t_step = time.perf_counter()
            super().train_step(micro, si)
            if self.step < self.total:  # the last step's time is taken in log(), before the gather
                self.bench["step_s"].append(time.perf_counter() - self.t_step)

        def log(self, si, lr, loss, parts, extra=None):
            import torch.distributed as dist

            if self.step == self.total:
                self.bench["step_s"].append(time.perf_counter() - self.t_step)
            metrics = super().log(si, lr, loss, parts, extra)
            if self.step == self.total:  # the last step: everything is allocated
                nvme = (self.ds_config["zero_optimization"].get("offload_optimizer") or {}).get("nvme_path")
                self.rss.enter("report")
                mine = {**self.bench, **zero3_memory(self.engine, nvme), "rank": self.rank,
                        "peak_rss_gib": _peak_rss_gib(), "rss_gib": _rss_gib(), "rss_phases": self.rss.peaks}
                ranks = [None] * self.world
                dist.all_gather_object(ranks, mine)
                if self.rank == 0:
                    Path(figures).write_text(json.dumps(ranks))
            return metrics

    return Zero3BenchLoop


def zero3_mode(args) -> list[dict]:
    """``jobs.pretrain`` on 2 CPU workers under ZeRO-3 (see the module docstring)."""
    from jobs import cli
    from jobs.pretrain import PretrainConfig
    from jobs.train.data import build_dataset, read_manifest
    from jobs.train.loop import fit
    from pipeline.synthetic.samples import make_shards

    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    out = Path(args.out or tempfile.mkdtemp(prefix="bench-zero3-"))
    data = make_shards(out / "data", rows=args.rows, shards=2, tile_px=args.img, slots=args.slots)
    workers, batch = args.workers, args.workers * args.micro_batch
    # DeepSpeed's defaults size its buffers for GPUs with room: a 5e8-element reduce bucket, and up to
    # 1e9 gathered parameters kept live or kept for reuse (the whole model, student and teacher, under
    # activation checkpointing); deepspeed.bucket_elements bounds them all.
    override: dict = {"zero_optimization": {"stage3_gather_16bit_weights_on_model_save": False}}
    nvme = None
    if args.offload in ("nvme", "nvme-all"):
        nvme = str(out / "nvme")
        os.makedirs(nvme, exist_ok=True)
    if args.offload == "nvme-all":  # the bf16 parameter partitions too (student and teacher)
        override["zero_optimization"]["offload_param"] = {
            "buffer_count": args.param_buffers, "buffer_size": args.param_buffer, "max_in_cpu": 0}
        override["zero_optimization"]["stage3_param_persistence_threshold"] = 0
    preset_cfg = REPO / "configs" / "pretrain" / f"{args.preset}.yaml"
    model_over = {"img_size": args.img, "pixel_samples": args.pixel_samples, "proj_dim": args.proj_dim,
                  "num_clusters": 16}
    sets = [
        f"data.path={data}", f"storage={out / 'runs'}", f"name=zero3-{args.model or args.preset}",
        *([f"model.name={args.model}"] if args.model else []),
        f"stages=[{{img_size: {args.img}, steps: {args.steps}, batch_size: {batch}}}]",
        f"model.overrides={json.dumps(model_over)}",
        f"scaling.num_workers={workers}", "scaling.use_gpu=false",
        f"scaling.cpus_per_worker={args.cpus_per_worker}",
        "deepspeed.zero_stage=3", "deepspeed.zero_init=true", "deepspeed.activation_checkpointing=true",
        f"deepspeed.precision={args.precision}",
        f"deepspeed.offload_optimizer={str(args.offload != 'none').lower()}",
        f"deepspeed.offload_params={str(args.offload == 'nvme-all').lower()}",
        *(["deepspeed.offload_device=nvme", f"deepspeed.nvme_path={nvme}"] if nvme else []),
        f"deepspeed.bucket_elements={args.sub_group_size}",
        f"deepspeed.override={json.dumps(override)}",
        "log.every_steps=1", "checkpoint.every_steps=100000", "checkpoint.keep=1", "log.plots=false",
        "export=false", "log.tensorboard=false", "data.shuffle_buffer=0", "data.prefetch_batches=1",
        "max_failures=0",
    ]
    if args.malloc == "mmap":
        sets.append(f"deepspeed.host_mmap_threshold={2**20}")
    cfg = cli.load_config(PretrainConfig, preset_cfg, sets)
    cli.init_ray(num_cpus=args.cpus) if args.cpus else cli.init_ray()
    manifest = read_manifest(cfg.data.path, cfg.data.storage)
    t0 = time.perf_counter()
    figures = out / "figures.json"
    loop_cls = _bench_loop_cls(str(figures), trim=args.malloc == "trim")
    fit(cfg, loop_cls, {"train": build_dataset(cfg, manifest)}, cli.config_json(cfg))
    wall = time.perf_counter() - t0
    if not figures.exists():
        raise RuntimeError(f"the run wrote no figures to {figures}")
    ranks = json.loads(figures.read_text())
    rows = []
    for r in ranks:
        states = r["param_bytes"] + r["grad_bytes"] + r["master_bytes"] + r["optim_state_bytes"]
        on_disk = r["nvme_swap_bytes"]
        estimate = 16 * r["n_trainable"] / workers
        row = {
            "preset": args.preset, "model": cfg.model.name, "rank": r["rank"], "world": workers,
            "precision": args.precision,
            "offload": args.offload, "img": args.img, "slots": args.slots, "steps": args.steps,
            "n_trainable": r["n_trainable"], "n_frozen_teacher": r["n_frozen"],
            "param_gib": r["param_bytes"] / 2**30, "grad_gib": r["grad_bytes"] / 2**30,
            "master_gib": r["master_bytes"] / 2**30, "optim_state_gib": r["optim_state_bytes"] / 2**30,
            "nvme_swap_gib": on_disk / 2**30, "nvme_param_swap_gib": r["nvme_param_swap_bytes"] / 2**30,
            "param_in_ram_gib": r["param_in_ram_bytes"] / 2**30,
            "teacher_ema_gib": r["frozen_ema_bytes"] / 2**30,
            "states_gib": (states + on_disk) / 2**30,
            "estimate_16B_gib": estimate / 2**30,
            "states_vs_estimate": (states + on_disk) / estimate,
            "teacher_gib": r["frozen_param_bytes"] / 2**30,
            "peak_rss_setup_gib": r["peak_rss_setup_gib"], "peak_rss_gib": r["peak_rss_gib"],
            "setup_s": r["setup_s"], "malloc": args.malloc, "rss_phases": r["rss_phases"],
            "step_s": r["step_s"],
            "step_s_after_first": statistics.median(r["step_s"][1:]) if len(r["step_s"]) > 1 else None,
            "wall_s": wall,
        }
        print(json.dumps(row), flush=True)
        rows.append(row)
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
    z = p.add_argument_group("ZeRO-3 mode (--zero3)")
    z.add_argument("--zero3", action="store_true", help="a preset under ZeRO-3 through jobs.pretrain's loop")
    z.add_argument("--preset", default="skysense_1b", help="configs/pretrain/<preset>.yaml")
    z.add_argument("--model", help="another registered model with the preset's settings (a rehearsal)")
    z.add_argument("--workers", type=int, default=2)
    z.add_argument("--cpus-per-worker", type=float, default=0.5, help="leave Ray Data a CPU")
    z.add_argument("--micro-batch", type=int, default=1)
    z.add_argument("--slots", type=int, default=2, help="dates per sample in the synthetic shards")
    z.add_argument("--pixel-samples", type=int, default=64)
    z.add_argument("--proj-dim", type=int, default=256)
    z.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    z.add_argument("--offload", choices=["none", "nvme", "nvme-all"], default="none",
                   help="optimizer states to NVMe (nvme), and the parameters too (nvme-all)")
    z.add_argument("--param-buffer", type=int, default=30_000_000,
                   help="nvme-all: elements per parameter swap buffer (>= the largest parameter)")
    z.add_argument("--param-buffers", type=int, default=5, help="nvme-all: parameter swap buffers")
    z.add_argument("--malloc", choices=["default", "trim", "mmap"], default="default",
                   help="glibc heap: as is; malloc_trim after setup and every step; "
                        "deepspeed.host_mmap_threshold 1 MiB")
    z.add_argument("--sub-group-size", type=int, default=20_000_000,
                   help="ZeRO-3 optimizer sub-group, reduce/prefetch bucket, live parameters")
    a = p.parse_args(argv)
    if a.zero3:
        if a.rows == 256:
            a.rows = 16
        if a.img == 128:
            a.img = 32
        return zero3_mode(a)
    return engine_mode(a) if a.engine else job_mode(a)


if __name__ == "__main__":
    main()
