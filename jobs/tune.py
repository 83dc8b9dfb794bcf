"""Ray Tune sweeps over fine-tuning: ASHA on the global step, every trial a Ray Train run.

    python -m jobs.tune --config configs/tune/tiny.yaml \
        --data synthetic=out/bench/synthetic[,eurosat=s3://bucket/eurosat ...] \
        --encoder random,ours=out/runs/pretrain-x/export/encoder.safetensors \
        --storage out/sweeps --name sweep1 [--set num_samples=8 ...]

For every (benchmark, encoder) pair one Tune experiment runs ``num_samples × grid`` trials of
``jobs.finetune`` with knobs from ``space`` (``jobs.sweep``). The sweep driver runs
``jobs.finetune.prepare`` once per experiment and hands the datasets to every trial
(``prepare_experiment``). Each trial is a Tune *function trainable* that builds the fine-tuning
``TorchTrainer`` inside it (``jobs.finetune.make_trainer``) with ``TuneReportCallback``, so every
rank-0 report (``step``, ``val_score``, ...) reaches the ASHA scheduler (metric ``val_score``, mode
max, time attribute ``step``).

Outputs under ``<storage>/<name>/``: per benchmark ``<benchmark>/results.md``, ``results.csv``,
``trials.png``; across benchmarks ``summary.md`` (rows: encoders, columns: benchmark metrics).
The Tune experiment of a pair is ``<benchmark>/<encoder>/``, its trials' Ray Train runs
``<benchmark>/<encoder>/runs/<trial id>/``.

Placement: a trial's driver asks for ``driver_resources`` (0 CPUs plus a little memory by default,
so a ``num-cpus: 0`` head can host it and it never takes a CPU a training worker needs); Ray Train
V2 schedules the workers in their own placement group, outside Tune's accounting, so
``max_concurrent_trials`` (``auto``: the cluster's CPUs and GPUs ÷ one trial's) bounds the trials
in flight.

Resume: relaunching the same command after the driver died continues the sweep
(``Tuner.can_restore`` -> ``Tuner.restore``). Trials that finished or were stopped are kept and not
rerun (a finished trial's driver that restarts finds its ``trial_done.json`` and only re-reports
it); trials that were running start again from their Ray Train run's last checkpoint. Tune does
not restore ASHA's rungs: after a resume the scheduler judges the remaining trials only against
results reported after the resume, so it stops fewer of them (a resumed sweep can spend more
trial-steps than an uninterrupted one, never drop a trial).

Trusted storage: Tune's experiment state (``experiment_state-*.json``, ``tuner.pkl``,
``trainable.pkl``) holds cloudpickled objects that ``Tuner.restore`` unpickles, which runs code.
Restore only sweep directories you (or your jobs) wrote; treat write access to ``<storage>`` like
write access to the code.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import ray
from ray import tune
from ray.train.v2._internal.execution.callback import WorkerGroupCallback
from ray.tune.integration.ray_train import TuneReportCallback
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from jobs import cli
from jobs.sweep import (
    EncoderResult,
    SweepConfig,
    TrialRecord,
    apply_params,
    asha_note,
    corner_values,
    grid_size,
    max_concurrent,
    plot_trials,
    results_csv,
    results_md,
    summary_md,
    to_tune_space,
    trial_resources,
)
from pipeline.storage import absolute, join

__all__ = ["SweepConfig", "main", "run"]

log = logging.getLogger("skyray.tune")

#: a trial's last report, written into its Ray Train run when the run finished (``ReportToTune``)
DONE_FILE = "trial_done.json"
#: Tune's metric and time attribute (the finetune job's reports carry both)
METRIC, TIME_ATTR = "val_score", "step"
#: a trial's last report carries this (the reason) when it ended with a deterministic failure
FAILED = "failed"


class Plan(NamedTuple):
    """One Tune experiment: a benchmark, an encoder, the task, and the fine-tuning config dict
    every trial starts from."""

    benchmark: str
    encoder: str
    task: str
    base: dict[str, Any]


# ---------------------------------------------------------------------------------------------
# config resolution (before any work)
# ---------------------------------------------------------------------------------------------


def plan(cfg: SweepConfig) -> list[Plan]:
    """Every (benchmark, encoder) experiment, with its fine-tuning config checked for every corner
    of the search space; ``ConfigError`` naming the field otherwise."""
    from jobs.finetune import FinetuneConfig
    from jobs.train.data import read_manifest

    if not cfg.data:
        raise cli.ConfigError("data is not set (pass --data <benchmark>=<shards>[,...])")
    if not cfg.storage:
        raise cli.ConfigError("storage is not set (pass --storage)")
    if not cfg.name:
        raise cli.ConfigError("name is not set (pass --name)")
    preset: dict[str, Any] = {}
    if cfg.finetune_config:
        import yaml

        p = Path(cfg.finetune_config)
        if not p.is_file():
            raise cli.ConfigError(f"finetune_config: file not found: {p}")
        preset = yaml.safe_load(p.read_text()) or {}
    body = cli.deep_merge(preset, cfg.finetune)
    # a sweep compares configs: each trains the same in every launch unless the config says otherwise
    body = cli.deep_merge({"data": {"preserve_order": True}}, body)
    plans = []
    for bench, shards in cfg.data.items():
        try:
            manifest = read_manifest(absolute(shards), cfg.storage_options)
        except (FileNotFoundError, ValueError) as e:
            raise cli.ConfigError(f"data.{bench}: {e}") from None
        task = (manifest.get("benchmark") or {}).get("task")
        if task is None:
            raise cli.ConfigError(f"data.{bench}: {shards!r} holds no benchmark (its manifest has no "
                                  "'benchmark' section: convert it with jobs.convert)")
        for label, weights in cfg.encoders.items():
            base = cli.deep_merge(body, {
                "data": {"path": absolute(shards), "storage": cfg.storage_options.model_dump(mode="json")},
                "encoder": weights if weights == "random" else absolute(weights),
                "storage": join(absolute(cfg.storage), cfg.name, bench, label, "runs"),
                "name": "trial",
            })
            _check(base, cfg, FinetuneConfig)
            plans.append(Plan(bench, label, task, base))
    return plans


def check_prepared(plans: list[Plan]) -> None:
    """``jobs.finetune.prepare`` of each experiment's base config on the driver (the shards' tile
    size, the splits, the encoder weights fitting the model): ``ConfigError`` naming the benchmark
    and encoder before any trial starts."""
    from jobs import finetune

    for p in plans:
        lazy = cli.deep_merge(p.base, {"data": {"cache": False}})  # checks only: build, do not read
        try:
            finetune.prepare(finetune.FinetuneConfig.model_validate(lazy))
        except cli.ConfigError as e:
            raise cli.ConfigError(f"data.{p.benchmark} with encoders.{p.encoder}: {e}") from None


def prepare_experiment(p: Plan, *, lazy: bool = False) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(base, datasets)`` of one experiment, built once by the sweep driver and shared by all its
    trials: ``base`` is ``p.base`` with the benchmark facts ``jobs.finetune.prepare`` resolves
    (``task``, ``benchmark``, ``classes``), ``datasets`` its ``train``/``val``/``test`` Ray Datasets
    (materialised when ``data.cache``). The search-space knobs (``jobs.sweep.FIELDS``) set optimizer,
    model and batch-size fields only, never what ``prepare`` reads or how it preprocesses (``data``,
    ``seed``, ``model``, ``scaling``, the stages' ``img_size``), so every trial would build these same
    datasets; building them once removes that from every trial's start-up and keeps one copy in
    the object store instead of one per trial in flight. ``lazy``: built but not read (no cache), for
    a relaunched experiment whose trials have all ended (:func:`experiment_finished`).

    With ``data.preserve_order`` (on in sweeps unless the config sets it false: :func:`plan`) the
    datasets, the split between a trial's workers and its batches keep one order, so two launches of one
    sweep train a config the same (``tests/jobs/test_finetune.py``); without it Ray Data hands blocks and
    batches on as they finish, and the same config's trials differ from launch to launch."""
    from jobs import finetune

    spec = cli.deep_merge(p.base, {"data": {"cache": False}}) if lazy else p.base
    cfg, datasets = finetune.prepare(finetune.FinetuneConfig.model_validate(spec))
    return cli.deep_merge(p.base, {"task": cfg.task, "benchmark": cfg.benchmark,
                                   "classes": list(cfg.classes)}), datasets


def experiment_finished(exp_path: str, fs, trials: int) -> bool:
    """Whether the Tune experiment at ``exp_path`` (on ``fs``) has created all its ``trials`` and each
    one has ended (TERMINATED or ERROR: a restore reruns neither), so relaunching it trains nothing."""
    from ray.tune import ExperimentAnalysis

    try:
        done = ExperimentAnalysis(exp_path, storage_filesystem=fs).trials
    except Exception:  # noqa: BLE001 - an unreadable state: prepare as for any restore
        return False
    return len(done) >= trials and all(t.status in ("TERMINATED", "ERROR") for t in done)


def _check(base: dict[str, Any], cfg: SweepConfig, config_cls) -> None:
    """Validate the fine-tuning config at every corner value of every knob."""
    from pydantic import ValidationError

    def validate(params: Mapping[str, Any], where: str):
        try:
            return config_cls.model_validate(apply_params(base, params))
        except ValidationError as e:
            msg = "; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors())
            raise cli.ConfigError(f"{where}: the fine-tuning config is invalid: {msg}") from None

    ft = validate({}, "finetune")
    if ft.scaling.elastic:  # Tune's concurrency and each trial's bundle count a fixed number of workers
        raise cli.ConfigError(f"finetune.scaling.num_workers must be a fixed int under Tune, not "
                              f"{list(ft.scaling.num_workers)}")
    if ft.scaling.num_workers < 1:  # Train's local mode (0 workers) reports nothing to Tune
        raise cli.ConfigError("finetune.scaling.num_workers must be >= 1 under Tune")
    if cfg.scheduler.kind == "asha" and cfg.scheduler.grace_period >= ft.total_steps:
        raise cli.ConfigError(f"scheduler.grace_period {cfg.scheduler.grace_period} must be below the "
                              f"trials' {ft.total_steps} steps (ASHA could never stop a trial)")
    for knob, values in corner_values(cfg.space).items():
        for v in values:
            validate({knob: v}, f"space.{knob}={v!r}")


# ---------------------------------------------------------------------------------------------
# the trial (runs in a Tune trial actor)
# ---------------------------------------------------------------------------------------------


def _trial(params: dict[str, Any], *, base: dict[str, Any], datasets: Mapping[str, Any],
           registry: str) -> None:
    """One trial: the fine-tuning run of ``base`` (a prepared config: ``task``, ``benchmark`` and
    ``classes`` resolved) with ``params``, named by the trial id, so a restarted trial resumes its
    own Ray Train run from the last checkpoint. ``datasets``: the experiment's, prepared once by
    the sweep driver (``prepare_experiment``)."""
    from jobs import finetune
    from jobs.train.loop import NonFiniteLossError, fit
    from pipeline import storage as st

    trial_id = tune.get_context().get_trial_id()
    cfg = finetune.FinetuneConfig.model_validate({**apply_params(base, params), "name": trial_id})
    done_uri = join(cfg.storage, trial_id, DONE_FILE)
    if st.exists(done_uri, cfg.data.storage):  # finished before a driver crash: report, do not rerun
        tune.report(json.loads(st.read_bytes(done_uri, cfg.data.storage)))
        return
    run_config = finetune.default_run_config(
        cfg, callbacks=[ReportToTune(done_uri, cfg.data.storage), RecordPlacementGroup(registry, trial_id)])
    trainer = finetune.make_trainer(cfg, datasets, run_config=run_config)
    try:
        fit(cfg, finetune.FinetuneLoop, datasets, cli.config_json(cfg), trainer=trainer)
    except NonFiniteLossError as e:
        # deterministic: a Tune retry would fail the same way, so the trial ends here, marked failed
        final = {TIME_ATTR: e.step, METRIC: float("nan"), FAILED: str(e)}
        st.write_bytes_atomic(done_uri, json.dumps(final, sort_keys=True).encode(), cfg.data.storage)
        tune.report(final)


class ReportToTune(TuneReportCallback):
    """``TuneReportCallback`` (in the Train controller) that

    * gives every report the scheduler's metric: a report without it (the loop's stop on a
      non-finite loss reports only ``step``) gets ``val_score`` NaN, which ASHA never promotes,
      instead of failing Tune's metric check, which would end the whole sweep;
    * writes the run's last report (the one with ``test_<metric>``) to ``trial_done.json`` before
      Tune sees it: ASHA stops a trial that reaches its budget as soon as it receives that report,
      killing the trial's driver before ``fit`` returns there."""

    def __init__(self, done_uri: str, storage) -> None:
        super().__init__()
        self.done_uri, self.storage = done_uri, storage

    def after_report(self, run_context, metrics, checkpoint) -> None:
        from pipeline.storage import write_bytes_atomic

        metrics = [{METRIC: float("nan"), **m} for m in metrics]
        if metrics and any(k.startswith("test_") for k in metrics[0]):
            final = {k: v for k, v in metrics[0].items() if isinstance(v, int | float | str)}
            write_bytes_atomic(self.done_uri, json.dumps(final, sort_keys=True).encode(), self.storage)
        super().after_report(run_context, metrics, checkpoint)


# Ray Train V2 schedules a trial's workers in a placement group that belongs to the job, not to
# the trial: when ASHA stops a trial, Tune kills the trial's actor and with it the Train
# controller, but the group stays and holds its CPUs/GPUs until the sweep ends (Train's own
# cleaner asks the dashboard's state API, absent on clusters started without the dashboard, and
# deadlocks the sweep once the stopped trials' groups fill the cluster). So each trial registers
# its group with a registry actor of the sweep driver, and a Tune callback removes a trial's
# groups when the trial ends, is stopped, or is retried.


@ray.remote(num_cpus=0)
class PlacementGroupRegistry:
    """trial id -> the placement groups its Ray Train runs created (lives in the sweep driver's job)."""

    def __init__(self) -> None:
        self.groups: dict[str, list] = {}

    def add(self, trial_id: str, pg) -> None:
        self.groups.setdefault(trial_id, []).append(pg)

    def pop(self, trial_id: str) -> list:
        return self.groups.pop(trial_id, [])


class RecordPlacementGroup(WorkerGroupCallback):
    """Ray Train callback (in the controller): registers each worker group's placement group."""

    def __init__(self, registry: str, trial_id: str) -> None:
        self.registry, self.trial_id = registry, trial_id

    def after_worker_group_start(self, worker_group) -> None:
        pg = worker_group.get_worker_group_state().placement_group_handle.placement_group
        try:
            ray.get(ray.get_actor(self.registry).add.remote(self.trial_id, pg))
        except (ValueError, ray.exceptions.RayActorError) as e:
            # bookkeeping only: raising here would fail the group's start after its placement group
            # was made, and Ray Train would leak that group's CPUs at every retry
            log.warning("trial %s: placement group not registered (%s); it is removed when the sweep "
                        "ends", self.trial_id, type(e).__name__)


class FreePlacementGroups(tune.Callback):
    """Tune callback (in the sweep driver): removes the groups of a trial that ended. Holds the
    registry's name, not a handle, so a restored experiment's pickled callback finds the new one."""

    def __init__(self, registry: str) -> None:
        self.registry = registry

    def _free(self, trial) -> None:
        from ray.util.placement_group import placement_group_table, remove_placement_group

        for pg in ray.get(ray.get_actor(self.registry).pop.remote(trial.trial_id)):
            if placement_group_table(pg).get("state") not in (None, "REMOVED"):
                remove_placement_group(pg)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._free(trial)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._free(trial)

    def on_trial_recover(self, iteration, trials, trial, **info) -> None:
        self._free(trial)


# ---------------------------------------------------------------------------------------------
# driver
# ---------------------------------------------------------------------------------------------


def _scheduler(cfg: SweepConfig, total_steps: int):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    s = cfg.scheduler
    if s.kind == "fifo":
        return FIFOScheduler()
    return ASHAScheduler(time_attr=TIME_ATTR, max_t=total_steps, grace_period=s.grace_period,
                         reduction_factor=s.reduction_factor, brackets=s.brackets)


def concurrency(cfg: SweepConfig, ft, cluster: Mapping[str, float]) -> tuple[int, dict[str, float]]:
    """``(max_concurrent_trials, one trial's resources)``; ``ConfigError`` when the cluster lacks a
    resource the drivers ask for."""
    missing = sorted(k for k, v in cfg.driver_resources.items() if v > 0 and cluster.get(k, 0) < v)
    if missing:
        raise cli.ConfigError(
            f"driver_resources: the cluster has no (or too little) {missing} "
            f"(it has {sorted(cluster)}); declare it on the head or a CPU node, or drop it")
    per_trial = trial_resources(ft.scaling.num_workers, ft.scaling.cpus_per_worker, ft.scaling.use_gpu,
                                cfg.driver_resources, cfg.data_cpus_per_trial)
    if cfg.max_concurrent_trials != "auto":
        return int(cfg.max_concurrent_trials), per_trial
    return max_concurrent(cluster, per_trial), per_trial


def _records(grid, ft) -> list[TrialRecord]:
    """Tune's results -> one ``TrialRecord`` per trial (curve deduplicated by step: a restarted
    trial reports its resumed steps again)."""
    out = []
    for r in grid:
        df = r.metrics_dataframe
        curve: dict[int, float] = {}
        if df is not None and METRIC in df and TIME_ATTR in df:
            for step, val in zip(df[TIME_ATTR], df[METRIC], strict=True):
                if step == step and val == val:  # not NaN
                    curve[int(step)] = float(val)
        m = r.metrics or {}
        trial_id = m.get("trial_id") or Path(r.path).name
        params = dict(r.config or {})
        out.append(TrialRecord(
            trial_id=str(trial_id), params=params, curve=sorted(curve.items()),
            final={k: v for k, v in m.items() if isinstance(v, int | float | str)},
            steps=max(curve, default=int(m.get(TIME_ATTR) or 0)),
            seconds=float(m.get("time_total_s") or 0.0),
            cpus=ft.scaling.num_workers * ft.scaling.cpus_per_worker,
            gpus=float(ft.scaling.num_workers) if ft.scaling.use_gpu else 0.0,
            error=(str(r.error).strip().splitlines() or ["error"])[-1][:200] if r.error else m.get(FAILED),
        ))
    return out


def _write_outputs(cfg: SweepConfig, results: list[EncoderResult]) -> dict[str, Any]:
    """Per benchmark ``results.md/csv`` + ``trials.png``; ``summary.md`` across all."""
    import tempfile

    from pipeline.storage import upload_tree

    root = join(absolute(cfg.storage), cfg.name)
    written: dict[str, Any] = {}
    s = cfg.scheduler
    scheduler = (f"ASHA on {TIME_ATTR} (grace {s.grace_period}, reduction {s.reduction_factor:g})"
                 if s.kind == "asha" else "FIFO (full budget)")
    with tempfile.TemporaryDirectory(prefix="sweep-") as tmp:
        for bench in dict.fromkeys(r.benchmark for r in results):
            rs = [r for r in results if r.benchmark == bench]
            d = Path(tmp, bench)
            d.mkdir()
            (d / "results.md").write_text(results_md(bench, rs, scheduler))
            (d / "results.csv").write_text(results_csv(rs))
            plot_trials(d / "trials.png", bench, rs)
            written[bench] = join(root, bench)
        Path(tmp, "summary.md").write_text(summary_md(results, cfg.name))
        upload_tree(tmp, root, cfg.storage_options)
    written["summary"] = join(root, "summary.md")
    return written


def _tuner(cfg: SweepConfig, p: Plan, conc: int, per_trial: Mapping[str, float], registry: str):
    """``(Tuner, resumed)`` of one experiment: restored when its directory holds one, else new. The
    experiment's datasets are prepared here, once (``prepare_experiment``)."""
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from jobs.finetune import FinetuneConfig
    from jobs.train.data import pyarrow_fs

    fs, bench_path = pyarrow_fs(join(absolute(cfg.storage), cfg.name, p.benchmark), cfg.storage_options)
    exp_path = f"{bench_path}/{p.encoder}"
    restore = tune.Tuner.can_restore(exp_path, storage_filesystem=fs)
    # a relaunch of an experiment whose trials have all ended only re-reads their results: its
    # datasets are never iterated, so they are not read and cached for nothing
    finished = restore and experiment_finished(exp_path, fs, cfg.num_samples * grid_size(cfg.space))
    base, datasets = prepare_experiment(p, lazy=finished)
    trainable = tune.with_resources(
        tune.with_parameters(_trial, base=base, datasets=datasets, registry=registry),
        dict(cfg.driver_resources))
    if restore:
        log.info("resuming %s/%s from %s%s", p.benchmark, p.encoder, exp_path,
                 " (every trial has ended: nothing to train)" if finished else "")
        return tune.Tuner.restore(exp_path, trainable=trainable, resume_unfinished=True, resume_errored=False,
                                  restart_errored=False, storage_filesystem=fs), True
    log.info("%s/%s: %d trials, %d at once (one trial holds %s)", p.benchmark, p.encoder,
             cfg.num_samples * grid_size(cfg.space), conc, per_trial)
    total = FinetuneConfig.model_validate(p.base).total_steps
    return tune.Tuner(
        trainable,
        param_space=to_tune_space(cfg.space),
        tune_config=tune.TuneConfig(
            metric=METRIC, mode="max", scheduler=_scheduler(cfg, total),
            # the random search, seeded; it bounds the trials in flight itself (Tune ignores
            # ``max_concurrent_trials`` beside a given generator)
            search_alg=BasicVariantGenerator(random_state=cfg.seed, max_concurrent=conc),
            num_samples=cfg.num_samples,
            trial_dirname_creator=lambda t: f"trial_{t.trial_id}",
        ),
        run_config=tune.RunConfig(
            name=p.encoder, storage_path=bench_path, storage_filesystem=fs,
            failure_config=tune.FailureConfig(max_failures=cfg.max_failures),
            callbacks=[FreePlacementGroups(registry)], verbose=1,
        ),
    ), False


def run(cfg: SweepConfig) -> dict[str, Any]:
    """Run (or resume) every experiment; returns ``{"name", "root", "outputs", "experiments"}``."""
    from jobs.finetune import FinetuneConfig

    plans = plan(cfg)  # every config error before any work
    cli.log_config(cfg, "sweep config")
    cli.init_ray()
    cluster = ray.cluster_resources()
    sizing = [concurrency(cfg, FinetuneConfig.model_validate(p.base), cluster) for p in plans]
    if cfg.scheduler.kind == "asha" and (note := asha_note(cfg.num_samples * grid_size(cfg.space),
                                                           max(conc for conc, _ in sizing))):
        log.warning(note)
    check_prepared(plans)

    registry_name = f"skyray-tune-pgs-{cfg.name}"
    # on the driver's own node: an actor placed on a worker node dies with it (the sweep drill)
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    registry = PlacementGroupRegistry.options(name=registry_name, get_if_exists=True,
                                              scheduling_strategy=here).remote()
    results: list[EncoderResult] = []
    summary: list[dict[str, Any]] = []
    try:
        for p, (conc, per_trial) in zip(plans, sizing, strict=True):
            tuner, resumed = _tuner(cfg, p, conc, per_trial, registry_name)
            grid = tuner.fit()
            ft = FinetuneConfig.model_validate(p.base)
            r = EncoderResult(p.benchmark, p.task, p.encoder, _records(grid, ft))
            results.append(r)
            summary.append({"benchmark": p.benchmark, "encoder": p.encoder, "trials": len(r.trials),
                            "trial_steps": r.trial_steps, "resumed": resumed,
                            "best": r.best.trial_id if r.best else None})
    finally:
        ray.kill(registry)
    outputs = _write_outputs(cfg, results)
    return {"name": cfg.name, "root": join(absolute(cfg.storage), cfg.name), "outputs": outputs,
            "experiments": summary}


def main(argv: list[str] | None = None) -> int:
    return cli.run_job(
        SweepConfig, run, argv, default_config="configs/tune/tiny.yaml",
        aliases={
            "--data": cli.Alias("data", "benchmark shards: <benchmark>=<uri>[,<benchmark>=<uri>...]"),
            "--encoder": cli.Alias("encoders", "encoders: [<label>=]<random|weights>[,...]"),
            "--storage": cli.Alias("storage", "sweeps root (local path or s3://)"),
            "--name": cli.Alias("name", "sweep name; relaunching with the same name resumes"),
        },
    )


if __name__ == "__main__":
    raise SystemExit(main())
