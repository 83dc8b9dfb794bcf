"""jobs.pretrain end to end on synthetic shards: 2 CPU workers (gloo, fp32), tiny presets of both
models, ZeRO-2 and ZeRO-3, progressive stages, resume by relaunch, a killed worker, export.

Uses the session ``ray_session`` (2 CPUs); workers ask for 0.5 CPU each so Ray Data keeps a share.
"""

from __future__ import annotations

import glob
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from jobs.cli import ConfigError, load_config
from jobs.pretrain import NonFiniteLossError, PretrainConfig, default_name, run
from jobs.train.engine import DS_TAG
from jobs.train.schedules import lr_at

REPO = Path(__file__).resolve().parents[2]
PRESET_SGPT = REPO / "configs" / "pretrain" / "spectralgpt_tiny.yaml"
PRESETS = sorted((REPO / "configs" / "pretrain").glob("*.yaml"))


def _cfg(preset: str, shards_dir: Path, storage: Path, name: str, *overrides: str) -> PretrainConfig:
    return load_config(
        PretrainConfig,
        REPO / "configs" / "pretrain" / f"{preset}.yaml",
        [f"data.path={shards_dir}", f"storage={storage}", f"name={name}", "data.cache=true", *overrides],
    )


def _mean(xs):
    return sum(xs) / len(xs)


def _lr(step: int, cfg: PretrainConfig, batch: int, total: int) -> float:
    o = cfg.optim
    return lr_at(step, base_lr=o.base_lr, global_batch=batch, warmup_steps=o.warmup_steps, total_steps=total)


def _latest_checkpoint(run_dir: str) -> str:
    return sorted(glob.glob(f"{run_dir}/checkpoint_2*"))[-1]


def _zero_to_fp32_as_documented(ckpt: str, out_dir: Path) -> dict[str, torch.Tensor]:
    """``python <checkpoint>/zero_to_fp32.py <checkpoint> <out>`` (the README's command, no
    options), in a fresh interpreter; the consolidated fp32 state dict it writes."""
    p = subprocess.run([sys.executable, f"{ckpt}/zero_to_fp32.py", ckpt, str(out_dir)], cwd=out_dir.parent,
                       env={**os.environ, "DS_ACCELERATOR": "cpu"}, capture_output=True, text=True)
    assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
    return torch.load(out_dir / "pytorch_model.bin", map_location="cpu", weights_only=True)


# ------------------------------------------------------------------------------------ config


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_every_preset_validates(preset):
    cfg = load_config(PretrainConfig, preset, [])
    assert cfg.total_steps > 0 and cfg.model.name


@pytest.mark.parametrize(
    "overrides, match",
    [
        (["stages=[{img_size: 16, steps: 2, batch_size: 15}]"], r"stages\.0\.batch_size.*divisible"),
        (["deepspeed.zero_stage=5"], r"deepspeed\.zero_stage"),
        (["optim.lr=0.1"], r"optim\.lr"),
        (["optim.base_lr=-1"], r"optim\.base_lr"),
        (["deepspeed.offload_params=true"], r"offload_params needs zero_stage 3"),
        (["debug.kill_worker_at_step=3"], r"kill_marker is required"),
        (["model.mask_ratio=1.5"], r"model\.mask_ratio"),
        (["data.s2_slot=best"], r"data\.s2_slot"),
    ],
)
def test_invalid_config_names_the_field(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config(PretrainConfig, REPO / "configs/pretrain/spectralgpt_tiny.yaml", overrides)


def test_run_checks_before_any_work(shards_dir, tmp_path):
    big = "stages=[{img_size: 64, steps: 2, batch_size: 4}]"
    cfg = _cfg("spectralgpt_tiny", shards_dir, tmp_path, "x", big)
    with pytest.raises(ValueError, match=r"stages\.0\.img_size 64 exceeds the shards' tile_px 32"):
        run(cfg)
    cfg = load_config(PretrainConfig, PRESET_SGPT, [f"storage={tmp_path}"])
    with pytest.raises(ValueError, match=r"data\.path is not set"):
        run(cfg)
    cfg = _cfg("spectralgpt_tiny", tmp_path / "nowhere", tmp_path, "x")
    with pytest.raises(FileNotFoundError, match="no manifest.json"):
        run(cfg)


# ------------------------------------------------------------------------------------ training


@pytest.mark.slow
def test_spectralgpt_zero2_progressive_resume_export(ray_session, shards_dir, tmp_path):
    """ZeRO-2: loss falls over 24 steps across a 16 px -> 32 px stage switch; the export equals the
    trained weights; relaunching the same name with a longer schedule resumes at the same step."""
    stages = "stages=[{img_size: 16, steps: 8, batch_size: 16}, {img_size: 32, steps: 16, batch_size: 16}]"
    cfg = _cfg("spectralgpt_tiny", shards_dir, tmp_path, "sgpt", stages, "checkpoint.every_steps=8",
               "log.every_steps=4")
    out = run(cfg)
    hist = out["history"]
    assert [h["step"] for h in hist] == list(range(1, 25))
    assert [h["stage"] for h in hist] == [0] * 8 + [1] * 16
    assert out["starts"] == [0]
    losses = [h["loss"] for h in hist]
    assert _mean(losses[-4:]) < 0.85 * _mean(losses[:4]), losses
    m = out["metrics"]
    assert m["step"] == 24 and m["stage"] == 1
    assert 0.0 <= m["data_wait_frac"] <= 1.0 and m["samples_per_s"] > 0
    for i, h in enumerate(hist):  # the LR is the pure function of the step
        assert h["lr"] == pytest.approx(_lr(i, cfg, 16, 24))

    run_dir = out["run_dir"]
    assert len(glob.glob(f"{run_dir}/checkpoint_2*")) == cfg.checkpoint.keep  # keep the last K
    for png in ("loss.png", "reconstruction.png"):
        assert Path(run_dir, "plots", png).stat().st_size > 1000
    assert glob.glob(f"{run_dir}/tensorboard/events.out.tfevents.*")

    # export round trip: registry + safetensors == the trained (ZeRO-2 module) weights, encoder only
    from models.registry import create

    ckpt = _latest_checkpoint(run_dir)
    trained = torch.load(Path(ckpt, DS_TAG, "mp_rank_00_model_states.pt"), weights_only=False)["module"]
    model = create("spectralgpt_tiny", weights=out["export"]["weights"], img_size=32)
    sd = model.state_dict()
    enc = [k for k in trained if not k.startswith(("decoder_", "mask_token"))]
    assert enc and all(torch.equal(sd[k], trained[k]) for k in enc)
    from safetensors import safe_open

    with safe_open(out["export"]["weights"], "pt") as f:
        assert set(f.keys()) == set(enc)  # no decoder in the export
    # DeepSpeed's own zero_to_fp32.py, as documented, gives the same encoder weights as our export
    full = _zero_to_fp32_as_documented(ckpt, tmp_path / "fp32")
    assert set(enc) <= set(full)
    for k in enc:
        torch.testing.assert_close(sd[k], full[k].float(), rtol=0, atol=0)

    # relaunch with the same name and a longer second stage: resumes at step 24, same LR function
    stages2 = "stages=[{img_size: 16, steps: 8, batch_size: 16}, {img_size: 32, steps: 24, batch_size: 16}]"
    cfg2 = _cfg("spectralgpt_tiny", shards_dir, tmp_path, "sgpt", stages2, "checkpoint.every_steps=8",
                "log.every_steps=4", "log.plots=false")
    out2 = run(cfg2)
    assert out2["starts"] == [0, 24]
    assert [h["step"] for h in out2["history"]] == list(range(1, 33))
    assert out2["history"][24]["lr"] == pytest.approx(_lr(24, cfg, 16, 32))
    assert out2["history"][:24] == hist  # the first 24 steps came from the checkpoint, not re-run


@pytest.mark.slow
def test_skysense_zero3_survives_worker_kill(ray_session, shards_dir, tmp_path):
    """ZeRO-3 + EMA teacher: the last rank SIGKILLs itself at step 6; the run restarts from the
    step-4 checkpoint (not 0) and finishes; DeepSpeed's own zero_to_fp32 reads our checkpoint."""
    marker = tmp_path / "killed"
    cfg = _cfg("skysense_tiny", shards_dir, tmp_path, "sky", "deepspeed.zero_stage=3",
               "stages=[{img_size: 32, steps: 12, batch_size: 8}]", "checkpoint.every_steps=4",
               "log.every_steps=4", "debug.kill_worker_at_step=6", f"debug.kill_marker={marker}")
    out = run(cfg)
    assert marker.read_text().startswith("killed rank 1 at step 6")
    assert out["starts"] == [0, 4]  # resumed from the checkpoint at step 4
    hist = out["history"]
    assert [h["step"] for h in hist] == list(range(1, 13))
    assert out["metrics"]["step"] == 12
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in hist)
    assert {"loss_pixel", "loss_object", "loss_image", "loss_cross_modal", "loss_geo"} <= set(hist[-1])
    for h in hist:
        assert h["lr"] == pytest.approx(_lr(h["step"] - 1, cfg, 8, 12))

    # DeepSpeed's own zero_to_fp32.py on our ZeRO-3 checkpoint, run exactly as the README writes it
    ckpt = _latest_checkpoint(out["run_dir"])
    full = _zero_to_fp32_as_documented(ckpt, tmp_path / "fp32")
    assert any(k.startswith("teacher.") for k in full)  # the whole module, teacher included

    # export round trip: the student encoder, loadable by the registry without pickle
    from models.registry import create

    model = create("skysense_tiny", weights=out["export"]["weights"], img_size=32)
    sd = model.state_dict()
    student = {k.removeprefix("student."): v for k, v in full.items() if k.startswith("student.")}
    assert set(student) <= set(sd)
    for k, v in student.items():
        torch.testing.assert_close(sd[k], v.float(), rtol=0, atol=0)
    # the teacher moved by EMA (not frozen at init, not equal to the student)
    t = {k.removeprefix("teacher."): v for k, v in full.items() if k.startswith("teacher.")}
    k = next(k for k in student if k.endswith("weight") and student[k].ndim == 2)
    assert not torch.equal(t[k], student[k])


@pytest.mark.slow
def test_non_finite_loss_fails_the_run_at_once_naming_the_step(ray_session, shards_dir, tmp_path):
    """A deterministic NaN is not retried from the last checkpoint (it would recur): the worker
    group starts once although max_failures allows restarts and a checkpoint exists."""
    cfg = _cfg("spectralgpt_tiny", shards_dir, tmp_path, "nan", "debug.nan_loss_at_step=3",
               "stages=[{img_size: 16, steps: 6, batch_size: 8}]", "max_failures=2",
               "checkpoint.every_steps=1", "log.every_steps=1", "log.plots=false")
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at step 3 \(stage 0") as e:
        run(cfg)
    assert e.value.step == 3 and e.value.starts == [0]


# ------------------------------------------------------------------------------------ object storage


@pytest.mark.slow
def test_s3_data_and_checkpoints_through_the_cli_and_a_relaunch_without_name_resumes(s3_server, s3_bucket,
                                                                                      shards_dir, tmp_path):
    """`python -m jobs.pretrain` with --data and --storage on the loopback S3 server and no --name: shards
    are read from S3 and checkpoints land in S3; the first launch dies at step 3 (no restarts allowed)
    after its step-2 checkpoint; the same command again finds that run by its default name, finishes from
    step 2 and exports to S3.

    A subprocess, so its own local Ray starts with the S3 server's AWS_* settings in the environment
    (on a cluster the nodes carry them); the test session's Ray predates the server."""
    import json

    import s3fs

    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_server["endpoint_url"]})
    fs.put(str(shards_dir) + "/", f"{s3_bucket}/shards/", recursive=True)
    env = {**os.environ, "DS_ACCELERATOR": "cpu"}
    env.pop("RAY_ADDRESS", None)
    fields = {"data.path": f"s3://{s3_bucket}/shards", "storage": f"s3://{s3_bucket}/runs"}
    overrides = ["stages=[{img_size: 16, steps: 4, batch_size: 8}]", "checkpoint.every_steps=2",
                 "log.every_steps=2", "log.plots=false", "scaling.num_workers=1", "data.cache=true",
                 "max_failures=0", "debug.kill_worker_at_step=3", f"debug.kill_marker={tmp_path / 'killed'}"]
    cmd = [sys.executable, "-m", "jobs.pretrain", "--config", str(PRESET_SGPT), "--data", fields["data.path"],
           "--storage", fields["storage"], "--set", *overrides]
    run_dir = f"{s3_bucket}/runs/{default_name(load_config(PretrainConfig, PRESET_SGPT, overrides, fields))}"

    def checkpoints() -> list[str]:
        return sorted(k for k in fs.ls(run_dir, refresh=True) if "/checkpoint_2" in k)

    first = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode != 0, (first.stdout + first.stderr)[-4000:]
    assert (tmp_path / "killed").read_text().startswith("killed rank 0 at step 3")
    assert run_dir in fs.ls(f"{s3_bucket}/runs", refresh=True)  # the run under its default name
    state = json.loads(fs.cat(f"{checkpoints()[-1]}/skyray_state.json"))
    assert state["step"] == 2 and state["starts"] == [0]
    again = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, (again.stdout + again.stderr)[-4000:]
    assert "start at step 2" in again.stdout + again.stderr, (again.stdout + again.stderr)[-3000:]
    state = json.loads(fs.cat(f"{checkpoints()[-1]}/skyray_state.json"))
    assert state["starts"] == [0, 2] and [h["step"] for h in state["history"]] == [1, 2, 3, 4]
    assert fs.ls(f"{run_dir}/export")


def _operators(ds) -> list[str]:
    return [type(op).__name__ for op in ds._logical_plan.dag.post_order_iter()]


def test_streaming_dataset_has_no_all_to_all_barrier(ray_session, shards_dir, tmp_path):
    """Not cached: file-order shuffle + the workers' local buffers, no block-order shuffle (an
    all-to-all that materialises every block before the first batch). Cached: materialised once,
    then block order reshuffled per epoch."""
    from ray.data._internal.logical.operators.all_to_all_operator import AbstractAllToAll

    from jobs.train.data import build_dataset, read_manifest

    cfg = _cfg("spectralgpt_tiny", shards_dir, tmp_path, "x", "data.cache=false")
    manifest = read_manifest(cfg.data.path, cfg.data.storage)
    ds = build_dataset(cfg, manifest)
    ops = list(ds._logical_plan.dag.post_order_iter())
    assert not [op for op in ops if isinstance(op, AbstractAllToAll)], _operators(ds)
    assert "RandomizeBlocks" in _operators(build_dataset(cfg.model_copy(update={"data": cfg.data.model_copy(
        update={"cache": True})}), manifest))


def test_default_name_is_the_config_digest():
    a = load_config(PretrainConfig, PRESET_SGPT, ["data.path=/d", "storage=/s"])
    assert default_name(a) == default_name(load_config(PretrainConfig, PRESET_SGPT, ["data.path=/d",
                                                                                      "storage=/s"]))
    assert default_name(a) == default_name(a.model_copy(update={"name": "ignored"}))
    assert re.fullmatch(r"pretrain-spectralgpt_tiny-[0-9a-f]{8}", default_name(a))
    b = load_config(PretrainConfig, PRESET_SGPT, ["data.path=/d", "storage=/s", "seed=1"])
    assert default_name(a) != default_name(b)


def test_read_manifest_takes_contract_v1_to_v3_only(tmp_path):
    import json

    from jobs.train.data import read_manifest
    from pipeline.config import StorageConfig

    for version in (1, 2, 3):
        (tmp_path / "manifest.json").write_text(json.dumps({"schema_version": version}))
        assert read_manifest(str(tmp_path), StorageConfig())["schema_version"] == version
    (tmp_path / "manifest.json").write_text(json.dumps({"schema_version": 4}))
    with pytest.raises(ValueError, match=r"manifest schema_version 4 is not one of \(1, 2, 3\)"):
        read_manifest(str(tmp_path), StorageConfig())
    with pytest.raises(FileNotFoundError, match="no manifest.json under data.path"):
        read_manifest(str(tmp_path / "missing"), StorageConfig())
