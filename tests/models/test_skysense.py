"""SkySense (models.skysense, models.swin, models.skysense_pretrain): presets, the encoder's
masking/calendar contract, and each pretraining component's property."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from models.registry import count_params, create, create_pretrainer, list_models
from models.skysense import (
    S2_BANDS,
    S2_SHARD_BANDS,
    S2_SHARD_INDEX,
    GeoContextPrototypes,
    SkySense,
    SkySenseConfig,
    region_index,
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


def test_s2_band_selection_matches_the_shard_contract():
    from pipeline.sensors import S2

    assert S2.band_names == S2_SHARD_BANDS
    assert tuple(S2_SHARD_BANDS[i] for i in S2_SHARD_INDEX) == S2_BANDS
    assert len(S2_BANDS) == SkySenseConfig().s2_in_chans == 10
    assert "B01" not in S2_BANDS and "B09" not in S2_BANDS


def test_config_is_frozen():
    cfg = create("skysense_tiny").config
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.s2_dim = 3


def test_swin_and_drop_path_rate_errors():
    from models.swin import SwinV2Encoder

    with pytest.raises(ValueError, match="depths and heads must have the same length"):
        SwinV2Encoder(4, 16, 4, depths=(1,), heads=(2, 4), window=4)
    with pytest.raises(ValueError, match=r"drop_path_rate must be in \[0, 1\), got 1.0"):
        create("skysense_tiny", drop_path_rate=1.0)


def test_drop_path_rate_rises_over_each_stack():
    from models.layers import DropPath

    model = create("skysense_tiny", s2_depth=3, fusion_depth=3, drop_path_rate=0.4)
    for blocks in (model.s2_encoder.blocks, model.fusion_blocks):
        rates = [b.drop_path1.p if isinstance(b.drop_path1, DropPath) else 0.0 for b in blocks]
        assert rates == pytest.approx([0.0, 0.2, 0.4])
