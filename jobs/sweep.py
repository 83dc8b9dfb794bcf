"""The pure half of ``jobs.tune``: the sweep config, its search space, resource sizing, and the
results (tables, learning curves, the cross-benchmark summary). No Ray session, no I/O beyond
writing the result files into a local directory, so every piece is tested on its own.

    space:                       # each knob: a fixed value or one of the four distributions
      lr: {loguniform: [1.0e-4, 3.0e-3]}
      weight_decay: {uniform: [0.0, 0.1]}
      layer_decay: {choice: [0.65, 0.75]}
      drop_path: 0.1
      batch_size: {choice: [16, 32]}
      mode: {grid: [linear_probe, finetune]}

A knob left unset keeps the fine-tuning config's value. ``grid`` values are crossed (each
combination runs ``num_samples`` times); the others are sampled once per trial.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from pipeline.config import StorageConfig, Strict

__all__ = [
    "ASHA_TRIALS_PER_SLOT", "FIELDS", "TASK_METRICS", "Choice", "EncoderResult", "Grid", "LogUniform",
    "SchedulerSection", "SearchSpace", "SweepConfig", "TrialRecord", "Uniform", "apply_params", "asha_note",
    "best_trial", "corner_values", "max_concurrent", "parse_pairs", "plot_trials", "results_csv",
    "results_md", "summary_md", "trial_resources",
]


# ---------------------------------------------------------------------------------------------
# search space
# ---------------------------------------------------------------------------------------------


class Choice(Strict):
    """Sampled uniformly from a list."""

    choice: list[Any] = Field(min_length=1)


class Grid(Strict):
    """Every value, crossed with the other grid knobs."""

    grid: list[Any] = Field(min_length=1)


class Uniform(Strict):
    uniform: tuple[float, float]

    @model_validator(mode="after")
    def _check(self) -> Uniform:
        lo, hi = self.uniform
        if not lo < hi:
            raise ValueError(f"uniform needs low < high, got {list(self.uniform)}")
        return self


class LogUniform(Strict):
    loguniform: tuple[float, float]

    @model_validator(mode="after")
    def _check(self) -> LogUniform:
        lo, hi = self.loguniform
        if not 0 < lo < hi:
            raise ValueError(f"loguniform needs 0 < low < high, got {list(self.loguniform)}")
        return self


Param = Choice | Grid | Uniform | LogUniform | float | int | str

#: search-space knob -> the fine-tuning config field it sets (``stages.*``: every stage)
FIELDS: dict[str, str] = {
    "lr": "optim.base_lr",
    "weight_decay": "optim.weight_decay",
    "layer_decay": "layer_decay",
    "drop_path": "drop_path",
    "batch_size": "stages.*.batch_size",
    "mode": "mode",
}


class SearchSpace(Strict):
    """What the sweep varies (unset: the fine-tuning config's value)."""

    lr: Param | None = None
    weight_decay: Param | None = None
    layer_decay: Param | None = None
    drop_path: Param | None = None
    batch_size: Param | None = None
    mode: Param | None = None

    def knobs(self) -> dict[str, Param]:
        return {k: v for k, v in ((k, getattr(self, k)) for k in FIELDS) if v is not None}


def corner_values(space: SearchSpace) -> dict[str, list[Any]]:
    """Per knob, the values that bound what a trial can get: every choice/grid value, both ends of
    a range, the fixed value. Checked against the fine-tuning config before any trial starts."""
    out: dict[str, list[Any]] = {}
    for k, p in space.knobs().items():
        if isinstance(p, Choice):
            out[k] = list(p.choice)
        elif isinstance(p, Grid):
            out[k] = list(p.grid)
        elif isinstance(p, Uniform):
            out[k] = list(p.uniform)
        elif isinstance(p, LogUniform):
            out[k] = list(p.loguniform)
        else:
            out[k] = [p]
    return out


def apply_params(base: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
    """The fine-tuning config dict ``base`` with the trial's ``params`` (knob -> value) set.

    >>> apply_params({"stages": [{"batch_size": 8}, {"batch_size": 8}]}, {"batch_size": 16, "lr": 1e-3})
    {'stages': [{'batch_size': 16}, {'batch_size': 16}], 'optim': {'base_lr': 0.001}}
    """
    import copy

    out = copy.deepcopy(dict(base))
    for knob, value in params.items():
        path = FIELDS[knob].split(".")
        if path[0] == "stages":
            for stage in out.get("stages", []):
                stage[path[-1]] = value
            continue
        node = out
        for p in path[:-1]:
            node = node.setdefault(p, {})
        node[path[-1]] = value
    return out


def to_tune_space(space: SearchSpace) -> dict[str, Any]:
    """Ray Tune's domains for the knobs (``tune.choice`` / ``grid_search`` / ``uniform`` /
    ``loguniform``; a fixed value stays as it is)."""
    from ray import tune

    out: dict[str, Any] = {}
    for k, p in space.knobs().items():
        if isinstance(p, Choice):
            out[k] = tune.choice(list(p.choice))
        elif isinstance(p, Grid):
            out[k] = tune.grid_search(list(p.grid))
        elif isinstance(p, Uniform):
            out[k] = tune.uniform(*p.uniform)
        elif isinstance(p, LogUniform):
            out[k] = tune.loguniform(*p.loguniform)
        else:
            out[k] = p
    return out


def grid_size(space: SearchSpace) -> int:
    """How many grid combinations (1 without grid knobs)."""
    return math.prod(len(p.grid) for p in space.knobs().values() if isinstance(p, Grid))


# ---------------------------------------------------------------------------------------------
# the sweep config
# ---------------------------------------------------------------------------------------------


def parse_pairs(value: Any, what: str, bare_label=None) -> dict[str, str]:
    """``"a=x,b=y"`` (the CLI form) or a mapping -> ``{"a": "x", "b": "y"}``; an entry without
    ``label=`` gets ``bare_label(entry)`` (``None``: not allowed)."""
    if isinstance(value, Mapping):
        return {str(k): str(v) for k, v in value.items()}
    if not isinstance(value, str):
        raise ValueError(f"{what} must be 'label=path[,label=path...]' or a mapping")
    out: dict[str, str] = {}
    for part in (p.strip() for p in value.split(",")):
        if not part:
            continue
        if "=" in part:
            label, path = (s.strip() for s in part.split("=", 1))
        elif bare_label is not None:
            label, path = bare_label(part), part
        else:
            raise ValueError(f"{what} entry {part!r} needs the form <name>=<path>")
        if not label or not path:
            raise ValueError(f"{what} entry {part!r} has an empty name or path")
        if label in out:
            raise ValueError(f"{what} names {label!r} twice")
        out[label] = path
    if not out:
        raise ValueError(f"{what} is empty")
    return out


def encoder_label(weights: str) -> str:
    """``random`` -> ``random``; a weights file -> its name without the suffix."""
    if weights == "random":
        return "random"
    base = weights.rstrip("/").rsplit("/", 1)[-1]
    return base.split(".", 1)[0] or base


class SchedulerSection(Strict):
    """ASHA on the global step (``step``), metric ``val_score`` (higher is better); ``fifo`` runs
    every trial to its full budget (the reference ASHA is measured against)."""

    kind: Literal["asha", "fifo"] = "asha"
    #: steps before the first rung: no trial is stopped earlier
    grace_period: int = Field(default=20, ge=1)
    reduction_factor: float = Field(default=3.0, gt=1)
    brackets: int = Field(default=1, ge=1)


class SweepConfig(Strict):
    """Everything a sweep needs; ``<storage>/<name>/<benchmark>/`` receives each benchmark's results.

    ``data``: benchmark -> shards root; ``encoders``: label -> weights (``random``, our safetensors
    export, an official SpectralGPT ``.pth``). Every (benchmark, encoder) pair is one Ray Tune
    experiment of ``num_samples × grid`` trials, each a Ray Train fine-tuning run."""

    name: str | None = None
    storage: str | None = None
    data: dict[str, str] = Field(default_factory=dict)
    encoders: dict[str, str] = Field(default_factory=lambda: {"random": "random"})
    #: the fine-tuning preset (``configs/finetune/*.yaml``) every trial starts from ...
    finetune_config: str | None = None
    #: ... with these fields on top (a nested mapping, as in that preset)
    finetune: dict[str, Any] = Field(default_factory=dict)
    space: SearchSpace = Field(default_factory=SearchSpace)
    #: trials per grid combination (per benchmark and encoder)
    num_samples: int = Field(default=4, ge=1)
    #: seeds the search (random sampling of the space)
    seed: int = 0
    scheduler: SchedulerSection = Field(default_factory=SchedulerSection)
    #: trials in flight at once; ``auto``: as many as the cluster's CPUs and GPUs hold (see
    #: ``max_concurrent``)
    max_concurrent_trials: Annotated[int, Field(ge=1)] | Literal["auto"] = "auto"
    #: CPUs each trial leaves for its Ray Data preprocessing, counted by ``auto``
    data_cpus_per_trial: float = Field(default=0.5, ge=0)
    #: what each trial's driver (the Tune function that runs the Ray Train controller) asks for:
    #: 0 CPUs so a ``num-cpus: 0`` head can host it and it never takes a CPU a training worker
    #: needs; add a custom resource (e.g. ``trial_driver: 0.01``, declared on the head or a
    #: non-preemptible node) to pin drivers there
    driver_resources: dict[str, float] = Field(default_factory=lambda: {"CPU": 0.0})
    #: Tune-level retries of a trial whose driver failed. Tune retries any exception, deterministic
    #: ones too (a bad config, a non-finite loss), so keep it small; worker deaths are retried
    #: inside the trial by Ray Train (``finetune.max_failures``).
    max_failures: int = Field(default=1, ge=0)
    storage_options: StorageConfig = Field(default_factory=StorageConfig)

    @field_validator("data", mode="before")
    @classmethod
    def _data(cls, v: Any) -> dict[str, str]:
        return parse_pairs(v, "data") if v != {} else {}

    @field_validator("encoders", mode="before")
    @classmethod
    def _encoders(cls, v: Any) -> dict[str, str]:
        return parse_pairs(v, "encoders", bare_label=encoder_label)

    @field_validator("driver_resources")
    @classmethod
    def _driver(cls, v: dict[str, float]) -> dict[str, float]:
        bad = {k: x for k, x in v.items() if x < 0}
        if bad:
            raise ValueError(f"resources must be >= 0, got {bad}")
        if v.get("GPU", 0) > 0:
            raise ValueError("a trial driver needs no GPU (the Ray Train workers ask for them)")
        return v

    @model_validator(mode="after")
    def _check(self) -> SweepConfig:
        for label in (*self.data, *self.encoders):
            if not label.replace("_", "").replace("-", "").isalnum():
                raise ValueError(f"name {label!r} must be letters, digits, '-' or '_' (it names a directory)")
        if self.name is not None and (not self.name or "/" in self.name or ".." in self.name):
            raise ValueError(f"name {self.name!r} must be a plain directory name")
        return self


# ---------------------------------------------------------------------------------------------
# resources
# ---------------------------------------------------------------------------------------------


def trial_resources(num_workers: int, cpus_per_worker: float, use_gpu: bool,
                    driver: Mapping[str, float], data_cpus: float) -> dict[str, float]:
    """What one trial holds at once: its Ray Train workers, the CPUs its Ray Data preprocessing
    needs, and its driver.

    >>> trial_resources(2, 1.0, True, {"CPU": 0.0, "trial_driver": 0.01}, 0.5)
    {'CPU': 2.5, 'GPU': 2.0, 'trial_driver': 0.01}
    """
    out = {"CPU": num_workers * cpus_per_worker + data_cpus + driver.get("CPU", 0.0)}
    if use_gpu:
        out["GPU"] = float(num_workers)
    out.update({k: v for k, v in driver.items() if k not in ("CPU", "GPU")})
    return out


def max_concurrent(cluster: Mapping[str, float], per_trial: Mapping[str, float]) -> int:
    """Trials that fit at once: the scarcest resource's ``cluster ÷ per trial``, at least 1.

    Ray Train V2 schedules each trial's workers outside Tune's accounting, so Tune would start
    every trial's driver at once and the Train runs would queue for workers; this bound keeps only
    as many drivers in flight as can train.

    >>> max_concurrent({"CPU": 16.0, "GPU": 4.0}, {"CPU": 2.5, "GPU": 2.0})
    2
    >>> max_concurrent({"CPU": 2.0}, {"CPU": 1.0})
    2
    """
    fits = [math.floor(cluster.get(k, 0.0) / v + 1e-9) for k, v in per_trial.items() if v > 0]
    return max(1, min(fits)) if fits else 1


#: ASHA lets a trial that reaches an empty rung go on (nothing to compare it with), so the first
#: trial in flight always runs its full budget and the next few are judged against one or two
#: results: with fewer trials per slot than this, early stopping saves little (``bench/tune.py``
#: on 2 slots: 8 trials used 48.6 % of the full-budget trial-steps)
ASHA_TRIALS_PER_SLOT = 6


def asha_note(trials: int, concurrent: int) -> str | None:
    """A warning for an ASHA sweep with too few trials per slot to stop many, else None.

    >>> asha_note(24, 2) is None
    True
    """
    if trials >= ASHA_TRIALS_PER_SLOT * concurrent:
        return None
    return (f"ASHA with {trials} trials, {concurrent} at once: the first trials in flight meet empty "
            "rungs and run their full budget, so early stopping saves little below "
            f"{ASHA_TRIALS_PER_SLOT} trials per slot (raise num_samples)")


# ---------------------------------------------------------------------------------------------
# results
# ---------------------------------------------------------------------------------------------

#: the metrics each task reports (``test_<metric>``), the primary one (``val_score``) first
TASK_METRICS: dict[str, tuple[str, ...]] = {
    "classification": ("oa",),
    "multilabel": ("map_micro", "map_macro"),
    "segmentation": ("miou", "oa"),
    "change": ("f1", "precision", "recall"),
}
METRIC_TITLES = {"oa": "OA", "map_micro": "mAP (micro)", "map_macro": "mAP (macro)", "miou": "mIoU",
                 "f1": "F1", "precision": "precision", "recall": "recall"}


@dataclass
class TrialRecord:
    """One finished (or stopped) trial: its knob values, ``curve`` (step, val_score) as reported,
    its last report (``final``: holds ``test_<metric>`` when the run went to its end), the steps it
    trained, its wall seconds, the CPUs/GPUs it held, and its error (None: it did not fail)."""

    trial_id: str
    params: dict[str, Any]
    curve: list[tuple[int, float]]
    final: dict[str, Any]
    steps: int
    seconds: float
    cpus: float
    gpus: float
    error: str | None = None

    @property
    def best_val(self) -> float:
        return max((v for _, v in self.curve), default=float("-inf"))

    @property
    def completed(self) -> bool:
        return any(k.startswith("test_") for k in self.final)

    @property
    def outcome(self) -> str:
        """``completed`` (ran its full budget), ``stopped`` (by the scheduler) or ``error: ...``."""
        if self.error is not None:
            return f"error: {self.error}"
        return "completed" if self.completed else "stopped"


@dataclass
class EncoderResult:
    """A (benchmark, encoder) experiment: its trials and the task."""

    benchmark: str
    task: str
    encoder: str
    trials: list[TrialRecord] = field(default_factory=list)

    @property
    def best(self) -> TrialRecord | None:
        return best_trial(self.trials)

    @property
    def trial_steps(self) -> int:
        return sum(t.steps for t in self.trials)

    @property
    def cpu_seconds(self) -> float:
        return sum(t.seconds * t.cpus for t in self.trials)

    @property
    def gpu_seconds(self) -> float:
        return sum(t.seconds * t.gpus for t in self.trials)


def best_trial(trials: Sequence[TrialRecord]) -> TrialRecord | None:
    """The trial that ran to its end (it has test metrics) with the highest best ``val_score``;
    the test metrics it reports come from its best-by-``val_score`` weights (``jobs.finetune``)."""
    done = [t for t in trials if t.completed]
    return max(done, key=lambda t: (t.best_val, t.trial_id), default=None)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def result_rows(results: Sequence[EncoderResult]) -> list[dict[str, Any]]:
    """One row per encoder of a benchmark: best config, its val and test metrics, trials run,
    trial-steps, compute used."""
    rows = []
    for r in results:
        b = r.best
        row: dict[str, Any] = {"benchmark": r.benchmark, "task": r.task, "encoder": r.encoder,
                               "trials": len(r.trials), "completed": sum(t.completed for t in r.trials),
                               "errored": sum(t.error is not None for t in r.trials),
                               "trial_steps": r.trial_steps, "cpu_seconds": round(r.cpu_seconds, 1),
                               "gpu_seconds": round(r.gpu_seconds, 1),
                               "best_trial": b.trial_id if b else "",
                               "best_val_score": b.best_val if b else ""}
        for m in TASK_METRICS[r.task]:
            row[f"test_{m}"] = b.final.get(f"test_{m}", "") if b else ""
        for k in FIELDS:
            row[k] = b.params.get(k, "") if b else ""
        rows.append(row)
    return rows


def results_csv(results: Sequence[EncoderResult]) -> str:
    rows = result_rows(results)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["benchmark"], lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def _md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def results_md(benchmark: str, results: Sequence[EncoderResult], scheduler: str) -> str:
    """``results.md`` of one benchmark: per encoder the best config and its test metrics, then
    every trial (knobs, best val_score, steps, status)."""
    rows = result_rows(results)
    task = results[0].task if results else "?"
    metrics = TASK_METRICS.get(task, ())
    out = [f"# {benchmark} ({task})", "",
           f"Scheduler: {scheduler}. Test metrics of each encoder's best trial (by validation score), "
           "computed with its best-by-validation weights.", ""]
    out.append(_md_table(
        ["encoder", *(f"test {METRIC_TITLES[m]}" for m in metrics), "best val", "trials", "trial-steps",
         "CPU-s", "GPU-s", *FIELDS],
        [[r["encoder"], *(r[f"test_{m}"] for m in metrics), r["best_val_score"], r["trials"],
          r["trial_steps"], r["cpu_seconds"], r["gpu_seconds"], *(r[k] for k in FIELDS)] for r in rows]))
    for r in results:
        out += ["", f"## {r.encoder}: every trial", ""]
        out.append(_md_table(
            ["trial", *FIELDS, "best val", "steps", "seconds", "outcome"],
            [[t.trial_id, *(t.params.get(k, "") for k in FIELDS), t.best_val, t.steps, round(t.seconds, 1),
              t.outcome]
             for t in sorted(r.trials, key=lambda t: t.trial_id)]))
    return "\n".join(out) + "\n"


def plot_trials(path: str | os.PathLike, benchmark: str, results: Sequence[EncoderResult]) -> None:
    """``trials.png``: val_score vs step of every trial, one panel per encoder, the best trial bold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = max(1, len(results))
    fig, axes = plt.subplots(1, n, figsize=(5 * n, 3.8), squeeze=False, sharey=True)
    for ax, r in zip(axes[0], results, strict=False):
        best = r.best
        for t in sorted(r.trials, key=lambda t: t.trial_id):
            if not t.curve:
                continue
            steps, vals = zip(*t.curve, strict=True)
            is_best = best is not None and t.trial_id == best.trial_id
            ax.plot(steps, vals, marker="o", ms=3, lw=2.5 if is_best else 1, alpha=1 if is_best else 0.5,
                    color="tab:red" if is_best else "tab:gray", zorder=3 if is_best else 2,
                    label=f"best {t.trial_id}" if is_best else None)
        ax.set_title(f"{benchmark}: {r.encoder}")
        ax.set_xlabel("step")
        ax.set_ylabel("val_score")
        if best is not None:
            ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def summary_md(results: Sequence[EncoderResult], sweep: str) -> str:
    """The papers' layout: rows = encoders, columns = each benchmark's test metrics (× 100)."""
    benchmarks: dict[str, str] = {}
    for r in results:
        benchmarks.setdefault(r.benchmark, r.task)
    encoders = list(dict.fromkeys(r.encoder for r in results))
    by = {(r.benchmark, r.encoder): r for r in results}
    header = ["encoder"] + [f"{b} {METRIC_TITLES[m]}" for b, t in benchmarks.items() for m in TASK_METRICS[t]]
    rows = []
    for e in encoders:
        row: list[Any] = [e]
        for b, t in benchmarks.items():
            r = by.get((b, e))
            best = r.best if r else None
            for m in TASK_METRICS[t]:
                v = best.final.get(f"test_{m}") if best else None
                row.append(f"{100 * v:.2f}" if isinstance(v, int | float) else "–")
        rows.append(row)
    return (f"# Sweep {sweep}: test metrics (× 100) of each encoder's best trial per benchmark\n\n"
            + _md_table(header, rows) + "\n")
