"""Checkpoint filter: official-layout equivalence, resampling, safetensors round trip, error paths.

``OfficialMAE`` below is a compact, independent re-statement of the official SpectralGPT
``MaskedAutoencoderViT`` (models_mae_spectral.py + util/video_vit.py) with its key layout
(separate q/k/v Linears, ``patch_embed.proj``, ``pos_embed_spatial`` / ``pos_embed_temporal``)
and its computation order (position embeddings gathered after masking, manual softmax
attention, ``int(L * (1 - r))`` kept tokens, the spectral-sum term taken before norm-pix).
It is also the baseline of ``bench/model_step.py``.
"""

from __future__ import annotations

import argparse
import pickle
from functools import partial

import pytest
import torch
from torch import nn

from models.checkpoint import (
    checkpoint_filter,
    export_safetensors,
    load_weights,
    read_safetensors_metadata,
    unwrap_state_dict,
)
from models.registry import create, get_config
from models.spectralgpt import SpectralGPT, SpectralGPTConfig

# ---------------------------------------------------------------------------------------------
# reference implementation in the official layout
# ---------------------------------------------------------------------------------------------


class RefAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads, self.scale = heads, (dim // heads) ** -0.5
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, N, C = x.shape
        q, k, v = (
            f(x).reshape(B, N, self.heads, C // self.heads).permute(0, 2, 1, 3)
            for f in (self.q, self.k, self.v)
        )
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(B, N, C))


class RefMlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class RefBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        norm = partial(nn.LayerNorm, eps=1e-6)
        self.norm1, self.attn = norm(dim), RefAttention(dim, heads)
        self.norm2, self.mlp = norm(dim), RefMlp(dim, int(dim * mlp_ratio))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class OfficialMAE(nn.Module):
    """Official structure; input (N, C, H, W), one input channel, pred_t_dim == num_frames."""

    def __init__(self, c: SpectralGPTConfig) -> None:
        super().__init__()
        self.c, g, p = c, c.spectral_group, c.patch_size
        self.T, self.HW = c.in_chans // g, c.grid_size**2
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv3d(1, c.embed_dim, kernel_size=(g, p, p), stride=(g, p, p))
        self.pos_embed_spatial = nn.Parameter(torch.randn(1, self.HW, c.embed_dim) * 0.02)
        self.pos_embed_temporal = nn.Parameter(torch.randn(1, self.T, c.embed_dim) * 0.02)
        self.blocks = nn.ModuleList(RefBlock(c.embed_dim, c.num_heads, c.mlp_ratio) for _ in range(c.depth))
        self.norm = nn.LayerNorm(c.embed_dim, eps=1e-6)
        self.decoder_embed = nn.Linear(c.embed_dim, c.decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.randn(1, 1, c.decoder_embed_dim) * 0.02)
        self.decoder_pos_embed_spatial = nn.Parameter(torch.randn(1, self.HW, c.decoder_embed_dim) * 0.02)
        self.decoder_pos_embed_temporal = nn.Parameter(torch.randn(1, self.T, c.decoder_embed_dim) * 0.02)
        self.decoder_blocks = nn.ModuleList(
            RefBlock(c.decoder_embed_dim, c.decoder_num_heads, c.mlp_ratio) for _ in range(c.decoder_depth)
        )
        self.decoder_norm = nn.LayerNorm(c.decoder_embed_dim, eps=1e-6)
        self.decoder_pred = nn.Linear(c.decoder_embed_dim, g * p * p)

    def _pos(self, spatial, temporal):
        return spatial.repeat(1, self.T, 1) + torch.repeat_interleave(temporal, self.HW, dim=1)

    def _tokens(self, imgs):
        x = self.patch_embed.proj(imgs.unsqueeze(1)).flatten(3)
        x = torch.einsum("ncts->ntsc", x)
        N, T, L, C = x.shape
        return x.reshape(N, T * L, C)

    def forward_features(self, imgs):
        x = self._tokens(imgs) + self._pos(self.pos_embed_spatial, self.pos_embed_temporal)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)

    def forward(self, imgs, mask_ratio, noise):
        x = self._tokens(imgs)
        N, L, D = x.shape
        len_keep = int(L * (1 - mask_ratio))
        ids_shuffle = torch.argsort(noise, dim=1)
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        ids_keep = ids_shuffle[:, :len_keep]
        x = torch.gather(x, 1, ids_keep.unsqueeze(-1).repeat(1, 1, D))
        mask = torch.ones([N, L])
        mask[:, :len_keep] = 0
        mask = torch.gather(mask, 1, ids_restore)
        pos = self._pos(self.pos_embed_spatial, self.pos_embed_temporal).expand(N, -1, -1)
        x = x + torch.gather(pos, 1, ids_keep.unsqueeze(-1).repeat(1, 1, D))
        for blk in self.blocks:
            x = blk(x)
        x = self.decoder_embed(self.norm(x))
        C = x.shape[-1]
        x = torch.cat([x, self.mask_token.repeat(N, L - x.shape[1], 1)], dim=1)
        x = torch.gather(x, 1, ids_restore.unsqueeze(-1).repeat(1, 1, C))
        x = x + self._pos(self.decoder_pos_embed_spatial, self.decoder_pos_embed_temporal)
        for blk in self.decoder_blocks:
            x = blk(x)
        pred = self.decoder_pred(self.decoder_norm(x))
        return self.forward_loss(imgs, pred, mask), pred, mask

    def forward_loss(self, imgs, pred, mask):
        g, p = self.c.spectral_group, self.c.patch_size
        imgs = imgs.unsqueeze(1)
        N, _, T, H, W = imgs.shape
        t, h, w = T // g, H // p, W // p
        x = imgs.reshape(N, 1, t, g, h, p, w, p)
        target = torch.einsum("nctuhpwq->nthwupqc", x).reshape(N, t * h * w, g * p * p)
        target_spatial = target.reshape(N, t, h * w, -1).sum(dim=1)
        pred_spatial = pred.reshape(N, t, h * w, -1).sum(dim=1)
        if self.c.norm_pix_loss:
            mean, var = target.mean(dim=-1, keepdim=True), target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1.0e-6) ** 0.5
        loss1 = ((pred - target) ** 2).mean(dim=-1)
        loss1 = (loss1 * mask).sum() / mask.sum()
        loss3 = ((pred_spatial - target_spatial) ** 2).mean(dim=-1).mean()
        return loss1 + loss3


def official_state_dict(cfg: SpectralGPTConfig, seed: int = 0) -> tuple[OfficialMAE, dict[str, torch.Tensor]]:
    """A reference model with non-trivial random weights and its state dict (official keys)."""
    torch.manual_seed(seed)
    ref = OfficialMAE(cfg).eval()
    with torch.no_grad():
        for name, prm in ref.named_parameters():
            if "norm" in name:
                prm.add_(torch.randn_like(prm) * 0.1)
            elif name.endswith("bias"):
                prm.copy_(torch.randn_like(prm) * 0.02)
    return ref, ref.state_dict()


TINY = get_config("spectralgpt_tiny")


# ---------------------------------------------------------------------------------------------
# tests
# ---------------------------------------------------------------------------------------------


def test_reference_has_official_key_layout():
    _, sd = official_state_dict(TINY)
    for key in (
        "patch_embed.proj.weight",
        "pos_embed_spatial",
        "pos_embed_temporal",
        "blocks.0.attn.q.weight",
        "blocks.0.attn.k.bias",
        "blocks.1.mlp.fc2.weight",
        "decoder_blocks.0.attn.v.weight",
        "decoder_pos_embed_spatial",
        "decoder_pred.weight",
        "mask_token",
    ):
        assert key in sd
    assert not any(".qkv." in k for k in sd)


@pytest.mark.parametrize("norm_pix_loss", [False, True])
def test_official_layout_equivalence(norm_pix_loss):
    """Same weights, same input, same mask: features and loss equal the official model's."""
    cfg = TINY if not norm_pix_loss else get_config("spectralgpt_tiny", norm_pix_loss=True)
    ref, sd = official_state_dict(cfg)
    ours = SpectralGPT(cfg).eval()
    result = load_weights(ours, {"model": sd, "epoch": 3})
    assert result.missing == [] and result.unexpected == []

    torch.manual_seed(1)
    x = torch.randn(2, cfg.in_chans, cfg.img_size, cfg.img_size)
    L = cfg.num_groups * cfg.grid_size**2
    noise = torch.rand(2, L)
    with torch.no_grad():
        torch.testing.assert_close(ours.encode(x), ref.forward_features(x), atol=1e-5, rtol=0)
        ref_loss, ref_pred, ref_mask = ref(x, 0.75, noise)  # int(64 * .25) == round(64 * .25)
        loss, _, _, pred, mask = ours.forward_mae(x, mask_ratio=0.75, noise=noise)
    torch.testing.assert_close(mask, ref_mask)
    torch.testing.assert_close(pred, ref_pred, atol=1e-5, rtol=0)
    assert abs(loss.item() - ref_loss.item()) <= 1e-5 * max(1.0, abs(ref_loss.item()))


def test_official_pth_file_with_args_and_ddp_prefix(tmp_path):
    """A MAE-style training checkpoint (model + args Namespace + DDP prefix) loads without pickle."""
    ref, sd = official_state_dict(TINY)
    path = tmp_path / "SpectralGPT.pth"
    torch.save(
        {"model": {f"module.{k}": v for k, v in sd.items()}, "args": argparse.Namespace(lr=1e-3)}, path
    )
    ours = create("spectralgpt_tiny", weights=path).eval()
    x = torch.randn(1, 12, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours.encode(x), ref.forward_features(x), atol=1e-5, rtol=0)


def test_encoder_only_checkpoint_with_head_loads():
    """A fine-tuned checkpoint (no decoder, plus a task head) loads; decoder keys reported missing."""
    _, sd = official_state_dict(TINY)
    sd = {k: v for k, v in sd.items() if not k.startswith(("decoder", "mask_token"))}
    sd["head.weight"] = torch.zeros(10, TINY.embed_dim)
    result = load_weights(SpectralGPT(TINY), sd)
    assert "decoder_pred.weight" in result.missing and "mask_token" in result.missing
    assert result.unexpected == ["head.weight"]


def test_resamples_grid_and_band_count():
    """Checkpoint at 32 px / 12 bands -> model at 48 px / 15 bands: pos embeds resampled, outputs finite."""
    ref, sd = official_state_dict(TINY)
    model = SpectralGPT(TINY, img_size=48, in_chans=15)
    load_weights(model, sd)
    assert model.pos_embed_spatial.shape == (1, 36, TINY.embed_dim)
    assert model.pos_embed_temporal.shape == (1, 5, TINY.embed_dim)
    # endpoints of the linearly resampled spectral embedding are the original ones
    torch.testing.assert_close(model.pos_embed_temporal[:, 0], sd["pos_embed_temporal"][:, 0])
    torch.testing.assert_close(model.pos_embed_temporal[:, -1], sd["pos_embed_temporal"][:, -1])
    loss = model({"x": torch.randn(1, 15, 48, 48)})["loss"]
    assert torch.isfinite(loss)


def test_patch_embed_kernel_resampled_keeps_constant_response():
    _, sd = official_state_dict(TINY)
    model = SpectralGPT(TINY, patch_size=4, img_size=32)
    out = checkpoint_filter(sd, model)
    old, new = sd["patch_embed.proj.weight"], out["patch_embed.proj.weight"]
    assert new.shape == (TINY.embed_dim, 1, 3, 4, 4)
    torch.testing.assert_close(new.sum(dim=(1, 2, 3, 4)), old.sum(dim=(1, 2, 3, 4)), atol=1e-5, rtol=1e-4)
    assert "decoder_pred.weight" not in out  # patch geometry changed: prediction head dropped


def test_unwrap_state_dict():
    t = torch.zeros(1)
    assert unwrap_state_dict({"state_dict": {"module._orig_mod.a": t}}) == {"a": t}
    with pytest.raises(ValueError, match="no state dict found"):
        unwrap_state_dict({"epoch": 1})


def test_missing_required_key_is_an_error():
    _, sd = official_state_dict(TINY)
    del sd["blocks.0.norm1.weight"]
    with pytest.raises(RuntimeError, match=r"lacks 1 required keys.*blocks\.0\.norm1\.weight"):
        load_weights(SpectralGPT(TINY), sd)


def test_unexpected_key_is_an_error():
    _, sd = official_state_dict(TINY)
    sd["blocks.9.attn.qkv.weight"] = torch.zeros(3)
    with pytest.raises(RuntimeError, match=r"keys SpectralGPT does not.*blocks\.9"):
        load_weights(SpectralGPT(TINY), sd)


def test_shape_mismatch_is_an_error():
    _, sd = official_state_dict(TINY)
    with pytest.raises(ValueError, match=r"'norm\.weight' has shape \(64,\), model expects \(96,\)"):
        load_weights(SpectralGPT(TINY, embed_dim=96), {"norm.weight": sd["norm.weight"]})


def test_pickled_objects_refused_without_opt_in(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model": {"a": torch.zeros(1)}, "obj": _Custom()}, path)
    with pytest.raises(RuntimeError, match="allow_pickle=True"):
        load_weights(SpectralGPT(TINY), path)


class _Custom:
    pass


def test_missing_file():
    with pytest.raises(FileNotFoundError, match="weights file not found"):
        create("spectralgpt_tiny", weights="/nonexistent/w.safetensors")


def test_safetensors_round_trip_without_pickle(tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = create("spectralgpt_tiny", img_size=48)
    path = export_safetensors(model, tmp_path / "w.safetensors")
    meta = read_safetensors_metadata(path)
    assert meta["class"] == "SpectralGPT" and meta["config"]["img_size"] == 48

    def refuse(*a, **k):
        raise AssertionError("loading our own weights must not unpickle")

    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    loaded = create("spectralgpt_tiny", weights=path, **meta["config"])
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k
