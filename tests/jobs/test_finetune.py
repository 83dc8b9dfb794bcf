"""jobs.finetune: config errors before any work, the task model (heads per task, linear probe freezing,
layer-wise LR decay, official SpectralGPT and our own encoder weights), the per-batch functions, and
end-to-end runs on toy benchmarks (``make_benchmark``) whose test metrics are recomputed by hand from the
saved predictions."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from jobs.cli import ConfigError, load_config
from jobs.finetune import FinetuneConfig, prepare, run
from jobs.train.data import make_eval_collate_fn, make_finetune_preprocess_fn, make_spectralgpt_pair_fn
from jobs.train.family import family_of
from jobs.train.task import build_task_model, layer_decay_groups, load_encoder
from models.checkpoint import export_safetensors
from tests.jobs.conftest import TOY_CLASSES, make_benchmark

REPO = Path(__file__).resolve().parents[2]
PRESETS = sorted((REPO / "configs" / "finetune").glob("*.yaml"))
SGPT = REPO / "configs" / "finetune" / "spectralgpt_tiny.yaml"
SKY = REPO / "configs" / "finetune" / "skysense_tiny.yaml"
TASKS = ("classification", "multilabel", "segmentation", "change")


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """One toy benchmark per task (lazily built, shared by the module)."""
    root = tmp_path_factory.mktemp("toy")
    made: dict[str, Path] = {}

    def get(task: str) -> Path:
        if task not in made:
            made[task] = root / task
            make_benchmark(made[task], task)
        return made[task]

    return get


def _cfg(preset: Path, data: Path, storage: Path, *overrides: str) -> FinetuneConfig:
    return load_config(FinetuneConfig, preset, [f"data.path={data}", f"storage={storage}", *overrides])


def _official_checkpoint(path: Path, seed: int = 0) -> dict[str, torch.Tensor]:
    """An official-layout SpectralGPT training checkpoint of the tiny preset (separate q/k/v, decoder,
    ``module.`` prefix, ``args`` Namespace) written to ``path``; its state dict."""
    from tests.models.test_checkpoint import TINY, official_state_dict

    ref, sd = official_state_dict(TINY, seed=seed)
    torch.save({"model": {f"module.{k}": v for k, v in sd.items()}, "args": argparse.Namespace(lr=1e-3),
                "epoch": 99}, path)
    return sd


def _our_export(name: str, path: Path, seed: int = 1) -> dict[str, torch.Tensor]:
    """An encoder of preset ``name`` exported as ``jobs.export`` does (encoder tensors only); its tensors."""
    from models.registry import create, create_pretrainer

    torch.manual_seed(seed)
    pre = create_pretrainer(name, img_size=32)
    sd = family_of(name).encoder_state_dict(pre.state_dict())
    with torch.device("meta"):
        enc = create(name, img_size=32)
    export_safetensors(enc, path, enc.config, state_dict=sd)
    return sd


# ------------------------------------------------------------------------------------ config


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_every_preset_validates(preset):
    cfg = load_config(FinetuneConfig, preset, [])
    assert cfg.total_steps > 0 and cfg.model.name and cfg.checkpoint.every_steps % cfg.eval.every_steps == 0


@pytest.mark.parametrize(
    "overrides, match",
    [
        (["mode=full"], r"mode"),
        (["encoder=weights.bin"], r"encoder 'weights.bin' must be 'random' or a weights file"),
        (["data.s2_slot=all"], r"data\.s2_slot 'all'"),
        (["deepspeed.zero_stage=3"], r"deepspeed\.zero_stage 3 is not supported"),
        (["checkpoint.every_steps=15"], r"checkpoint\.every_steps 15 must be a multiple of "
                                        r"eval\.every_steps"),
        (["drop_path=1.5"], r"drop_path"),
        (["layer_decay=0"], r"layer_decay"),
        (["task=detection"], r"task"),
        (["eval.every_steps=0"], r"eval\.every_steps"),
    ],
)
def test_invalid_config_names_the_field(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config(FinetuneConfig, SGPT, overrides)


def test_prepare_checks_before_any_work(toy, shards_dir, tmp_path):
    data = toy("classification")
    cases = [
        ([], r"data\.path is not set", None),
        (["encoder=/nowhere/w.safetensors"], r"encoder '/nowhere/w.safetensors': weights file not found",
         data),
        ([], r"holds shards without labels", shards_dir),
        (["task=segmentation"], r"task 'segmentation' does not match the shards' task 'classification'",
         data),
        (["stages=[{img_size: 64, steps: 2, batch_size: 4}]"], r"stages\.0\.img_size 64 exceeds the shards' "
                                                               r"tile_px 32", data),
        (["stages=[{img_size: 20, steps: 2, batch_size: 4}]"], r"stages\.0\.img_size 20 is not a multiple of "
                                                               r"the encoder's patch size 8", data),
        (["model.name=vit_tiny"], r"model: model 'vit_tiny' belongs to no known family", data),
    ]
    for overrides, match, path in cases:
        over = [f"storage={tmp_path}", *overrides] + ([f"data.path={path}"] if path else [])
        with pytest.raises(ConfigError, match=match):
            prepare(load_config(FinetuneConfig, SGPT, over))
    novel = tmp_path / "noval"
    make_benchmark(novel, "classification", splits={"train": 4, "test": 2})
    with pytest.raises(ConfigError, match=r"has no 'val' rows"):
        prepare(_cfg(SGPT, novel, tmp_path))
    # an official SpectralGPT checkpoint does not fit a SkySense preset: named before any work
    _official_checkpoint(tmp_path / "SpectralGPT.pth")
    with pytest.raises(ConfigError, match=r"encoder '.*SpectralGPT\.pth' does not fit model skysense_tiny"):
        prepare(_cfg(SKY, data, tmp_path, f"encoder={tmp_path / 'SpectralGPT.pth'}"))


# ------------------------------------------------------------------------------------ task model


@pytest.mark.parametrize("name", ["spectralgpt_tiny", "skysense_tiny"])
@pytest.mark.parametrize("task", TASKS)
def test_task_model_every_task_and_family(name, task):
    """The head per task: logits of the right shape, a finite loss, gradients into head and encoder."""
    torch.manual_seed(0)
    k = len(TOY_CLASSES[task])
    model = build_task_model(name, {"img_size": 32}, task=task, num_classes=k, frozen=False, channels=16)
    b, t = 2, 2 if task == "change" else 1
    if name.startswith("spectralgpt"):
        x = torch.randn(b, t, 12, 32, 32) if task == "change" else torch.randn(b, 12, 32, 32)
        batch = {"x": x}
    else:
        batch = {"s2": torch.randn(b, t, 10, 32, 32), "s2_doy": torch.full((b, t), 100),
                 "s2_valid": torch.ones(b, t, dtype=torch.bool), "s1": torch.randn(b, t, 2, 32, 32),
                 "s1_doy": torch.full((b, t), 100), "s1_valid": torch.ones(b, t, dtype=torch.bool),
                 "lonlat": torch.tensor([[11.0, 48.0]] * b)}
    label = {"classification": torch.tensor([0, 2]), "multilabel": torch.tensor([[1, 0, 1], [0, 0, 1]]),
             "segmentation": torch.randint(0, 3, (b, 32, 32)),
             "change": torch.randint(0, 2, (b, 32, 32))}[task]
    out = model({**batch, "label": label})
    shape = {"classification": (b, k), "multilabel": (b, k)}.get(task, (b, k, 32, 32))
    assert out["logits"].shape == shape and torch.isfinite(out["loss"])
    out["loss"].backward()
    assert all(p.grad is not None for p in model.head.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder.parameters())


def test_change_compares_the_two_dates():
    """Identical dates and dates that differ give different change logits (the head sees both)."""
    torch.manual_seed(0)
    model = build_task_model("spectralgpt_tiny", {}, task="change", num_classes=2, frozen=False,
                             channels=16).eval()
    a = torch.randn(1, 12, 32, 32)
    same = model.predict({"x": torch.stack([a, a], 1)})
    diff = model.predict({"x": torch.stack([a, a + 3.0], 1)})
    assert not torch.allclose(same, diff)


def test_linear_probe_freezes_the_encoder():
    torch.manual_seed(0)
    model = build_task_model("spectralgpt_tiny", {}, task="classification", num_classes=3, frozen=True)
    grad_mode = []
    model.encoder.blocks[0].register_forward_hook(lambda m, i, o: grad_mode.append(torch.is_grad_enabled()))
    model.train()
    assert not model.encoder.training and model.head.training
    assert not any(p.requires_grad for p in model.encoder.parameters())
    before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    opt = torch.optim.SGD([p for g in layer_decay_groups(model, 0.0, 1.0) for p in g["params"]], lr=1.0)
    out = model({"x": torch.randn(4, 12, 32, 32), "label": torch.tensor([0, 1, 2, 0])})
    out["loss"].backward()
    opt.step()
    assert grad_mode and not any(grad_mode)  # features computed under no_grad
    assert all(p.grad is None for p in model.encoder.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.encoder.state_dict().items())
    assert {id(p) for g in layer_decay_groups(model, 0.0, 1.0) for p in g["params"]} == \
        {id(p) for p in model.head.parameters()}


def test_layer_decay_groups_scale_by_depth():
    """spectralgpt_tiny (depth 2): embeddings layer 0 -> d³, block 0 -> d², block 1 -> d, norm + head 1;
    no weight decay on 1-D tensors and position embeddings."""
    model = build_task_model("spectralgpt_tiny", {}, task="classification", num_classes=3, frozen=False)
    groups = layer_decay_groups(model, 0.05, 0.5)
    scale = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    wd = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    params = dict(model.named_parameters())
    expect = {"encoder.patch_embed.proj.weight": 0.125, "encoder.pos_embed_spatial": 0.125,
              "encoder.blocks.0.attn.qkv.weight": 0.25, "encoder.blocks.1.mlp.fc1.weight": 0.5,
              "encoder.norm.weight": 1.0, "head.fc.weight": 1.0}
    for name, s in expect.items():
        assert scale[id(params[name])] == s, name
    assert wd[id(params["encoder.blocks.0.attn.qkv.weight"])] == 0.05
    assert wd[id(params["encoder.pos_embed_spatial"])] == 0.0 and wd[id(params["head.fc.bias"])] == 0.0
    assert len(scale) == len(params)  # every trainable parameter in exactly one group
    sky = build_task_model("skysense_tiny", {}, task="classification", num_classes=3, frozen=False)
    s = {n: g["lr_scale"] for g in layer_decay_groups(sky, 0.0, 0.5) for n in
         [k for k, p in sky.named_parameters() if any(p is q for q in g["params"])]}
    assert s["head.fc.weight"] == 1.0 and s["encoder.geo.prototypes"] == 1.0
    assert s["encoder.s2_encoder.patch_embed.weight"] < s["encoder.s2_encoder.blocks.1.attn.qkv.weight"] < \
        s["encoder.fusion_blocks.0.attn.qkv.weight"] < 1.0


def test_official_spectralgpt_checkpoint_loads_for_finetuning(tmp_path):
    """An official-layout ``SpectralGPT.pth`` (q/k/v, decoder, DDP prefix, args) through the one filter:
    missing keys are only the head's, the decoder is not part of the task model, and the features equal
    the official model's."""
    from bench._reference import OfficialMAE
    from tests.models.test_checkpoint import TINY

    sd = _official_checkpoint(tmp_path / "SpectralGPT.pth")
    model = build_task_model("spectralgpt_tiny", {}, task="classification", num_classes=3, frozen=False)
    missing = load_encoder(model, tmp_path / "SpectralGPT.pth")
    assert missing and all(k.startswith("head.") for k in missing)
    assert not any(k.startswith(("encoder.decoder", "encoder.mask_token")) for k in model.state_dict())
    ref = OfficialMAE(TINY).eval()
    ref.load_state_dict(sd)
    x = torch.randn(2, 12, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.eval().encoder.encode(x), ref.forward_features(x), atol=1e-5, rtol=0)
    # a checkpoint lacking an encoder tensor is refused, naming it
    del sd["blocks.1.norm1.weight"]
    with pytest.raises(RuntimeError, match=r"lacks 1 required keys.*encoder\.blocks\.1\.norm1\.weight"):
        load_encoder(model, {"model": sd})


@pytest.mark.parametrize("name", ["spectralgpt_tiny", "skysense_tiny"])
def test_our_export_loads(name, tmp_path):
    sd = _our_export(name, tmp_path / f"{name}.safetensors")
    model = build_task_model(name, {"img_size": 32}, task="segmentation", num_classes=3, frozen=True)
    assert all(k.startswith("head.") for k in load_encoder(model, tmp_path / f"{name}.safetensors"))
    enc = model.encoder.state_dict()
    assert set(sd) == set(enc)
    assert all(torch.equal(enc[k], v) for k, v in sd.items())


# ------------------------------------------------------------------------------------ per-batch functions


def _table(data: Path):
    return pq.read_table(sorted((data / "shards").glob("*.parquet"))[0])


def test_preprocess_adds_labels_and_ids(toy):
    manifest = json.loads((toy("segmentation") / "manifest.json").read_text())
    table = _table(toy("segmentation"))
    cfg = load_config(FinetuneConfig, SGPT, [])
    base = family_of("spectralgpt_tiny").make_preprocess(manifest, cfg)
    out = make_finetune_preprocess_fn(base, "segmentation", "label_mask", keep_ids=True)(table)
    from pipeline.shards import read_shards

    truth = read_shards(sorted((toy("segmentation") / "shards").glob("*.parquet"))[0])
    np.testing.assert_array_equal(out["label"], truth["label"])
    assert list(out["sample_id"]) == truth["sample_id"] and out["x"].shape == (table.num_rows, 12, 32, 32)
    cls = make_finetune_preprocess_fn(
        family_of("spectralgpt_tiny").make_preprocess(manifest, cfg), "classification", "label_class")
    ctable = _table(toy("classification"))
    np.testing.assert_array_equal(cls(ctable)["label"], ctable["label_class"].to_numpy())


def test_change_pair_keeps_both_dates(toy):
    manifest = json.loads((toy("change") / "manifest.json").read_text())
    table = _table(toy("change"))
    x = make_spectralgpt_pair_fn(manifest["band_stats"])(table)["x"]
    assert x.shape == (table.num_rows, 2, 12, 32, 32)
    assert not np.allclose(x[:, 0], x[:, 1])  # the second date carries the change


def test_eval_collate_pads_to_the_patch_with_ignored_labels():
    fn = make_eval_collate_fn(8, 255)
    batch = {"x": np.ones((2, 12, 20, 20), np.float32), "x_20m": np.ones((2, 8, 10, 10), np.float32),
             "label": np.zeros((2, 20, 20), np.uint8), "sample_id": np.array(["a", "b"])}
    out = fn(batch)
    assert out["x"].shape == (2, 12, 24, 24) and out["x_20m"].shape == (2, 8, 12, 12)
    assert out["x"][:, :, 20:].abs().sum() == 0 and (out["label"][:, 20:] == 255).all()
    assert (out["label"][:, :20, :20] == 0).all() and list(out["sample_id"]) == ["a", "b"]
    same = fn({"x": np.ones((1, 12, 16, 16), np.float32), "label": np.array([1])})
    assert same["x"].shape == (1, 12, 16, 16) and same["label"].tolist() == [1]


# ------------------------------------------------------------------------------------ end to end


def _hand_ap(scores: np.ndarray, target: np.ndarray) -> float:
    order = np.argsort(-scores, kind="stable")
    t = target[order]
    hits = np.cumsum(t)
    return float(np.sum(hits[t == 1] / (np.flatnonzero(t == 1) + 1)) / max(t.sum(), 1))


def _by_hand(task: str, pred: np.ndarray, label: np.ndarray, k: int) -> dict[str, float]:
    """The task's metrics from the saved predictions, in numpy (no torchmetrics)."""
    if task == "classification":
        return {"oa": float(np.mean(pred == label))}
    if task == "multilabel":
        per = [_hand_ap(pred[:, c], label[:, c]) for c in range(k) if label[:, c].any()]
        return {"map_micro": _hand_ap(pred.ravel(), label.ravel()), "map_macro": float(np.mean(per))}
    ok = label != 255
    p, t = pred[ok], label[ok]
    if task == "segmentation":
        ious = [np.sum((p == c) & (t == c)) / np.sum((p == c) | (t == c)) for c in range(k)
                if np.any((p == c) | (t == c))]
        return {"miou": float(np.mean(ious)), "oa": float(np.mean(p == t))}
    tp, fp, fn = np.sum((p == 1) & (t == 1)), np.sum((p == 1) & (t == 0)), np.sum((p == 0) & (t == 1))
    return {"precision": tp / (tp + fp), "recall": tp / (tp + fn), "f1": 2 * tp / (2 * tp + fp + fn)}


def _check_run(out: dict, data: Path, task: str) -> dict:
    """metrics.json, the reports and the saved predictions of a finished run agree; the test metrics
    equal the hand-computed ones over every test sample exactly once."""
    run_dir = Path(out["run_dir"])
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics == out["metrics"]
    assert {"benchmark", "task", "encoder", "mode", "best_step", "val", "test", "config"} <= set(metrics)
    assert metrics["task"] == task and metrics["benchmark"] == f"toy_{task}"
    report = out["report"]
    from jobs.train.metrics import METRICS, PRIMARY

    for m in METRICS[task]:
        assert f"val_{m}" in report and f"test_{m}" in report
    assert report["val_score"] == report[f"val_{PRIMARY[task]}"] and report["step"] == metrics["config"][
        "stages"][0]["steps"]
    parts = [np.load(p) for p in sorted((run_dir / "predictions").glob("test_rank*.npz"))]
    ids = np.concatenate([p["sample_id"] for p in parts if len(p["sample_id"])])
    manifest = json.loads((data / "manifest.json").read_text())
    assert sorted(ids) == sorted(set(ids)) and len(ids) == manifest["benchmark"]["splits"]["test"]
    pred = np.concatenate([p["pred"] for p in parts if len(p["sample_id"])])
    label = np.concatenate([p["label"] for p in parts if len(p["sample_id"])])
    hand = _by_hand(task, pred, label, len(TOY_CLASSES[task]))
    assert metrics["test"] == pytest.approx(hand, abs=1e-5)
    assert (run_dir / "plots" / "curves.png").stat().st_size > 1000
    assert out["best_checkpoint"] and Path(out["best_checkpoint"], "best.safetensors").exists()
    return metrics


def _probe(data: Path, storage: Path, name: str) -> dict:
    """A random tiny SpectralGPT, linear probe, 2 workers, 12 steps; one evaluation (+ the test pass) at
    the end keeps the run short (the other runs select among two)."""
    return run(_cfg(SGPT, data, storage, f"name={name}", "stages=[{img_size: 32, steps: 12, batch_size: 16}]",
                    "eval.every_steps=12", "checkpoint.every_steps=12", "head.channels=16"))


@pytest.fixture(scope="module")
def probe_runs() -> dict[str, dict]:
    """``_probe`` runs by task, kept for the module (the reproducibility test reruns one)."""
    return {}


@pytest.mark.slow
@pytest.mark.parametrize("task", TASKS)
def test_spectralgpt_linear_probe_every_task(ray_session, toy, tmp_path, task, probe_runs):
    """A random tiny SpectralGPT, linear probe, 2 workers, a few steps: the test metric of each task type
    equals the one computed by hand from the saved predictions; the separable toy is learnt."""
    data = toy(task)
    out = probe_runs[task] = _probe(data, tmp_path, task)
    metrics = _check_run(out, data, task)
    assert metrics["mode"] == "linear_probe" and metrics["encoder"] == "random"
    floor = {"classification": 0.9, "multilabel": 0.9, "segmentation": 0.4, "change": 0.5}[task]
    assert metrics["test"][{"classification": "oa", "multilabel": "map_micro", "segmentation": "miou",
                            "change": "f1"}[task]] > floor


@pytest.mark.slow
def test_finetune_from_an_official_spectralgpt_checkpoint(ray_session, toy, tmp_path, monkeypatch):
    """mode finetune (layer decay, drop path) from an official-layout SpectralGPT.pth on segmentation,
    named by a path relative to the working directory, as users type it (the workers run elsewhere)."""
    _official_checkpoint(tmp_path / "SpectralGPT.pth")
    data = toy("segmentation")
    monkeypatch.chdir(tmp_path)
    out = run(_cfg(SGPT, data, tmp_path, "name=ft", "mode=finetune",
                   "encoder=SpectralGPT.pth", "optim.base_lr=0.016",
                   "stages=[{img_size: 32, steps: 8, batch_size: 16}]",
                   "eval.every_steps=4", "checkpoint.every_steps=4", "head.channels=16"))
    metrics = _check_run(out, data, "segmentation")
    assert metrics["mode"] == "finetune" and metrics["encoder"] == str(tmp_path / "SpectralGPT.pth")


@pytest.mark.slow
def test_skysense_linear_probe_from_our_export_keeps_the_encoder(ray_session, toy, tmp_path):
    """SkySense (S2 series, S1, days of year) on the change pair, from our own export: the best weights'
    encoder is exactly the export (the linear probe never moved it)."""
    from safetensors.torch import load_file

    sd = _our_export("skysense_tiny", tmp_path / "skysense_tiny.safetensors")
    data = toy("change")
    out = run(_cfg(SKY, data, tmp_path, "name=sky", f"encoder={tmp_path / 'skysense_tiny.safetensors'}",
                   "stages=[{img_size: 32, steps: 8, batch_size: 8}]", "eval.every_steps=4",
                   "checkpoint.every_steps=4", "head.channels=16"))
    _check_run(out, data, "change")
    best = load_file(str(Path(out["best_checkpoint"], "best.safetensors")))
    for k, v in sd.items():
        torch.testing.assert_close(best[f"encoder.{k}"], v, rtol=0, atol=0)


def _losses(run_dir: Path) -> list[tuple[int, float]]:
    """(step, loss) of every step, from the last checkpoint's state."""
    state = sorted(run_dir.glob("checkpoint_*/skyray_state.json"))[-1]
    return [(r["step"], r["loss"]) for r in json.loads(state.read_text())["history"]]


@pytest.mark.parametrize("keep", [True, False])
def test_preserve_order_reaches_the_datasets_and_the_workers(ray_session, toy, tmp_path, keep):
    """``data.preserve_order`` is set on each prepared dataset's own context (the driver's DataContext
    is left alone) and on the options Ray Train's ingest gives the workers' splits."""
    from ray.data import DataContext

    from jobs.finetune import make_trainer

    before = DataContext.get_current().execution_options.preserve_order
    cfg, datasets = prepare(_cfg(SGPT, toy("classification"), tmp_path, f"data.preserve_order={keep}"))
    assert {ds.context.execution_options.preserve_order for ds in datasets.values()} == {keep}
    assert DataContext.get_current().execution_options.preserve_order == before
    opts = make_trainer(cfg, datasets).data_config._resolve_execution_options("train")
    assert opts.preserve_order == keep


@pytest.mark.slow
def test_the_same_seed_trains_the_same(ray_session, toy, tmp_path, probe_runs):
    """Two runs of one seeded config (2 workers, 2 prefetch threads, the shuffle buffer, augmentations)
    give bit-identical losses at every step and the same test metrics: the presets' ``data.preserve_order``
    keeps Ray Data's block, split and batch order, and augmentations follow each sample, not the order
    the prefetch threads happen to finish in. What a sweep needs to compare configs. (The first run is
    the classification probe's when that test ran in this session.)"""
    data = toy("classification")
    first = probe_runs.get("classification") or _probe(data, tmp_path / "a", "classification")
    second = _probe(data, tmp_path / "b", "classification")
    losses = [_losses(Path(o["run_dir"])) for o in (first, second)]
    assert len(losses[0]) == 12 and losses[0] == losses[1]
    assert first["metrics"]["test"] == second["metrics"]["test"]
