"""The whole pipeline on embedded defaults, locally: archive, ingest, pretrain, export, convert, sweep.

    make demo                                   # = python -m jobs.demo
    python -m jobs.demo --out /tmp/demo --families spectralgpt
    python -m jobs.demo --set pretrain_steps=40 'tune_overrides=[num_samples=4]'

Stages, each one job's ``run(cfg)`` called in-process on one local Ray (the same functions
``python -m jobs.<name>`` and ``ray job submit`` run):

1. ``archive``: a synthetic Sentinel-2/Sentinel-1 archive with its land-cover truth (``pipeline.synthetic``);
2. ``ingest``: the archive -> contract-v3 shards (``jobs.ingest``, ``configs/ingest/tiny.yaml``);
3. ``pretrain-<family>``: a tiny SpectralGPT and a tiny SkySense on those shards (``jobs.pretrain``);
4. ``export-<family>``: each encoder to safetensors (``jobs.export``);
5. ``convert``: the synthetic benchmark from the archive's truth (``jobs.convert``, benchmark ``synthetic``);
6. ``tune-<family>``: a sweep (``jobs.tune``, ``configs/tune/demo.yaml``) of each pretrained encoder, the
   first family's sweep also of a random-init baseline (``--encoder random``).

Everything goes under ``--out`` (default ``demo-out/``): ``archive/``, ``ingest/``, ``runs/<run>/`` (the
pretraining runs: checkpoints, plots, ``export/``), ``bench/synthetic/``, ``sweeps/<family>/`` (the sweeps'
``summary.md``, ``synthetic/results.md``, ``results.csv``, ``trials.png``), and at the top ``results.md``
(every encoder's row, the table printed at the end), ``timings.md`` (seconds per stage) and
``commands.sh`` (each stage as its ``python -m jobs.<name>`` command: the same command runs under
``ray job submit``). Running the demo again reuses what is there: the archive and the exported encoders
are kept, the ingest and the conversion find their shards done, a sweep resumes (``Tuner.restore``).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import shlex
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, NamedTuple

from pydantic import Field, field_validator, model_validator

from jobs import cli
from pipeline.config import Strict

REPO = Path(__file__).resolve().parents[1]
log = logging.getLogger("skyray.jobs.demo")

Family = Literal["spectralgpt", "skysense"]
#: each family's tiny presets (pretraining; fine-tuning, which the sweep's trials start from)
PRETRAIN_CONFIG = {"spectralgpt": "configs/pretrain/spectralgpt_tiny.yaml",
                   "skysense": "configs/pretrain/skysense_tiny.yaml"}
FINETUNE_CONFIG = {"spectralgpt": "configs/finetune/spectralgpt_tiny.yaml",
                   "skysense": "configs/finetune/skysense_tiny.yaml"}
BENCHMARK = "synthetic"
INGEST_CONFIG = "configs/ingest/tiny.yaml"
CONVERT_CONFIG = f"configs/convert/{BENCHMARK}.yaml"
COMMANDS_HEADER = """\
# Each stage of the demo as its own job, from the repository root: run a line as it is (local Ray), or
# after `ray job submit --address <head> --working-dir . --runtime-env cluster/runtime_env.yaml --`
# (README, "Cluster") with paths every node sees (s3:// or a shared mount).
"""


class DemoConfig(Strict):
    """The demo's sizes: the smallest that still run every stage for real, on 2 CPUs in minutes."""

    #: the run folder: every stage's output and the results table
    out: str = "demo-out"
    #: synthetic archive: Sentinel-2 / Sentinel-1 scenes of its one tile, tile side in 10 m pixels
    scenes: int = Field(default=2, ge=1)
    s1_scenes: int = Field(default=1, ge=0)
    size_px: int = Field(default=516, ge=12, multiple_of=6)
    seed: int = 0
    #: the encoders pretrained and swept, one per family
    families: list[Family] = Field(default_factory=lambda: ["spectralgpt", "skysense"], min_length=1)
    #: pretraining: optimizer steps (one 32 px stage) and batch size of each family
    pretrain_steps: int = Field(default=10, ge=1)
    pretrain_batch: int = Field(default=16, ge=1)
    #: ``--set`` overrides of the pretraining presets (both families)
    pretrain_overrides: list[str] = Field(default_factory=list)
    #: ``--set`` overrides of ``configs/convert/synthetic.yaml`` (chips per class: the benchmark's size)
    convert_overrides: list[str] = Field(default_factory=lambda: ["options.per_class=24"])
    #: the sweep preset and ``--set`` overrides of it
    tune_config: str = "configs/tune/demo.yaml"
    tune_overrides: list[str] = Field(default_factory=list)
    #: sweep a random-init encoder of the first family too (the baseline row)
    baseline: bool = True

    @field_validator("families", mode="before")
    @classmethod
    def _split(cls, v: Any) -> Any:
        return [p.strip() for p in v.split(",") if p.strip()] if isinstance(v, str) else v

    @model_validator(mode="after")
    def _check(self) -> DemoConfig:
        if len(set(self.families)) != len(self.families):
            raise ValueError(f"families lists a family twice: {self.families}")
        return self


class StageTime(NamedTuple):
    """One stage of a demo run: its name, wall seconds, what it wrote and whether it was already there."""

    stage: str
    seconds: float
    output: str
    reused: bool


class Demo:
    """The run folder's layout, the stages' timings and the equivalent commands."""

    def __init__(self, cfg: DemoConfig) -> None:
        self.cfg = cfg
        self.out = Path(cfg.out).resolve()
        self.archive = self.out / "archive"
        self.ingest = self.out / "ingest"
        self.runs = self.out / "runs"
        self.bench = self.out / "bench" / BENCHMARK
        self.sweeps = self.out / "sweeps"
        self.times: list[StageTime] = []
        self.commands: list[str] = []

    def stage(self, name: str, output: Path | str, fn: Callable[[], Any], reused: bool = False) -> Any:
        t0 = time.perf_counter()
        print(f"\n=== {name} ===", flush=True)
        result = fn()
        self.times.append(StageTime(name, time.perf_counter() - t0, str(output), reused))
        return result

    def command(self, module: str, *args: str, overrides: list[str] = ()) -> None:
        """Record ``python -m <module> ...`` (paths relative to the working directory where they are
        under it, so the line runs from the repository root)."""
        line = ["python", "-m", module, *(_rel(a) for a in args)]
        if overrides:
            line += ["--set", *overrides]
        self.commands.append(shlex.join(line))


def _rel(arg: str) -> str:
    """``arg`` with every absolute path under the working directory made relative to it."""
    cwd = str(Path.cwd()) + "/"
    return arg.replace(cwd, "")


def _pretrain_fields(demo: Demo) -> dict[str, Any]:
    return {"data.path": str(demo.ingest), "storage": str(demo.runs)}


def _pretrain_overrides(cfg: DemoConfig) -> list[str]:
    """The tiny preset shortened to one 32 px stage; the export is its own stage."""
    return [f"stages=[{{img_size: 32, steps: {cfg.pretrain_steps}, batch_size: {cfg.pretrain_batch}}}]",
            f"checkpoint.every_steps={cfg.pretrain_steps}", "checkpoint.keep=1",
            f"log.every_steps={max(1, cfg.pretrain_steps // 2)}", "export=false", *cfg.pretrain_overrides]


def check(cfg: DemoConfig) -> dict[Family, Any]:
    """Every stage's config validated before any work (``ConfigError`` naming the field): the
    pretraining configs (returned, by family), the benchmark's options, the sweep preset with its
    overrides and each family's fine-tuning config under it."""
    from jobs import pretrain as pt
    from jobs.convert import ConvertConfig, validate_options
    from jobs.finetune import FinetuneConfig
    from jobs.sweep import SweepConfig
    from pipeline.convert import get

    demo = Demo(cfg)
    pcfgs = {f: cli.load_config(pt.PretrainConfig, REPO / PRETRAIN_CONFIG[f], _pretrain_overrides(cfg),
                                _pretrain_fields(demo)) for f in cfg.families}
    ccfg = cli.load_config(ConvertConfig, REPO / CONVERT_CONFIG, cfg.convert_overrides,
                           {"source": str(demo.archive), "output": str(demo.bench)})
    validate_options(get(ccfg.benchmark), ccfg.options)
    tune_config = _repo_path(cfg.tune_config)
    if not tune_config.is_file():
        raise cli.ConfigError(f"tune_config: file not found: {cfg.tune_config}")
    tcfg = cli.load_config(SweepConfig, tune_config, cfg.tune_overrides)
    for f in cfg.families:
        try:  # the trials' config: the family's preset with the sweep's ``finetune`` on top (as jobs.tune)
            ft = cli.load_config(FinetuneConfig, REPO / FINETUNE_CONFIG[f], fields=tcfg.finetune)
        except cli.ConfigError as e:
            raise cli.ConfigError(f"tune_config {cfg.tune_config} with {FINETUNE_CONFIG[f]}: {e}") from None
        if tcfg.scheduler.kind == "asha" and tcfg.scheduler.grace_period >= ft.total_steps:
            raise cli.ConfigError(f"tune_config: scheduler.grace_period {tcfg.scheduler.grace_period} "
                                  f"must be below the trials' {ft.total_steps} steps")
    return pcfgs


def _repo_path(p: str) -> Path:
    return Path(p) if Path(p).is_file() else REPO / p


def results_rows(sweeps: dict[Family, Path], models: dict[str, str]) -> list[dict[str, Any]]:
    """Every encoder's row from the sweeps' ``results.csv`` (one sweep per family)."""
    rows = []
    for family, root in sweeps.items():
        path = root / BENCHMARK / "results.csv"
        rows += [{**r, "model": models[family], "sweep": str(root)}
                 for r in csv.DictReader(io.StringIO(path.read_text()))]
    return rows


def results_md(rows: list[dict[str, Any]], metric: str = "oa") -> str:
    """The table: rows = encoders, the benchmark's test metric (× 100) of each encoder's best trial."""
    def pct(v: str) -> str:
        return f"{100 * float(v):.2f}" if v not in ("", None) else "–"

    header = ["encoder", "model", f"{BENCHMARK} test {metric.upper()}", "best val", "trials", "completed",
              "trial-steps", "best lr"]
    lines = [f"# Demo: test metrics (× 100) of each encoder's best trial on the {BENCHMARK} benchmark", "",
             "| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for r in rows:
        lr = f"{float(r['lr']):.3g}" if r.get("lr") else "–"
        cells = [r["encoder"], r["model"], pct(r[f"test_{metric}"]), pct(r["best_val_score"]), r["trials"],
                 r["completed"], r["trial_steps"], lr]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def timings_md(times: list[StageTime], total: float) -> str:
    """Seconds per stage and the demo's total (which adds the config checks and the table)."""
    lines = ["| stage | seconds | reused | output |", "| --- | --- | --- | --- |"]
    lines += [f"| {t.stage} | {t.seconds:.1f} | {'yes' if t.reused else ''} | {_rel(t.output)} |"
              for t in times]
    lines.append(f"| **total** | **{total:.1f}** | | |")
    return "\n".join(lines) + "\n"


def run(cfg: DemoConfig) -> dict:
    """Run (or resume) every stage; returns ``{"out", "results", "rows", "timings", "plots", "stages"}``."""
    from jobs import convert, export, ingest, tune
    from jobs import pretrain as pt
    from jobs.convert import ConvertConfig
    from jobs.export import ExportConfig
    from jobs.sweep import SweepConfig
    from pipeline import synthetic
    from pipeline.ingest import format_summary

    t_start = time.perf_counter()
    pcfgs = check(cfg)  # every config error before any work
    demo = Demo(cfg)
    demo.out.mkdir(parents=True, exist_ok=True)
    stages: dict[str, Any] = {}

    items = demo.archive / "items.json"
    have = items.is_file()  # written last: the archive is whole
    demo.stage("archive", demo.archive, lambda: None if have else synthetic.make_archive(
        demo.archive, scenes=cfg.scenes, s1_scenes=cfg.s1_scenes, seed=cfg.seed, size_px=cfg.size_px), have)
    demo.command("pipeline.synthetic", "--output", str(demo.archive), "--scenes", str(cfg.scenes),
                 "--s1-scenes", str(cfg.s1_scenes), "--size-px", str(cfg.size_px), "--seed", str(cfg.seed))

    # the stage lines and tables are the demo's output: Ray Data's progress bars (redrawn by every task
    # of every stage) stay off unless asked for; the local Ray's workers inherit the variable
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    demo.stage("ray start", "local Ray", cli.init_ray)

    icfg = cli.load_config(ingest.IngestJobConfig, REPO / INGEST_CONFIG,
                           fields={"items": str(items), "output": str(demo.ingest)})
    have = (demo.ingest / "manifest.json").is_file()
    stages["ingest"] = demo.stage("ingest", demo.ingest, lambda: ingest.run(icfg), have)
    print(format_summary(stages["ingest"]), flush=True)
    demo.command("jobs.ingest", "--items", str(items), "--output", str(demo.ingest),
                 "--config", INGEST_CONFIG)

    weights: dict[Family, str] = {}
    models: dict[Family, str] = {}  # family -> model preset
    plots: list[str] = []
    for family, pcfg in pcfgs.items():
        name = pt.default_name(pcfg)
        pcfg = pcfg.model_copy(update={"name": name})
        run_dir = demo.runs / name
        exported = run_dir / "export" / f"{pcfg.model.name}.safetensors"
        # the run's name is its config's digest, so an export under it is the finished run's
        have = exported.is_file()
        res = demo.stage(f"pretrain-{family}", run_dir, lambda c=pcfg, h=have: None if h else pt.run(c), have)
        if res and res.get("history"):
            hist = res["history"]
            print(f"pretrain {pcfg.model.name}: {len(hist)} logged steps, loss {hist[0]['loss']:.4f} -> "
                  f"{hist[-1]['loss']:.4f}", flush=True)
        stages[f"pretrain-{family}"] = res
        demo.command("jobs.pretrain", "--config", PRETRAIN_CONFIG[family], "--data", str(demo.ingest),
                     "--storage", str(demo.runs), "--name", name, overrides=_pretrain_overrides(cfg))
        ecfg = ExportConfig(checkpoint=str(run_dir), output=str(run_dir / "export"))
        stages[f"export-{family}"] = demo.stage(f"export-{family}", exported,
                                                lambda c=ecfg, h=have: None if h else export.run(c), have)
        demo.command("jobs.export", "--checkpoint", str(run_dir), "--output", str(run_dir / "export"))
        weights[family], models[family] = str(exported), pcfg.model.name
        plots += sorted(str(p) for p in (run_dir / "plots").glob("*.png"))

    ccfg = cli.load_config(ConvertConfig, REPO / CONVERT_CONFIG, cfg.convert_overrides,
                           {"source": str(demo.archive), "output": str(demo.bench)})
    have = (demo.bench / "manifest.json").is_file()
    stages["convert"] = demo.stage("convert", demo.bench, lambda: convert.run(ccfg), have)
    print(convert.format_summary(stages["convert"]), flush=True)
    demo.command("jobs.convert", "--config", CONVERT_CONFIG, "--source", str(demo.archive),
                 "--output", str(demo.bench), overrides=cfg.convert_overrides)

    sweeps: dict[Family, Path] = {}
    for i, family in enumerate(cfg.families):
        encoders = {family: weights[family]}
        if cfg.baseline and i == 0:  # the random-init encoder of the same model, swept the same way
            encoders = {"random": "random", **encoders}
        root = demo.sweeps / family
        fields = {"data": f"{BENCHMARK}={demo.bench}",
                  "encoders": ",".join(f"{k}={v}" for k, v in encoders.items()),
                  "storage": str(demo.sweeps), "name": family,
                  "finetune_config": str(REPO / FINETUNE_CONFIG[family])}
        tcfg = cli.load_config(SweepConfig, _repo_path(cfg.tune_config), cfg.tune_overrides, fields)
        have = (root / "summary.md").is_file()
        stages[f"tune-{family}"] = demo.stage(f"tune-{family}", root, lambda c=tcfg: tune.run(c), have)
        demo.command("jobs.tune", "--config", cfg.tune_config, "--data", fields["data"], "--encoder",
                     fields["encoders"], "--storage", str(demo.sweeps), "--name", family,
                     overrides=[f"finetune_config={FINETUNE_CONFIG[family]}", *cfg.tune_overrides])
        sweeps[family] = root
        plots.append(str(root / BENCHMARK / "trials.png"))

    rows = results_rows(sweeps, models)
    table = results_md(rows)
    timings = timings_md(demo.times, time.perf_counter() - t_start)
    (demo.out / "results.md").write_text(table)
    (demo.out / "timings.md").write_text(timings)
    (demo.out / "commands.sh").write_text(COMMANDS_HEADER + "\n".join(demo.commands) + "\n")

    print("\n" + table, flush=True)
    print("seconds per stage\n" + timings, flush=True)
    print("plots:\n" + "\n".join(f"  {p}" for p in plots), flush=True)
    print(f"results: {demo.out / 'results.md'} (each sweep's own: <sweep>/summary.md, <sweep>/{BENCHMARK}/"
          f"results.md under {demo.sweeps})", flush=True)
    print(f"the same stages as job commands: {demo.out / 'commands.sh'}", flush=True)
    return {"out": str(demo.out), "results": str(demo.out / "results.md"), "rows": rows,
            "timings": [t._asdict() for t in demo.times], "plots": plots,
            "stages": json.loads(json.dumps(stages, default=str))}


def main(argv: list[str] | None = None) -> int:
    return cli.run_job(DemoConfig, run, argv, show=lambda r: f"demo finished: {r['results']}", aliases={
        "--out": cli.Alias("out", "the run folder (default: demo-out)"),
        "--scenes": cli.Alias("scenes", "Sentinel-2 scenes in the synthetic archive"),
        "--s1-scenes": cli.Alias("s1_scenes", "Sentinel-1 scenes in the synthetic archive"),
        "--size-px": cli.Alias("size_px", "scene size in 10 m pixels (multiple of 6)"),
        "--seed": cli.Alias("seed", "seed of the synthetic archive"),
        "--families": cli.Alias("families", "encoders to pretrain and sweep: spectralgpt,skysense"),
        "--pretrain-steps": cli.Alias("pretrain_steps", "pretraining steps of each encoder"),
        "--no-baseline": cli.Alias("baseline", "skip the random-init baseline", const=False),
    })


if __name__ == "__main__":
    raise SystemExit(main())
