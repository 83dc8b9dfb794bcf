"""SkySense (models.skysense, models.swin, models.skysense_pretrain): presets, the encoder's
masking/calendar contract, and each pretraining component's property."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from models.losses import info_nce, sinkhorn
from models.registry import count_params, create, create_pretrainer, list_models
from models.skysense import (
    S2_BANDS,
    S2_SHARD_BANDS,
    S2_SHARD_INDEX,
    GeoContextPrototypes,
    SkySense,
    SkySenseConfig,
    build_pretrainer,
    region_index,
)
from models.skysense_pretrain import (
    SkySensePretrainConfig,
    SkySensePretrainer,
    augment_views,
    dihedral_table,
)

PRESETS = ["skysense_tiny", "skysense_base", "skysense_large", "skysense_1b"]


def make_batch(b: int = 2, t: int = 3, t1: int = 2, size: int = 32, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    s2_valid = torch.ones(b, t, dtype=torch.bool)
    s2_valid[:, -1] = False  # last S2 slot is padding
    s1_valid = torch.ones(b, t1, dtype=torch.bool)
    return {
        "s2": torch.randn(b, t, 10, size, size, generator=g),
        "s2_doy": torch.randint(1, 367, (b, t), generator=g).to(torch.int16),
        "s2_valid": s2_valid,
        "s1": torch.randn(b, t1, 2, size, size, generator=g),
        "s1_doy": torch.randint(1, 367, (b, t1), generator=g).to(torch.int16),
        "s1_valid": s1_valid,
        "lonlat": torch.tensor([[11.5, 48.1], [-60.0, -3.0]])[:b],
    }


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models gain nothing from intra-op threads, and on shared cores they spin-wait 20x slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def inputs(batch: dict) -> dict:
    return {k: v for k, v in batch.items() if k != "lonlat"}


@pytest.fixture(scope="module")
def tiny() -> SkySense:
    torch.manual_seed(0)
    return create("skysense_tiny").eval()


# ---------------------------------------------------------------------------------------------
# presets
# ---------------------------------------------------------------------------------------------


def test_presets_registered():
    assert set(PRESETS) <= set(list_models("skysense_*"))


@pytest.mark.parametrize("name", PRESETS)
def test_param_counts_on_meta(name):
    n = count_params(name)
    bounds = {
        "skysense_tiny": (1e4, 1e6),
        "skysense_base": (1e8, 4e8),
        "skysense_large": (5e8, 1e9),
        "skysense_1b": (1.0e9, 2.5e9),
    }[name]
    assert bounds[0] <= n < bounds[1], n
    with torch.device("meta"):
        model = create(name)
    assert all(p.device.type == "meta" for p in model.parameters())
    assert isinstance(model.config, SkySenseConfig)


def test_meta_construction_then_materialise_and_init():
    with torch.device("meta"):
        model = create("skysense_tiny", hr_enabled=True)
    model = model.to_empty(device="cpu")
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))  # whatever to_empty left behind
    model.init_weights()
    assert all(torch.isfinite(p).all() for p in model.parameters())
    out = model.eval()(**make_batch(), hr=torch.randn(2, 4, 64, 64))
    assert torch.isfinite(out["dense"]).all()


def test_config_validation():
    with pytest.raises(ValueError, match="divisible by fusion_heads"):
        create("skysense_tiny", fusion_dim=30, fusion_heads=4)
    with pytest.raises(ValueError, match="multiple of patch_size"):
        create("skysense_tiny", img_size=30)
    with pytest.raises(ValueError, match="same length"):
        create("skysense_tiny", hr_depths=(1, 1, 1))
    with pytest.raises(ValueError, match=">= 1"):
        create("skysense_tiny", num_prototypes=0)
    with pytest.raises(TypeError, match="unexpected keyword"):
        create("skysense_tiny", not_a_field=1)


# ---------------------------------------------------------------------------------------------
# encoder
# ---------------------------------------------------------------------------------------------


def test_forward_backward_tiny():
    torch.manual_seed(0)
    model = create("skysense_tiny")
    batch = make_batch()
    out = model(**batch)
    d = model.embed_dim
    assert out["dense"].shape == (2, d, 4, 4)
    assert out["pooled"].shape == (2, d)
    assert out["tokens"].shape == (2, 16, d)
    assert out["proto_weights"].shape == (2, 16, model.config.num_prototypes)
    assert [tuple(x.shape) for x in out["levels"]] == [
        (2, c, s, s) for c, s in zip(model.level_dims, (16, 8, 4, 2))
    ]
    loss = out["dense"].square().mean() + sum(x.mean() for x in out["levels"])
    loss.backward()
    for name in (
        "s2_encoder.patch_embed.weight",
        "s1_encoder.patch_embed.weight",
        "doy_embed.weight",
        "fusion_token",
        "geo.prototypes",
    ):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name


def test_features_feed_the_heads(tiny):
    from models.heads import ChangeHead, LinearProbe, SegmentationHead

    out = tiny(**make_batch())
    seg = SegmentationHead(tiny.level_dims, num_classes=5, channels=16)
    assert seg(out["levels"], out_size=(32, 32)).shape == (2, 5, 32, 32)
    assert LinearProbe(tiny.embed_dim, 7)(out["pooled"]).shape == (2, 7)
    change = ChangeHead(tiny.level_dims, channels=16)
    assert change(out["levels"], out["levels"], out_size=(32, 32)).shape == (2, 1, 32, 32)


def test_invalid_slot_never_influences_output(tiny):
    batch = make_batch()
    ref = tiny(**batch)["dense"]
    changed = dict(batch)
    changed["s2"] = batch["s2"].clone()
    changed["s2"][:, -1] = float("nan")  # invalid slot: garbage pixels
    changed["s2_doy"] = batch["s2_doy"].clone()
    changed["s2_doy"][:, -1] = 17  # and another day of year
    out = tiny(**changed)["dense"]
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)


def test_valid_date_doy_changes_output(tiny):
    batch = make_batch()
    ref = tiny(**batch)["dense"]
    changed = dict(batch)
    changed["s2_doy"] = batch["s2_doy"].clone()
    changed["s2_doy"][:, 0] = (batch["s2_doy"][:, 0] + 100) % 366 + 1
    assert (tiny(**changed)["dense"] - ref).abs().max() > 1e-4


def test_all_dates_invalid_is_finite(tiny):
    batch = make_batch()
    batch["s2_valid"] = torch.zeros_like(batch["s2_valid"])
    batch["s1_valid"] = torch.zeros_like(batch["s1_valid"])
    out = tiny(**batch)
    assert torch.isfinite(out["dense"]).all() and not out["s2_any"].any()


def test_hr_branch_and_errors(tiny):
    torch.manual_seed(0)
    model = create("skysense_tiny", hr_enabled=True).eval()
    batch = make_batch()
    hr = torch.randn(2, 4, 64, 64)
    out = model(**batch, hr=hr)
    assert out["dense"].shape == (2, model.embed_dim, 4, 4)
    # the HR date token is masked like any other slot
    masked = model(**batch, hr=hr, hr_valid=torch.zeros(2, dtype=torch.bool))["dense"]
    without = model(**batch)["dense"]
    torch.testing.assert_close(masked, without, rtol=0, atol=1e-6)
    odd = model(**batch, hr=torch.randn(2, 4, 72, 76))["dense"]  # windows and merges pad odd sizes
    assert odd.shape == out["dense"].shape and torch.isfinite(odd).all()
    with pytest.raises(ValueError, match="hr_enabled=False"):
        tiny(**batch, hr=hr)
    with pytest.raises(ValueError, match="not a multiple of patch"):
        tiny(**make_batch(size=36))
    bad = make_batch()
    bad["s1"] = bad["s1"][..., :16, :16]
    with pytest.raises(ValueError, match="one grid"):
        tiny(**bad)


def test_bf16_autocast_forward_and_loss():
    torch.manual_seed(0)
    model = create("skysense_tiny", hr_enabled=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(**make_batch(), hr=torch.randn(2, 4, 64, 64))
        assert out["dense"].dtype == torch.bfloat16 and torch.isfinite(out["dense"].float()).all()
        pre = create_pretrainer("skysense_tiny", hr_enabled=True, proj_dim=16, pixel_samples=64)
        res = pre(make_batch())
    assert torch.isfinite(res["loss"])
    res["loss"].backward()


def test_grad_checkpointing_gives_same_gradients():
    torch.manual_seed(0)
    plain = create("skysense_tiny", hr_enabled=True).train()
    ckpt = create("skysense_tiny", hr_enabled=True, grad_checkpointing=True).train()
    ckpt.load_state_dict(plain.state_dict())
    batch, hr = make_batch(), torch.randn(2, 4, 64, 64)
    for m in (plain, ckpt):
        out = m(**batch, hr=hr)
        (out["dense"].square().mean() + out["levels"][0].mean()).backward()
    for (name, p), q in zip(plain.named_parameters(), ckpt.parameters()):
        if p.grad is None:
            assert q.grad is None, name
            continue
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-5, atol=1e-6, msg=name)


# ---------------------------------------------------------------------------------------------
# pure functions
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lon", "lat", "n_lon", "n_lat", "expected"),
    [
        (-180.0, -90.0, 4, 2, 0),  # south-west corner
        (179.99, 89.99, 4, 2, 7),  # north-east corner
        (180.0, 0.0, 4, 2, 4),  # 180° wraps to -180°, lat 0 is the northern row
        (0.0, 0.0, 4, 2, 6),
        (-90.0, -45.0, 4, 2, 1),  # on a column edge: the eastern column
        (10.0, 90.0, 4, 2, 6),  # the pole belongs to the last row
        (-190.0, -95.0, 4, 2, 3),  # lon wraps, lat clamps
        (11.5, 48.1, 36, 18, 13 * 36 + 19),
        (5.0, 5.0, 1, 1, 0),
    ],
)
def test_region_index(lon, lat, n_lon, n_lat, expected):
    assert region_index(torch.tensor([[lon, lat]]), n_lon, n_lat).tolist() == [expected]


def test_region_index_errors():
    with pytest.raises(ValueError, match="must be >= 1"):
        region_index(torch.zeros(1, 2), 0, 2)
    with pytest.raises(ValueError, match=r"\(B, 2\)"):
        region_index(torch.zeros(2, 3), 4, 2)


def test_sinkhorn_balances_a_skewed_assignment():
    g = torch.Generator().manual_seed(0)
    n, k = 512, 8
    scores = torch.randn(n, k, generator=g) * 0.1
    scores[:, 0] += 0.5  # a plain softmax would put almost everything in cluster 0
    plain = torch.softmax(scores / 0.05, dim=1).sum(0)
    q = sinkhorn(scores, n_iters=10, eps=0.05)
    torch.testing.assert_close(q.sum(1), torch.ones(n))
    torch.testing.assert_close(q.sum(0), torch.full((k,), n / k), rtol=0.02, atol=0)
    assert plain.max() > 0.5 * n  # the input really was skewed
    assert not q.requires_grad


def test_sinkhorn_errors():
    with pytest.raises(ValueError, match=r"\(N, K\)"):
        sinkhorn(torch.zeros(3))
    with pytest.raises(ValueError, match="eps > 0"):
        sinkhorn(torch.zeros(3, 2), eps=0.0)


def test_info_nce_minimal_for_aligned_pairs():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(64, 16, generator=g)
    k = q + 0.05 * torch.randn(64, 16, generator=g)
    aligned = info_nce(q, k, 0.1)
    shuffled = info_nce(q, k[torch.randperm(64, generator=g)], 0.1)
    assert aligned < 0.05 < shuffled
    # rows with weight 0 do not count as queries
    w = torch.ones(64)
    w[0] = 0
    k_bad = k.clone()
    k_bad[0] = -q[0]
    assert info_nce(q, k_bad, 0.1, w) < 2 * aligned + 1e-3 < info_nce(q, k_bad, 0.1)
    with pytest.raises(ValueError, match="both be"):
        info_nce(q, k[:3], 0.1)
    with pytest.raises(ValueError, match="temperature"):
        info_nce(q, k, 0.0)


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


# ---------------------------------------------------------------------------------------------
# geo-context prototypes
# ---------------------------------------------------------------------------------------------


def test_region_uses_only_its_own_prototypes():
    torch.manual_seed(0)
    geo = GeoContextPrototypes(num_regions=6, num_prototypes=4, dim=8, temperature=0.1)
    tokens = torch.randn(3, 5, 8)
    region = torch.tensor([2, 2, 4])
    enhanced, weights = geo(tokens, region)
    assert weights.shape == (3, 5, 4)
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, 5))
    (enhanced.square().sum() + geo.logits(tokens, region).sum()).backward()
    used = geo.prototypes.grad.abs().sum(dim=(1, 2))
    assert (used[[2, 4]] > 0).all()
    assert (used[[0, 1, 3, 5]] == 0).all()
    # moving another region's prototypes changes nothing for these samples
    with torch.no_grad():
        geo.prototypes[[0, 1, 3, 5]] += 10.0
    torch.testing.assert_close(geo(tokens, region)[0], enhanced.detach())


def test_encoder_geo_enhancement_depends_on_region(tiny):
    batch = make_batch()
    out_a = tiny(**batch)["dense"]
    moved = dict(batch, lonlat=batch["lonlat"] + torch.tensor([100.0, 0.0]))
    out_b = tiny(**moved)["dense"]
    same_region = dict(batch, lonlat=batch["lonlat"] + torch.tensor([0.5, 0.5]))
    torch.testing.assert_close(tiny(**same_region)["dense"], out_a)
    assert (out_a - out_b).abs().max() > 1e-5
    plain = tiny(**inputs(batch))
    torch.testing.assert_close(plain["dense"].flatten(2).transpose(1, 2), plain["tokens"])


# ---------------------------------------------------------------------------------------------
# pretrainer
# ---------------------------------------------------------------------------------------------


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


def test_s2_band_selection_matches_the_shard_contract():
    from pipeline.sensors import S2

    assert S2.band_names == S2_SHARD_BANDS
    assert tuple(S2_SHARD_BANDS[i] for i in S2_SHARD_INDEX) == S2_BANDS
    assert len(S2_BANDS) == SkySenseConfig().s2_in_chans == 10
    assert "B01" not in S2_BANDS and "B09" not in S2_BANDS


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


def test_config_is_frozen():
    cfg = create("skysense_tiny").config
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.s2_dim = 3
