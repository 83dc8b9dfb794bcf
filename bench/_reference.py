"""The official SpectralGPT MAE, re-stated compactly: the reference our model and checkpoint loader are
measured against (``tests/models/test_checkpoint.py``: equivalence after loading official keys;
``bench/model_step.py``: the speed baseline).

``OfficialMAE`` is an independent re-statement of the official ``MaskedAutoencoderViT``
(models_mae_spectral.py + util/video_vit.py) with its key layout (separate q/k/v Linears,
``patch_embed.proj``, ``pos_embed_spatial`` / ``pos_embed_temporal``) and its computation order
(position embeddings gathered after masking, manual softmax attention, ``int(L * (1 - r))`` kept
tokens, the spectral-sum term taken before norm-pix). It lives beside the benchmarks rather than in
``models/`` because it is an oracle, not a model to train or ship: keeping it out of the package keeps
it independent of the code it checks, and ``bench/`` may not import ``tests/``.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from models.spectralgpt import SpectralGPTConfig


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
