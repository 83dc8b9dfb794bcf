"""SpectralGPT: tokens, masking, loss, input sizes and band counts, bf16, checkpointing, overfitting."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from models.registry import create, get_config
from models.spectralgpt import SpectralGPT, SpectralGPTConfig

TINY = get_config("spectralgpt_tiny")  # 32 px, 12 bands -> 4 spectral groups × 4 × 4 = 64 tokens


@pytest.fixture
def model() -> SpectralGPT:
    torch.manual_seed(0)
    return create("spectralgpt_tiny")


def sample(b: int = 2, c: int = 12, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randn(b, c, size, size, generator=torch.Generator().manual_seed(seed))


def test_forward_shapes_and_default_mask_ratio(model):
    out = model({"x": sample()})
    assert set(out) == {"loss", "loss_masked", "loss_spectral", "pred", "mask"}
    loss, pred, mask = out["loss"], out["pred"], out["mask"]
    torch.testing.assert_close(loss, out["loss_masked"] + TINY.spectral_loss_weight * out["loss_spectral"])
    L = TINY.num_groups * TINY.grid_size**2
    assert loss.shape == () and loss.dtype == torch.float32
    assert pred.shape == (2, L, 3 * 8 * 8)
    assert mask.shape == (2, L) and mask.dtype == torch.float32
    assert mask.sum(1).tolist() == [L - round(L * 0.1)] * 2
    assert model.forward_features({"x": sample()}).shape == (2, L, TINY.embed_dim)
    torch.testing.assert_close(model.encode(sample()), model.forward_features({"x": sample()}))


@pytest.mark.parametrize(
    ("L", "ratio", "keep"),
    [
        (64, 0.9, 6),
        (64, 0.75, 16),
        (1024, 0.9, 102),  # spectralgpt_base at 128 px
        (576, 0.9, 58),  # at 96 px
        (10, 0.9, 1),  # int(10 * (1 - 0.9)) would be 0 by float round-off
        (7, 0.5, 4),
        (5, 0.0, 5),
    ],
)
def test_masking_keeps_round_l_times_one_minus_r(model, L, ratio, keep):
    x = torch.randn(3, L, 4)
    kept, mask, ids_restore, ids_keep = model.random_masking(x, ratio)
    assert keep == round(L * (1 - ratio))
    assert kept.shape == (3, keep, 4)
    assert mask.sum(1).tolist() == [L - keep] * 3
    # kept tokens are exactly the unmasked ones, and ids_restore inverts the shuffle
    for b in range(3):
        assert sorted(ids_keep[b].tolist()) == torch.nonzero(mask[b] == 0).flatten().tolist()
        torch.testing.assert_close(kept[b], x[b, ids_keep[b]])
    shuffled = torch.argsort(ids_restore, dim=1)
    assert torch.equal(torch.gather(shuffled, 1, ids_restore), torch.arange(L).expand(3, -1))


def test_noise_fixes_the_mask_smallest_kept(model):
    L = 64
    noise = torch.rand(2, L)
    m1 = model.forward_mae(sample(), noise=noise).mask
    m2 = model({"x": sample(seed=1), "noise": noise})["mask"]
    assert torch.equal(m1, m2)
    keep = round(L * 0.1)
    expected = torch.ones(2, L)
    expected.scatter_(1, noise.argsort(1)[:, :keep], 0.0)
    assert torch.equal(m1, expected)


@pytest.mark.parametrize(("ratio", "tubes_kept"), [(0.75, 4), (0.5, 8)])
def test_tube_masking_masks_a_position_in_every_spectral_group(ratio, tubes_kept):
    torch.manual_seed(0)
    m = create("spectralgpt_tiny", mask_ratio=ratio, tube_masking=True)
    mask = m({"x": sample(b=4)})["mask"].view(4, TINY.num_groups, TINY.grid_size**2)  # (B, t, h*w)
    assert torch.equal(mask, mask[:, :1].expand_as(mask))  # the same positions in every group
    assert (mask[:, 0] == 0).sum(1).tolist() == [tubes_kept] * 4
    assert not torch.equal(mask[0], mask[1])  # per-sample positions
    # per-token masking (the default) leaves most masked tokens' positions visible in another group
    per_token = create("spectralgpt_tiny", mask_ratio=ratio)({"x": sample(b=4)})["mask"]
    per_token = per_token.view(4, TINY.num_groups, -1)
    assert not torch.equal(per_token, per_token[:, :1].expand_as(per_token))


def test_patchify_layout_and_round_trip(model):
    x = sample(1)
    tokens = model.patchify(x)  # (1, t*h*w, u*p*q)
    assert tokens.shape == (1, 64, 192)
    # token (t=1, h=2, w=3), pixel (u=2, p=5, q=7) = band 1*3+2, row 2*8+5, col 3*8+7
    assert tokens[0, 1 * 16 + 2 * 4 + 3, 2 * 64 + 5 * 8 + 7] == x[0, 5, 21, 31]
    assert torch.equal(model.unpatchify(tokens, (4, 4)), x)
    # same token order as the Conv3d tokeniser: token i depends only on its own cube
    emb, _ = model.embed(x)
    x2 = x.clone()
    x2[0, 3:6, 16:24, 24:32] += 1.0  # cube (t=1, h=2, w=3)
    changed = (model.embed(x2)[0] - emb).abs().sum(-1)[0].nonzero().flatten().tolist()
    assert changed == [1 * 16 + 2 * 4 + 3]


def test_loss_terms_follow_the_mask(model):
    """The token MSE sees masked tokens only; the spectral term (official) sees every position."""
    x = sample()
    with torch.no_grad():
        _, _, _, pred, mask = model.forward_mae(x)
    masked, spectral = model.loss_terms(x, pred, mask)
    visible = (mask == 0)[..., None]
    pred_vis = pred + 5.0 * visible  # perturb visible-token predictions only
    masked_v, spectral_v = model.loss_terms(x, pred_vis, mask)
    torch.testing.assert_close(masked_v, masked)
    assert not torch.allclose(spectral_v, spectral)
    masked_m, _ = model.loss_terms(x, pred + 5.0 * ~visible, mask)  # perturb masked ones
    assert masked_m > masked + 1.0
    assert model.forward_loss(x, pred, mask) == masked + spectral


def test_loss_values():
    x = sample()
    model = SpectralGPT(TINY)
    target = model.patchify(x)
    mask = torch.zeros(2, 64)
    mask[:, :10] = 1
    assert model.forward_loss(x, target, mask) == 0
    # constant error e on every pixel: token MSE e², spectral sum error t·e over t = 4 groups -> (4e)²
    masked, spectral = model.loss_terms(x, target + 0.5, mask)
    torch.testing.assert_close(masked, torch.tensor(0.25))
    torch.testing.assert_close(spectral, torch.tensor(4.0))
    # norm-pix: per-token normalised targets for the token term
    norm = SpectralGPT(TINY, norm_pix_loss=True)
    t = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6) ** 0.5
    masked, _ = norm.loss_terms(x, t, mask)
    assert masked < 1e-10
    # nothing masked: zero token term, not NaN
    masked, _ = model.loss_terms(x, target + 1, torch.zeros(2, 64))
    assert masked == 0


@pytest.mark.parametrize(("size", "bands"), [(96, 12), (128, 12), (32, 9), (40, 15)])
def test_other_sizes_and_band_counts(model, size, bands):
    """Position embeddings resampled at run time from the configured 4×4 grid / 4 groups."""
    x = sample(1, bands, size)
    L = bands // 3 * (size // 8) ** 2
    loss, _, _, pred, mask = model.forward_mae(x)
    assert pred.shape == (1, L, 192) and mask.shape == (1, L) and torch.isfinite(loss)
    loss.backward()
    assert model.pos_embed_spatial.grad is not None and model.pos_embed_temporal.grad is not None
    assert model.encode(x).shape == (1, L, TINY.embed_dim)


def test_native_size_uses_embeddings_unchanged(model):
    pe = model.pos_embed((4, 4, 4))
    expected = model.pos_embed_temporal[:, :, None] + model.pos_embed_spatial[:, None]
    torch.testing.assert_close(pe, expected.flatten(1, 2))


@pytest.mark.parametrize(
    ("shape", "match"), [((1, 12, 30, 32), r"\(12, 30, 32\)"), ((1, 10, 32, 32), "divisible")]
)
def test_indivisible_input_is_an_error(model, shape, match):
    with pytest.raises(ValueError, match=match):
        model({"x": torch.zeros(shape)})


def test_config_errors():
    with pytest.raises(ValueError, match="in_chans 10 not divisible by spectral_group 3"):
        SpectralGPTConfig(in_chans=10)
    with pytest.raises(ValueError, match=r"mask_ratio must be in \[0, 1\)"):
        SpectralGPTConfig(mask_ratio=1.0)


def test_bf16_autocast_forward_backward(model):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _, _, pred, mask = model.forward_mae(sample())
    assert pred.dtype == torch.bfloat16 and loss.dtype == torch.float32 and mask.dtype == torch.float32
    assert torch.isfinite(loss)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_grad_checkpointing_same_gradients():
    torch.manual_seed(0)
    plain = create("spectralgpt_tiny").train()
    ckpt = create("spectralgpt_tiny", grad_checkpointing=True).train()
    ckpt.load_state_dict(plain.state_dict())
    x, noise = sample(), torch.rand(2, 64)
    for m in (plain, ckpt):
        m({"x": x, "noise": noise})["loss"].backward()
    for (name, a), (_, b) in zip(plain.named_parameters(), ckpt.named_parameters()):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-6, rtol=1e-5, msg=name)
    ckpt.set_grad_checkpointing(False)
    assert not ckpt.grad_checkpointing


def test_drop_path_rate_rises_over_depth_and_is_stochastic_only_in_training():
    from models.layers import DropPath

    torch.manual_seed(0)
    model = create("spectralgpt_tiny", depth=3, drop_path_rate=0.5).train()
    rates = [b.drop_path1.p if isinstance(b.drop_path1, DropPath) else 0.0 for b in model.blocks]
    assert rates == pytest.approx([0.0, 0.25, 0.5])
    batch = {"x": sample(), "noise": torch.rand(2, 64)}
    losses = [model(batch)["loss"] for _ in range(4)]
    assert len({round(v.item(), 6) for v in losses}) > 1  # the same mask, different dropped paths
    losses[0].backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    model.eval()
    with torch.no_grad():
        assert model(batch)["loss"] == model(batch)["loss"]


def test_meta_construction_then_materialise():
    with torch.device("meta"):
        model = create("spectralgpt_tiny")
    assert model.mask_token.is_meta
    model = model.to_empty(device="cpu")
    model.init_weights()
    assert torch.isfinite(model({"x": sample()})["loss"])


def test_overfits_one_batch():
    """A smooth (low-rank per token) batch under a fixed mask is memorised quickly."""
    torch.manual_seed(0)
    model = create("spectralgpt_tiny").train()
    coarse = torch.randn(2, 12, 4, 4, generator=torch.Generator().manual_seed(3))
    x = F.interpolate(coarse, size=32, mode="bilinear")
    noise = torch.rand(2, 64, generator=torch.Generator().manual_seed(4))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss = model({"x": x, "noise": noise})["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.4 * losses[0], losses


def test_torch_compile_fullgraph_capture(model):
    """No graph breaks (Dynamo capture only, backend="eager": fast, no codegen), resampling included."""
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    compiled({"x": sample(1, 12, 48)})["loss"].backward()
    features = torch.compile(model.forward_features, backend="eager", fullgraph=True)
    assert features({"x": sample(1)}).shape == (1, 64, TINY.embed_dim)


ZERO3_SCRIPT = """
import os, socket, torch, deepspeed, torch.distributed as dist
s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
dist.init_process_group("gloo", rank=0, world_size=1)
from models.registry import create
cfg = {"train_batch_size": 1, "zero_optimization": {"stage": 3}}
with deepspeed.zero.Init(config_dict_or_path=cfg, dtype=torch.float32):
    m = create("spectralgpt_tiny")
w = m.blocks[0].attn.qkv.weight
assert w.numel() == 0 and tuple(w.ds_shape) == (192, 64), (w.shape, w.ds_shape)
with deepspeed.zero.GatheredParameters(list(m.parameters()), modifier_rank=0):
    m.init_weights()
    assert 0.005 < m.pos_embed_spatial.std().item() < 0.05 and w.std().item() > 0.05
print("ok")
"""


def test_deepspeed_zero3_construction(tmp_path):
    """Built under deepspeed.zero.Init (ZeRO-3 partitions while constructing), then initialised."""
    pytest.importorskip("deepspeed")
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run(
        [sys.executable, "-c", ZERO3_SCRIPT],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]
