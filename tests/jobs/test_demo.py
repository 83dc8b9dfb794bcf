"""``jobs.demo``: the whole pipeline at the smallest sizes its own options give (one shared run), its rerun
reusing every stage, and its config errors before any work."""

from __future__ import annotations

import math
import re
import shlex
import time

import pytest

from jobs import cli
from jobs.demo import DemoConfig

#: the demo's own options, shrunk: a 258 px archive, 2 pretraining steps, 1 trial per encoder of 4 steps
SMALL = {
    "size_px": 258, "pretrain_steps": 2, "pretrain_batch": 8,
    "convert_overrides": ["options.per_class=8"],
    "tune_overrides": ["num_samples=1", "finetune.stages=[{img_size: 32, steps: 4, batch_size: 8}]",
                       "finetune.eval.every_steps=2", "finetune.checkpoint.every_steps=4",
                       "scheduler.grace_period=2"],
}
STAGES = ["archive", "ray start", "ingest", "pretrain-spectralgpt", "export-spectralgpt", "pretrain-skysense",
          "export-skysense", "convert", "tune-spectralgpt", "tune-skysense"]


@pytest.fixture(scope="module")
def demo_run(ray_session, tmp_path_factory):
    """The demo once, then again on the same folder; yields ``(out, first result, second result)``."""
    from jobs import demo

    out = tmp_path_factory.mktemp("demo") / "demo-out"
    cfg = DemoConfig.model_validate({**SMALL, "out": str(out)})
    first = demo.run(cfg)
    exports = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/export/*.safetensors")}
    t0 = time.perf_counter()
    second = demo.run(cfg)
    second["seconds"] = time.perf_counter() - t0
    second["exports_before"] = exports
    return out, first, second


def _table_rows(md: str) -> dict[str, list[str]]:
    """``results.md`` -> encoder -> its cells."""
    rows = [[c.strip() for c in line.strip("|").split("|")]
            for line in md.splitlines() if line.startswith("| ")]
    return {r[0]: r for r in rows[2:]}  # the header, then the separator row


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_demo_writes_every_stage_and_the_table(demo_run):
    out, first, _ = demo_run
    assert [t["stage"] for t in first["timings"]] == STAGES
    assert not any(t["reused"] for t in first["timings"])
    # every stage's output, under the one run folder
    assert (out / "archive" / "items.json").is_file() and list((out / "archive" / "truth").glob("*.tif"))
    assert (out / "ingest" / "manifest.json").is_file() and first["stages"]["ingest"]["rows"] > 0
    # the real flow on the ingested shards: each family pretrains (finite losses) and its export loads
    from models.registry import create

    for family, model in (("spectralgpt", "spectralgpt_tiny"), ("skysense", "skysense_tiny")):
        (run,) = out.glob(f"runs/pretrain-{model}-*")
        assert list(run.glob("checkpoint_*/skyray_state.json"))
        assert {p.name for p in (run / "export").iterdir()} == {f"{model}.safetensors", f"{model}.json"}
        hist = first["stages"][f"pretrain-{family}"]["history"]
        assert [h["step"] for h in hist] == [1, 2] and all(math.isfinite(h["loss"]) for h in hist), hist
        create(model, weights=str(run / "export" / f"{model}.safetensors"), img_size=32)
    assert first["stages"]["convert"]["written"] > 0
    assert (out / "bench" / "synthetic" / "manifest.json").is_file()
    for family in ("spectralgpt", "skysense"):
        sweep = out / "sweeps" / family
        assert (sweep / "summary.md").is_file() and (sweep / "synthetic" / "results.csv").is_file()
        assert (sweep / "synthetic" / "trials.png").read_bytes()[:4] == b"\x89PNG"
    assert all(p.endswith(".png") for p in first["plots"])
    # the table: the three encoders, each with its model and a test OA from its sweep's own results
    rows = _table_rows((out / "results.md").read_text())
    assert list(rows) == ["random", "spectralgpt", "skysense"]
    assert [rows[e][1] for e in rows] == ["spectralgpt_tiny", "spectralgpt_tiny", "skysense_tiny"]
    by_encoder = {r["encoder"]: r for r in first["rows"]}
    for enc, cells in rows.items():
        assert cells[2] == f"{100 * float(by_encoder[enc]['test_oa']):.2f}"
        assert int(cells[4]) == 1  # trials
    assert f"| {rows['skysense'][0]} |" in (out / "results.md").read_text()
    timings = (out / "timings.md").read_text()
    for stage in STAGES:
        assert re.search(rf"^\| {stage} \| \d+\.\d \|", timings, re.M), stage
    # the stages as commands, each one a module of this repository with its own flags
    lines = [ln for ln in (out / "commands.sh").read_text().splitlines() if not ln.startswith("#")]
    modules = [shlex.split(ln)[2] for ln in lines]
    assert modules == ["pipeline.synthetic", "jobs.ingest", "jobs.pretrain", "jobs.export", "jobs.pretrain",
                       "jobs.export", "jobs.convert", "jobs.tune", "jobs.tune"]


@pytest.mark.slow
def test_rerun_reuses_every_stage(demo_run):
    out, first, second = demo_run
    reused = {t["stage"]: t["reused"] for t in second["timings"]}
    assert reused == {s: s != "ray start" for s in STAGES}
    # the exports are not written again; the ingest and the conversion find their shards done
    exports = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/export/*.safetensors")}
    assert exports == second["exports_before"]
    assert second["stages"]["ingest"]["units_processed"] == 0
    assert second["stages"]["convert"]["shards_skipped"] == second["stages"]["convert"]["shards"]
    assert second["rows"] == first["rows"]
    assert second["seconds"] < sum(t["seconds"] for t in first["timings"]) / 2


@pytest.mark.parametrize(("overrides", "match"), [
    (["families=[spectralgpt, spectralgpt]"], "families lists a family twice"),
    (["families=[mae]"], r"families\.0"),
    (["size_px=100"], "size_px"),
    (["tune_config=configs/tune/none.yaml"], "tune_config: file not found"),
    (["tune_overrides=[num_samples=0]"], "num_samples"),
    (["tune_overrides=[scheduler.grace_period=10]"],
     r"scheduler\.grace_period 10 must be below the trials' 10 steps"),
    (["tune_overrides=['finetune.scaling.num_workers=0.5']"],
     r"(?s)with configs/finetune/spectralgpt_tiny\.yaml: .*scaling\.num_workers"),
    (["pretrain_overrides=[optim.base_lr=-1]"], r"optim\.base_lr"),
    (["convert_overrides=[options.tile_px=7]"], "tile_px"),
])
def test_config_errors_before_any_work(tmp_path, overrides, match):
    from jobs import demo

    with pytest.raises(cli.ConfigError, match=match):
        demo.run(cli.load_config(DemoConfig, None, [*overrides, f"out={tmp_path / 'out'}"]))
    assert not (tmp_path / "out").exists()
