"""SkySense pretraining (models.skysense_pretrain): views, each loss's property, the teacher
(its own build, EMA after every step, under ZeRO-3 on two ranks), options and errors."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys

import pytest
import torch

from models.registry import create, create_pretrainer
from models.skysense import build_pretrainer, region_index
from models.skysense_pretrain import (
    SkySensePretrainConfig,
    SkySensePretrainer,
    augment_views,
    dihedral_table,
)
from tests.models.test_skysense import make_batch


def test_dihedral_table_matches_torch_and_inverts():
    img = torch.arange(16.0).view(4, 4)
    table = dihedral_table(4, 4)
    expected = [torch.rot90(img.flip(-1) if c >= 4 else img, c % 4, dims=(0, 1)) for c in range(8)]
    for c in range(8):
        torch.testing.assert_close(img.flatten()[table[c]].view(4, 4), expected[c])
        back = img.flatten()[table[c]][table[c].argsort()]
        torch.testing.assert_close(back, img.flatten())
    assert len({tuple(t.tolist()) for t in table}) == 8
    rect = dihedral_table(2, 3)
    assert rect.shape == (8, 6) and rect[1].tolist() == list(range(6))


def test_augment_views_keeps_correspondence_and_dates():
    torch.manual_seed(0)
    batch = make_batch(b=4, t=5, size=16)
    batch["lonlat"] = torch.zeros(4, 2)
    batch["s2_valid"][0] = torch.tensor([False, False, True, False, False])
    view, codes = augment_views(batch, gain_jitter=0.0, noise_std=0.0, date_drop=0.9)
    assert (view["s2_valid"] <= batch["s2_valid"]).all()  # never revives padding
    assert view["s2_valid"].any(1).all() and view["s1_valid"].any(1).all()  # one date always kept
    table = dihedral_table(16, 16)
    for i, c in enumerate(codes.tolist()):  # one transform for every band and date of a sample
        src = batch["s2"][i].flatten(-2)[..., table[c]].view_as(batch["s2"][i])
        torch.testing.assert_close(view["s2"][i], src)
        src1 = batch["s1"][i].flatten(-2)[..., table[c]].view_as(batch["s1"][i])
        torch.testing.assert_close(view["s1"][i], src1)
    # patch-grid features of the view, mapped back with the inverse table, sit on the original grid
    pool = lambda x: torch.nn.functional.avg_pool2d(x.flatten(1, 2), 4).flatten(-2)  # (B, C, 16)
    inv = dihedral_table(4, 4).argsort(1)[codes]
    back = pool(view["s2"]).gather(-1, inv[:, None].expand(-1, 50, -1))
    torch.testing.assert_close(back, pool(batch["s2"]))


@pytest.fixture()
def pre() -> SkySensePretrainer:
    torch.manual_seed(0)
    return create_pretrainer("skysense_tiny", proj_dim=16, pixel_samples=64)


def test_pretrainer_outputs_and_gradients(pre):
    out = pre(make_batch())
    assert set(out) == {"loss", "loss_pixel", "loss_object", "loss_image", "loss_cross_modal", "loss_geo"}
    assert all(v.ndim == 0 and torch.isfinite(v) for v in out.values())
    out["loss"].backward()
    assert all(p.grad is None for p in pre.teacher.parameters())
    assert all(not p.requires_grad for p in pre.teacher_heads.parameters())
    grads = {n: p.grad for n, p in pre.named_parameters() if p.requires_grad}
    assert [n for n, g in grads.items() if g is None] == []  # DDP needs no find_unused_parameters
    for name in (
        "student.s2_encoder.patch_embed.weight",
        "student.s1_encoder.patch_embed.weight",
        "student.geo.prototypes",
        "heads.centres",
        "heads.s1.fc1.weight",
    ):
        assert grads[name] is not None and grads[name].abs().sum() > 0, name
    assert not pre.teacher.training and pre.train().student.training and not pre.teacher.training


def test_contrastive_losses_minimal_for_aligned_features(pre):
    torch.manual_seed(1)
    feats = torch.randn(4, 16, pre.student.embed_dim)
    perm = torch.randperm(16)
    with torch.no_grad():
        assert pre.pixel_loss(feats, feats) < pre.pixel_loss(feats, feats[:, perm])
        assert pre.object_loss(feats, feats) < pre.object_loss(feats, feats[:, perm])
        pooled = feats.mean(1)
        assert pre.image_loss(pooled, pooled) < pre.image_loss(pooled, pooled[[1, 2, 3, 0]])


def test_ema_update_moves_teacher_by_the_right_amount(pre):
    with torch.no_grad():
        for p in pre.student.parameters():
            p.add_(torch.randn_like(p))
        for p in pre.heads.parameters():
            p.add_(1.0)
    t_old = [p.clone() for m in (pre.teacher, pre.teacher_heads) for p in m.parameters()]
    s = list(pre.student.parameters()) + list(pre.heads.parameters())
    pre.momentum_update(0.9)
    t_new = list(pre.teacher.parameters()) + list(pre.teacher_heads.parameters())
    for old, new, stu in zip(t_old, t_new, s):
        torch.testing.assert_close(new, 0.9 * old + 0.1 * stu)
    pre.momentum_update(0.0)
    for new, stu in zip(pre.teacher.parameters(), pre.student.parameters()):
        torch.testing.assert_close(new, stu)
    with pytest.raises(ValueError, match=r"momentum must be in \[0, 1\]"):
        pre.momentum_update(1.5)


def test_a_few_steps_lower_the_loss():
    torch.manual_seed(0)
    pre = create_pretrainer("skysense_tiny", proj_dim=16, pixel_samples=64)
    opt = torch.optim.AdamW([p for p in pre.parameters() if p.requires_grad], lr=2e-3)
    batch = make_batch(b=4)
    batch["lonlat"] = torch.tensor([[11.5, 48.1], [-60.0, -3.0], [100.0, 30.0], [11.0, 48.0]])
    losses = []
    for _ in range(30):
        out = pre(batch)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        pre.momentum_update(0.9)
        losses.append(out["loss"].item())
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < first - 0.5, losses


def test_prototype_ema_moves_only_present_regions_toward_their_features():
    torch.manual_seed(0)
    pre = create_pretrainer("skysense_tiny", proj_dim=16, proto_momentum=0.5)
    protos = pre.student.geo.prototypes
    assert not protos.requires_grad
    before = protos.detach().clone()
    batch = make_batch()  # regions of (11.5, 48.1) and (-60, -3) on the 4 x 2 grid
    region = region_index(batch["lonlat"], 4, 2)
    pre.train()(batch)["loss"].backward()
    moved = (protos - before).abs().sum(dim=(1, 2)) > 0
    assert moved.nonzero().flatten().tolist() == sorted(region.tolist())
    # with m = 0 every prototype of the region becomes the (normalized) mean of its features
    f = torch.randn(1, 1, 32).expand(1, 16, 32)
    pre.update_prototypes(f, torch.tensor([3]), m=0.0)
    torch.testing.assert_close(protos[3], torch.nn.functional.normalize(f[0, :4], dim=-1))
    with pytest.raises(ValueError, match="proto_momentum"):
        create_pretrainer("skysense_tiny", proto_momentum=1.0)


def test_pretrainer_errors_and_builder():
    torch.manual_seed(0)
    pre = build_pretrainer("skysense_tiny", fusion_depth=2, proj_dim=8, num_clusters=4)
    assert pre.student.config.fusion_depth == 2 and pre.heads.centres.shape == (4, 8)
    batch = make_batch()
    del batch["lonlat"]  # optional: everything falls in region 0
    assert torch.isfinite(pre(batch)["loss"])
    with pytest.raises(KeyError, match="lacks"):
        pre({"s2": batch["s2"]})
    with pytest.raises(TypeError, match=r"unknown SkySense pretrainer option\(s\) \['not_an_option'\]"):
        build_pretrainer("skysense_tiny", not_an_option=1)
    with pytest.raises(TypeError, match="not a SkySense preset"):
        build_pretrainer("spectralgpt_tiny")
    with pytest.raises(TypeError, match="takes a SkySensePretrainConfig"):
        SkySensePretrainer(create("skysense_tiny"))


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"num_clusters": 1}, "num_clusters must be >= 2"),
        ({"pixel_samples": 1}, "pixel_samples must be >= 2"),
        ({"teacher_momentum": 1.5}, r"teacher_momentum must be in \[0, 1\]"),
        ({"teacher_momentum_final": -0.1}, r"teacher_momentum_final must be in \[0, 1\]"),
        ({"temperature": 0.0}, "temperature must be > 0"),
        ({"sinkhorn_eps": -1.0}, "sinkhorn_eps must be > 0"),
    ],
)
def test_pretrain_config_errors_name_the_field(options, match):
    with pytest.raises(ValueError, match=match):
        SkySensePretrainConfig(**options)


def test_teacher_is_its_own_build_equal_to_the_student_and_gets_no_gradients(monkeypatch):
    def no_deepcopy(*a, **k):
        raise AssertionError("the teacher must be built from the config, not deep-copied")

    monkeypatch.setattr(copy, "deepcopy", no_deepcopy)
    torch.manual_seed(0)
    pre = create_pretrainer("skysense_tiny", proj_dim=16, pixel_samples=32)
    s, t = dict(pre.student.named_parameters()), dict(pre.teacher.named_parameters())
    assert s.keys() == t.keys()
    for n in s:
        assert t[n] is not s[n] and t[n].data_ptr() != s[n].data_ptr()
        assert torch.equal(t[n], s[n]), n
        assert not t[n].requires_grad
    for a, b in zip(pre.teacher_heads.parameters(), pre.heads.parameters(), strict=True):
        assert torch.equal(a, b) and not a.requires_grad
    pre(make_batch())["loss"].backward()
    assert all(p.grad is None for p in pre.teacher.parameters())
    assert all(p.grad is None for p in pre.teacher_heads.parameters())


def test_after_step_follows_the_configured_cosine_momentum():
    from models.base import cosine_momentum

    torch.manual_seed(0)
    pre = create_pretrainer("skysense_tiny", proj_dim=16, teacher_momentum=0.9, teacher_momentum_final=0.95)
    with torch.no_grad():
        for p in pre.student.parameters():
            p.add_(1.0)
    t0 = [p.clone() for p in pre.teacher.parameters()]
    s = [p.clone() for p in pre.student.parameters()]
    pre.after_step(5, 10)
    m = cosine_momentum(5, 10, 0.9, 0.95)
    assert m == pytest.approx(0.925)
    for new, old, st in zip(pre.teacher.parameters(), t0, s):
        torch.testing.assert_close(new, m * old + (1 - m) * st)


EMA_ZERO3_SCRIPT = r"""
import json, os, torch, deepspeed
deepspeed.init_distributed("gloo")
torch.set_num_threads(1)
from models.registry import create_pretrainer
world = int(os.environ["WORLD_SIZE"])
res = {}
for threshold in (0, 100000):  # nothing persistent / every parameter of the tiny model persistent
    ds = {"train_micro_batch_size_per_gpu": 2, "train_batch_size": 2 * world,
          "optimizer": {"type": "AdamW", "params": {"lr": 1e-2, "torch_adam": True}},
          "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": threshold},
          "zero_allow_untested_optimizer": True}
    torch.manual_seed(0)
    with deepspeed.zero.Init(config_dict_or_path=ds):
        pre = create_pretrainer("skysense_tiny", proj_dim=16, pixel_samples=32, teacher_momentum=0.9)
    with deepspeed.zero.GatheredParameters(list(pre.parameters()), modifier_rank=0):
        torch.manual_seed(1)
        pre.init_weights()
    engine, *_ = deepspeed.initialize(
        model=pre, model_parameters=[p for p in pre.parameters() if p.requires_grad], config=ds
    )
    m = engine.module

    def snap(mod):
        with deepspeed.zero.GatheredParameters(list(mod.parameters())):
            return [p.detach().clone() for p in mod.parameters()]

    t0 = snap(m.teacher)
    g = torch.Generator().manual_seed(3 + int(os.environ["RANK"]))
    doy = torch.tensor([[10, 200], [30, 90]])
    ones = torch.ones(2, 2, dtype=torch.bool)
    batch = {"s2": torch.randn(2, 2, 10, 32, 32, generator=g), "s2_doy": doy, "s2_valid": ones,
             "s1": torch.randn(2, 2, 2, 32, 32, generator=g), "s1_doy": doy, "s1_valid": ones}
    engine.backward(engine(batch)["loss"])
    engine.step()
    m.after_step(0, 10)  # cosine momentum at step 0: teacher_momentum = 0.9
    s1, t1 = snap(m.student), snap(m.teacher)  # the teacher's values as its forward sees them
    res[threshold] = {
        "max_err": max((t - (0.9 * a + 0.1 * s)).abs().max().item() for t, a, s in zip(t1, t0, s1)),
        "student_moved": sum(not torch.equal(a, s) for a, s in zip(t0, s1)),
        "n": len(t0),
    }
print("RESULT " + json.dumps(res))
"""


def test_ema_teacher_under_zero3_two_ranks(tmp_path):
    """After one ZeRO-3 engine step on 2 ranks, ``after_step`` moves every teacher tensor to
    ``m · teacher + (1 − m) · student`` exactly as its forward will read it: partitioned parameters
    and persistent (gathered, never re-fetched for a frozen module) ones alike."""
    pytest.importorskip("deepspeed")
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = {
        **os.environ,
        "DS_ACCELERATOR": "cpu",
        "PYTHONPATH": os.pathsep.join(sys.path),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
        "WORLD_SIZE": "2",
    }
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", EMA_ZERO3_SCRIPT],
            env={**base, "RANK": str(r), "LOCAL_RANK": str(r)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=tmp_path,
        )
        for r in range(2)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0 and "RESULT " in out, err[-3000:]
    for out, _ in outs:
        res = json.loads(out.split("RESULT ", 1)[1])
        for threshold, r in res.items():
            assert r["student_moved"] == r["n"], threshold
            assert r["max_err"] < 1e-6, (threshold, r)
