"""``jobs.sweep`` (pure: config, search space, sizing, tables, plot) and ``jobs.tune`` (Ray Tune over
``jobs.finetune``: a 4-trial ASHA sweep on 2 CPUs, resume after killing the driver, config errors)."""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path
from typing import NamedTuple

import pytest

from jobs import cli
from jobs.sweep import (
    FIELDS,
    Choice,
    EncoderResult,
    Grid,
    LogUniform,
    SearchSpace,
    SweepConfig,
    TrialRecord,
    Uniform,
    apply_params,
    best_trial,
    corner_values,
    encoder_label,
    grid_size,
    max_concurrent,
    parse_pairs,
    plot_trials,
    result_rows,
    results_csv,
    results_md,
    summary_md,
    to_tune_space,
    trial_resources,
)

# ---------------------------------------------------------------------------------------------
# pure parts
# ---------------------------------------------------------------------------------------------


def test_space_parses_each_distribution_and_fixed_values():
    s = SearchSpace.model_validate({
        "lr": {"loguniform": [1e-4, 1e-2]}, "weight_decay": {"uniform": [0.0, 0.1]},
        "layer_decay": {"choice": [0.65, 0.75]}, "drop_path": 0.1, "batch_size": {"grid": [8, 16]},
        "mode": "finetune",
    })
    assert isinstance(s.lr, LogUniform) and isinstance(s.weight_decay, Uniform)
    assert isinstance(s.layer_decay, Choice) and isinstance(s.batch_size, Grid)
    assert s.drop_path == 0.1 and s.mode == "finetune"
    assert corner_values(s) == {"lr": [1e-4, 1e-2], "weight_decay": [0.0, 0.1], "layer_decay": [0.65, 0.75],
                                "drop_path": [0.1], "batch_size": [8, 16], "mode": ["finetune"]}
    assert grid_size(s) == 2
    assert SearchSpace().knobs() == {}


def test_to_tune_space_maps_each_domain():
    from ray.tune.search.sample import Categorical, Float

    space = to_tune_space(SearchSpace.model_validate({
        "lr": {"loguniform": [1e-4, 1e-2]}, "weight_decay": {"uniform": [0.0, 0.1]},
        "mode": {"choice": ["linear_probe", "finetune"]}, "batch_size": {"grid": [8, 16]}, "drop_path": 0.2}))
    assert isinstance(space["lr"], Float) and space["lr"].lower == 1e-4 and space["lr"].upper == 1e-2
    assert type(space["lr"].get_sampler()).__name__ == "_LogUniform"
    assert isinstance(space["weight_decay"], Float)
    assert type(space["weight_decay"].get_sampler()).__name__ == "_Uniform"
    assert isinstance(space["mode"], Categorical) and space["mode"].categories == ["linear_probe", "finetune"]
    assert space["batch_size"] == {"grid_search": [8, 16]}
    assert space["drop_path"] == 0.2


@pytest.mark.parametrize(("spec", "match"), [
    ({"lr": {"loguniform": [0.0, 1e-2]}}, "loguniform needs 0 < low < high"),
    ({"lr": {"uniform": [0.1, 0.1]}}, "uniform needs low < high"),
    ({"mode": {"choice": []}}, "at least 1 item"),
    ({"lr": {"normal": [0, 1]}}, "lr"),
    ({"momentum": 0.9}, "momentum"),
])
def test_space_errors_name_the_knob(spec, match):
    with pytest.raises(ValueError, match=match):
        SearchSpace.model_validate(spec)


def test_apply_params_sets_every_stage_and_nested_fields():
    base = {"stages": [{"batch_size": 8, "steps": 5}, {"batch_size": 8, "steps": 5}],
            "optim": {"base_lr": 1.0}}
    out = apply_params(base, {"batch_size": 32, "lr": 0.01, "weight_decay": 0.05, "mode": "finetune",
                              "layer_decay": 0.7, "drop_path": 0.1})
    assert [s["batch_size"] for s in out["stages"]] == [32, 32]
    assert out["optim"] == {"base_lr": 0.01, "weight_decay": 0.05}
    assert (out["mode"], out["layer_decay"], out["drop_path"]) == ("finetune", 0.7, 0.1)
    assert base["stages"][0]["batch_size"] == 8 and base["optim"] == {"base_lr": 1.0}  # not mutated


def test_search_knobs_never_touch_what_the_shared_datasets_are_built_from():
    """``jobs.tune`` prepares an experiment's datasets once for all its trials (``prepare_experiment``):
    no knob may set a field ``jobs.finetune.prepare`` builds them from."""
    import yaml

    base = yaml.safe_load((Path(__file__).resolve().parents[2] / "configs/finetune/spectralgpt_tiny.yaml")
                          .read_text())
    built_from = {"data", "seed", "model", "scaling", "encoder", "task", "benchmark", "classes"}

    def inputs(cfg):
        return ({k: cfg.get(k) for k in built_from}, [s["img_size"] for s in cfg["stages"]])

    for knob in FIELDS:
        assert inputs(apply_params(base, {knob: object()})) == inputs(base), knob


def test_pairs_from_cli_strings_and_mappings():
    assert parse_pairs("a=/x, b=s3://bucket/y", "data") == {"a": "/x", "b": "s3://bucket/y"}
    assert parse_pairs({"a": "/x"}, "data") == {"a": "/x"}
    assert parse_pairs("random,ours=/w/enc.safetensors,/w/SpectralGPT.pth", "encoders",
                       bare_label=encoder_label) == {"random": "random", "ours": "/w/enc.safetensors",
                                                     "SpectralGPT": "/w/SpectralGPT.pth"}
    cfg = SweepConfig.model_validate({"data": "synthetic=/d", "encoders": "random"})
    assert cfg.data == {"synthetic": "/d"} and cfg.encoders == {"random": "random"}


@pytest.mark.parametrize(("body", "match"), [
    ({"data": "/shards/without/name"}, "data entry '/shards/without/name' needs the form <name>=<path>"),
    ({"data": "a=/x,a=/y"}, "data names 'a' twice"),
    ({"data": "a="}, "empty name or path"),
    ({"encoders": ""}, "encoders is empty"),
    ({"data": "bad/name=/x"}, "must be letters, digits"),
    ({"driver_resources": {"CPU": -1}}, "driver_resources"),
    ({"driver_resources": {"CPU": 0, "GPU": 1}}, "a trial driver needs no GPU"),
    ({"max_concurrent_trials": 0}, "max_concurrent_trials"),
    ({"scheduler": {"reduction_factor": 1}}, "scheduler.reduction_factor"),
    ({"num_samples": 0}, "num_samples"),
    ({"bogus": 1}, "bogus"),
])
def test_config_errors_name_the_field(tmp_path, body, match):
    p = tmp_path / "c.yaml"
    import yaml

    p.write_text(yaml.safe_dump(body))
    with pytest.raises(cli.ConfigError, match=match):
        cli.load_config(SweepConfig, p)


def test_trial_resources_and_concurrency():
    per = trial_resources(2, 1.0, False, {"CPU": 0.0, "memory": 2**28}, 0.5)
    assert per == {"CPU": 2.5, "memory": 2**28}
    assert max_concurrent({"CPU": 10.0, "memory": 2**34}, per) == 4
    gpu = trial_resources(2, 4.0, True, {"CPU": 0.0, "trial_driver": 0.01}, 1.0)
    assert max_concurrent({"CPU": 64.0, "GPU": 8.0, "trial_driver": 1.0}, gpu) == 4  # GPUs bound it
    assert max_concurrent({"CPU": 64.0, "GPU": 8.0, "trial_driver": 0.02}, gpu) == 2  # the driver slots
    assert max_concurrent({"CPU": 1.0}, {"CPU": 2.5}) == 1  # never 0: one trial queues for its workers


def test_asha_note_warns_when_trials_per_slot_are_few():
    from jobs.sweep import ASHA_TRIALS_PER_SLOT, asha_note

    assert asha_note(ASHA_TRIALS_PER_SLOT * 2, 2) is None
    assert asha_note(8, 2) == (
        "ASHA with 8 trials, 2 at once: the first trials in flight meet empty rungs and run their full "
        "budget, so early stopping saves little below 6 trials per slot (raise num_samples)")


def _trial(tid, curve, test=None, seconds=10.0, params=None, error=None):
    final = {"step": curve[-1][0], "val_score": curve[-1][1]}
    if test is not None:
        final["test_oa"] = test
    return TrialRecord(tid, params or {"lr": 0.001}, curve, final, curve[-1][0], seconds, 1.0, 0.0,
                       error=error)


def test_best_trial_is_the_completed_one_with_the_best_val():
    a = _trial("a", [(5, 0.5), (10, 0.6)], test=0.58)
    b = _trial("b", [(5, 0.9)])  # stopped early: no test metrics, cannot be the answer
    c = _trial("c", [(5, 0.4), (10, 0.7), (20, 0.65)], test=0.66)
    assert best_trial([a, b, c]) is c
    assert best_trial([b]) is None


def _results():
    t = [_trial("t0", [(5, 0.5), (10, 0.6)], test=0.58, params={"lr": 1e-3, "mode": "finetune"}),
         _trial("t1", [(5, 0.3)], seconds=4.0, params={"lr": 1e-2, "mode": "linear_probe"}),
         _trial("t2", [(5, 0.55), (10, 0.75)], test=0.71, seconds=12.0,
                params={"lr": 3e-3, "mode": "finetune"})]
    other = [_trial("u0", [(5, 0.2), (10, 0.3)], test=0.25)]
    return [EncoderResult("synthetic", "classification", "ours", t),
            EncoderResult("synthetic", "classification", "random", other)]


def test_results_csv_and_md_hold_the_best_config_and_the_totals():
    rs = _results()
    rows = list(csv.DictReader(io.StringIO(results_csv(rs))))
    assert [r["encoder"] for r in rows] == ["ours", "random"]
    ours = rows[0]
    assert ours["best_trial"] == "t2" and float(ours["test_oa"]) == 0.71
    assert float(ours["best_val_score"]) == 0.75
    assert ours["lr"] == "0.003" and ours["mode"] == "finetune"
    assert int(ours["trials"]) == 3 and int(ours["completed"]) == 2
    assert int(ours["trial_steps"]) == 10 + 5 + 10
    assert float(ours["cpu_seconds"]) == 10.0 + 4.0 + 12.0 and float(ours["gpu_seconds"]) == 0.0
    md = results_md("synthetic", rs, "ASHA")
    assert md.startswith("# synthetic (classification)")
    assert "| ours | 0.71 | 0.75 | 3 | 25 | 26 | 0 | 0.003 |  |  |  |  | finetune |" in md
    assert "| t1 | 0.01 |  |  |  |  | linear_probe | 0.3 | 5 | 4 | stopped |" in md  # every trial listed
    assert "| t2 | 0.003 |  |  |  |  | finetune | 0.75 | 10 | 12 | completed |" in md
    assert result_rows(rs)[1]["test_oa"] == 0.25


def test_summary_rows_are_encoders_and_columns_benchmark_metrics():
    rs = _results() + [EncoderResult("bigearthnet", "multilabel", "ours", [TrialRecord(
        "m0", {}, [(10, 0.4)], {"step": 10, "test_map_micro": 0.41234, "test_map_macro": 0.3},
        10, 1.0, 1.0, 0.0)])]
    md = summary_md(rs, "s1")
    lines = md.strip().splitlines()
    assert lines[2] == "| encoder | synthetic OA | bigearthnet mAP (micro) | bigearthnet mAP (macro) |"
    assert lines[4] == "| ours | 71.00 | 41.23 | 30.00 |"
    assert lines[5] == "| random | 25.00 | – | – |"  # not swept on bigearthnet


def test_plot_trials_writes_a_png(tmp_path):
    p = tmp_path / "trials.png"
    plot_trials(p, "synthetic", _results())
    assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000


# ---------------------------------------------------------------------------------------------
# the job: config errors before any trial, a 4-trial ASHA sweep, resume after a driver kill
# ---------------------------------------------------------------------------------------------

TINY = "configs/tune/tiny.yaml"
#: the tiny preset, shortened: 20 steps, validation every 5, ASHA rungs at 5 and 10
FAST = ["finetune.stages=[{img_size: 32, steps: 20, batch_size: 16}]", "finetune.checkpoint.every_steps=10",
        "scheduler.grace_period=5"]


@pytest.fixture(scope="module")
def toy_classification(tmp_path_factory):
    """A small labelled classification benchmark (contract v3, 48/12/12 rows, 32 px)."""
    from tests.jobs.conftest import make_benchmark

    out = tmp_path_factory.mktemp("toy") / "toy"
    make_benchmark(out, "classification")
    return out


def _cfg(tmp_path, data, *overrides: str, name: str = "s") -> SweepConfig:
    return cli.load_config(SweepConfig, TINY, [*FAST, *overrides],
                           {"data": f"toy={data}", "storage": str(tmp_path / "sweeps"), "name": name})


@pytest.mark.parametrize(("overrides", "match"), [
    (["space.batch_size={choice: [16, 7]}", "finetune.scaling.num_workers=2"],
     r"space\.batch_size=7: .*batch_size"),
    (["space.mode=probe"], r"space\.mode='probe': the fine-tuning config is invalid: mode"),
    (["scheduler.grace_period=20"], r"scheduler\.grace_period 20 must be below the trials' 20 steps"),
    (["finetune.scaling.cpus_per_worker=0"],
     r"finetune: the fine-tuning config is invalid: scaling\.cpus_per_worker"),
    (["finetune_config=configs/finetune/none.yaml"], "finetune_config: file not found"),
    (["finetune.scaling.num_workers=[1, 2]"], r"finetune.scaling.num_workers must be a fixed int under Tune"),
])
def test_config_errors_before_any_trial(tmp_path, toy_classification, overrides, match):
    from jobs.tune import plan

    with pytest.raises(cli.ConfigError, match=match):
        plan(_cfg(tmp_path, toy_classification, *overrides))
    assert not (tmp_path / "sweeps").exists()


def test_trials_keep_data_order_unless_the_config_says_not(tmp_path, toy_classification):
    """A sweep compares configs, so its trials read in order (``data.preserve_order``: every launch
    trains a config the same) even from a preset that does not set it; ``false`` is kept."""
    from jobs.tune import plan

    preset = Path("configs/finetune/spectralgpt_tiny.yaml").read_text()
    bare = tmp_path / "bare.yaml"
    bare.write_text("\n".join(ln for ln in preset.splitlines() if "preserve_order" not in ln))
    (p,) = plan(_cfg(tmp_path, toy_classification, f"finetune_config={bare}"))
    assert p.base["data"]["preserve_order"] is True
    off = "finetune.data.preserve_order=false"
    (p,) = plan(_cfg(tmp_path, toy_classification, f"finetune_config={bare}", off))
    assert p.base["data"]["preserve_order"] is False


def test_data_errors_name_the_benchmark(tmp_path, shards_dir):
    from jobs.tune import plan

    with pytest.raises(cli.ConfigError, match=r"data\.toy: .* holds no benchmark"):
        plan(_cfg(tmp_path, shards_dir))  # unlabelled ingest shards
    with pytest.raises(cli.ConfigError, match=r"data\.toy: no manifest\.json"):
        plan(_cfg(tmp_path, tmp_path / "missing"))
    with pytest.raises(cli.ConfigError, match="storage is not set"):
        plan(cli.load_config(SweepConfig, TINY, FAST, {"data": f"toy={shards_dir}", "name": "s"}))


def test_prepare_errors_and_missing_driver_resource_fail_before_trials(ray_session, tmp_path,
                                                                     toy_classification):
    from jobs.tune import run

    with pytest.raises(cli.ConfigError,
                       match=r"data\.toy with encoders\.random: stages\.0\.img_size 64 exceeds"):
        run(_cfg(tmp_path, toy_classification, "finetune.stages=[{img_size: 64, steps: 20, batch_size: 16}]",
                 "finetune.model.overrides.img_size=64"))
    with pytest.raises(cli.ConfigError, match=r"driver_resources: the cluster has no .*\['trial_driver'\]"):
        run(_cfg(tmp_path, toy_classification, "driver_resources={CPU: 0, trial_driver: 0.01}"))
    assert not list((tmp_path / "sweeps").rglob("trial_*"))


def _tune_trials(exp_dir):
    """Tune's own record of every trial (``trial_*/result.json``, one JSON object per report):
    trial id -> reports, the reference the tables are checked against."""
    import json

    out = {}
    for f in sorted(exp_dir.glob("trial_*/result.json")):
        rows = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
        if rows:
            out[rows[-1]["trial_id"]] = rows
    return out


def _check_outputs(root, bench="toy", encoder="random", trials=4, steps=20):
    """The tables and plot of a finished sweep against Tune's per-trial records."""
    exp = _tune_trials(root / bench / encoder)
    assert len(exp) == trials
    rows = list(csv.DictReader(io.StringIO((root / bench / "results.csv").read_text())))
    assert len(rows) == 1 and rows[0]["encoder"] == encoder
    row = rows[0]
    assert int(row["trials"]) == trials and int(row["errored"]) == 0
    last_step = {t: max(r["step"] for r in rs) for t, rs in exp.items()}
    assert int(row["trial_steps"]) == sum(last_step.values())
    completed = {t: rs for t, rs in exp.items() if any("test_oa" in r for r in rs)}
    assert completed and int(row["completed"]) == len(completed)
    assert all(last_step[t] == steps for t in completed)  # ran the full budget
    assert all(last_step[t] < steps for t in exp if t not in completed)  # stopped by ASHA
    best = max(completed, key=lambda t: (max(r["val_score"] for r in completed[t]), t))
    assert row["best_trial"] == best
    assert float(row["best_val_score"]) == pytest.approx(max(r["val_score"] for r in completed[best]))
    test_oa = next(r["test_oa"] for r in completed[best] if "test_oa" in r)
    assert float(row["test_oa"]) == pytest.approx(test_oa)
    assert float(row["cpu_seconds"]) > 0
    md = (root / bench / "results.md").read_text()
    for t in exp:
        assert f"| {t} |" in md
    assert (root / bench / "trials.png").read_bytes()[:4] == b"\x89PNG"
    summary = (root / "summary.md").read_text()
    assert f"| {encoder} | {100 * test_oa:.2f} |" in summary
    return exp


class ResumedSweep(NamedTuple):
    """The sweep the job tests share (``resumed_sweep``)."""

    root: Path  #: ``<storage>/<name>``
    runs: Path  #: the trials' Ray Train runs
    finished: dict[str, dict[Path, int]]  #: trials finished before the kill -> their files' mtimes
    out: dict  #: ``run``'s summary of the relaunch


@pytest.fixture(scope="module")
def resumed_sweep(ray_session, tmp_path_factory, toy_classification):
    """One 4-trial ASHA sweep (``FAST``) on 2 CPUs for the sweep tests: its driver (``python -m
    jobs.tune``) killed once a trial has finished, then the same sweep relaunched (``run`` of the
    same config, the CLI's code path) and run to its end."""
    import os
    import subprocess
    import sys
    import time

    from jobs.tune import DONE_FILE, experiment_finished, run

    tmp = tmp_path_factory.mktemp("resume")
    storage = tmp / "sweeps"
    cmd = [sys.executable, "-m", "jobs.tune", "--config", TINY, "--data", f"toy={toy_classification}",
           "--encoder", "random", "--storage", str(storage), "--name", "r", "--set", *FAST]
    env = {**os.environ, "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address}
    runs = storage / "r" / "toy" / "random" / "runs"
    log = tmp / "first.log"
    with log.open("w") as f:
        proc = subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT)
        deadline = time.time() + 900
        while not list(runs.glob(f"*/{DONE_FILE}")) and proc.poll() is None and time.time() < deadline:
            time.sleep(0.5)
        proc.kill()
        proc.wait()
    assert proc.returncode == -9, log.read_text()[-3000:]
    time.sleep(5)  # the dead driver's job ends: its trial drivers, Train controllers and workers exit
    finished = {p.parent.name: {q: q.stat().st_mtime_ns for q in p.parent.rglob("*") if q.is_file()}
                for p in runs.glob(f"*/{DONE_FILE}")}
    assert finished
    assert not (storage / "r" / "summary.md").exists()
    assert not experiment_finished(str(storage / "r" / "toy" / "random"), None, 4)  # trials left to run
    out = run(cli.load_config(SweepConfig, TINY, FAST, {"data": f"toy={toy_classification}",
                                                        "storage": str(storage), "name": "r"}))
    return ResumedSweep(storage / "r", runs, finished, out)


@pytest.mark.slow
def test_asha_sweep_of_4_trials_on_2_cpus_writes_tables_and_plot(resumed_sweep):
    """The tables and the plot of the 4-trial sweep agree with Tune's own records of every trial."""
    exp = _check_outputs(resumed_sweep.root)
    # every report carried the metric on the global step, every eval interval (a trial restarted
    # by the resume reports the steps after its last checkpoint again)
    for rs in exp.values():
        steps = sorted({r["step"] for r in rs})
        assert steps == list(range(5, 5 * len(steps) + 1, 5))
        assert all(0.0 <= r["val_score"] <= 1.0 for r in rs)


@pytest.mark.slow
def test_resume_after_killing_the_driver(resumed_sweep):
    """Kill the sweep driver once a trial has finished, relaunch the same sweep: it continues, every
    trial is accounted for, and the finished ones are not trained again."""
    out = resumed_sweep.out
    assert out["experiments"][0]["resumed"] is True and out["experiments"][0]["trials"] == 4
    exp = _tune_trials(resumed_sweep.root / "toy" / "random")
    assert set(resumed_sweep.finished) <= set(exp)
    for trial_id, files in resumed_sweep.finished.items():  # not retrained: its Train run is untouched
        now = {q: q.stat().st_mtime_ns for q in (resumed_sweep.runs / trial_id).rglob("*") if q.is_file()}
        assert now == files, trial_id


@pytest.mark.slow
def test_relaunching_a_finished_sweep_trains_and_reads_nothing(resumed_sweep, toy_classification, caplog):
    """Every trial has ended: a relaunch re-reads the results (the same tables), trains nothing, and
    builds its datasets without reading them (no cache to fill for trials that never run)."""
    import logging

    from jobs.tune import experiment_finished, run

    exp = resumed_sweep.root / "toy" / "random"
    assert experiment_finished(str(exp), None, 4)
    assert not experiment_finished(str(exp), None, 5)  # a trial not yet created
    assert not experiment_finished(str(resumed_sweep.root / "nowhere"), None, 1)
    csv_before = (resumed_sweep.root / "toy" / "results.csv").read_bytes()
    runs = {q: q.stat().st_mtime_ns for q in resumed_sweep.runs.rglob("*") if q.is_file()}
    with caplog.at_level(logging.INFO, logger="skyray.tune"):
        out = run(cli.load_config(SweepConfig, TINY, FAST, {"data": f"toy={toy_classification}",
                                                            "storage": str(resumed_sweep.root.parent),
                                                            "name": "r"}))
    assert "every trial has ended: nothing to train" in caplog.text
    assert out["experiments"][0]["resumed"] is True and out["experiments"][0]["trials"] == 4
    assert (resumed_sweep.root / "toy" / "results.csv").read_bytes() == csv_before
    assert {q: q.stat().st_mtime_ns for q in resumed_sweep.runs.rglob("*") if q.is_file()} == runs


@pytest.mark.slow
def test_a_trial_with_a_nan_score_is_recorded_with_its_reason(ray_session, tmp_path, toy_classification):
    """Trials whose loss turns NaN (``debug.nan_loss_at_step``) report ``val_score`` NaN, end without a
    Tune retry, and the sweep still finishes: the tables list them as errors with the reason, and no
    best config is claimed."""
    import json

    from jobs.tune import DONE_FILE, FAILED, run

    out = run(_cfg(tmp_path, toy_classification, "num_samples=2", "finetune.debug.nan_loss_at_step=2",
                   name="nan"))
    assert out["experiments"] == [{"benchmark": "toy", "encoder": "random", "trials": 2, "resumed": False,
                                   "trial_steps": 4, "best": None}]
    root = tmp_path / "sweeps" / "nan"
    exp = _tune_trials(root / "toy" / "random")
    assert len(exp) == 2
    reason = "non-finite loss at step 2"
    for trial_id, rs in exp.items():
        assert all(r["step"] == 2 and r["val_score"] != r["val_score"] for r in rs)  # NaN, step 2 only
        assert rs[-1][FAILED].startswith(reason)
        done = json.loads((root / "toy" / "random" / "runs" / trial_id / DONE_FILE).read_text())
        assert done[FAILED] == rs[-1][FAILED]
    row = next(csv.DictReader(io.StringIO((root / "toy" / "results.csv").read_text())))
    assert (row["trials"], row["completed"], row["errored"], row["best_trial"]) == ("2", "0", "2", "")
    md = (root / "toy" / "results.md").read_text()
    for trial_id in exp:
        assert re.search(rf"\| {trial_id} \|.*\| -inf \| 2 \| [^|]+ \| error: {reason} ", md), md
    assert "| random | – |" in (root / "summary.md").read_text()


def test_recording_a_placement_group_never_fails_the_group_start(ray_session, caplog):
    """The registry is bookkeeping: when it is gone (its node died), a worker group still starts.
    Raising there failed every restart after its placement group was made, and the leaked groups
    filled the surviving node (the sweep drill's hang)."""
    from types import SimpleNamespace

    from jobs.tune import RecordPlacementGroup

    handle = SimpleNamespace(placement_group="pg")
    group = SimpleNamespace(get_worker_group_state=lambda: SimpleNamespace(placement_group_handle=handle))
    RecordPlacementGroup("skyray-tune-pgs-gone", "t1").after_worker_group_start(group)
    assert "trial t1: placement group not registered (ValueError)" in caplog.text
