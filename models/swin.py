"""Hierarchical windowed-attention encoder (Swin-V2 style), SkySense's optional high-resolution branch.

``SwinV2Encoder``: (B, C, H, W) -> patch embedding (B, H/p, W/p, D) -> S stages of (shifted)
``WindowBlock``s, each but the last followed by ``PatchMerging`` (2×2 -> 2D channels) ->
(B, D·2^(S-1), H/(p·2^(S-1)), W/(p·2^(S-1))). Windows and merges pad odd sizes; padded keys are
masked out of attention. Attention is the shared ``models.layers.Block`` with a Swin-V2
continuous relative position bias (log-spaced offsets through a small MLP, ``cpb``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import nn

from models.layers import Block, checkpoint_blocks

__all__ = ["PatchMerging", "SwinV2Encoder", "WindowBlock"]


class WindowBlock(nn.Module):
    """The shared ``Block`` on (shifted) windows with a Swin-V2 continuous position bias: (B, H, W, C)."""

    def __init__(self, dim: int, heads: int, window: int, shift: bool, mlp_ratio: float, drop_path: float):
        super().__init__()
        self.window, self.shift, self.heads = window, shift, heads
        self.block = Block(dim, heads, mlp_ratio, drop_path=drop_path)
        self.cpb = nn.Sequential(nn.Linear(2, 256), nn.ReLU(inplace=True), nn.Linear(256, heads, bias=False))

    def _bias(self, ws: int, device: torch.device) -> torch.Tensor:
        """Continuous relative position bias on log-spaced offsets (Swin-V2): -> (heads, ws², ws²)."""
        r = torch.arange(-(ws - 1), ws, device=device, dtype=torch.float32)
        table = (
            torch.stack(torch.meshgrid(r, r, indexing="ij"), dim=-1) / max(ws - 1, 1) * 8
        )  # (2ws-1, 2ws-1, 2)
        table = torch.sign(table) * torch.log2(table.abs() + 1.0) / 3.0
        bias = 16 * torch.sigmoid(self.cpb(table))  # (2ws-1, 2ws-1, heads)
        coords = torch.stack(torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij")).flatten(1)
        rel = (coords[:, :, None] - coords[:, None, :] + ws - 1).to(device)  # (2, ws², ws²)
        return bias[rel[0], rel[1]].permute(2, 0, 1)  # (heads, ws², ws²)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, _ = x.shape
        ws = min(self.window, h, w)
        pad_h, pad_w = (-h) % ws, (-w) % ws  # pad to whole windows; padded keys are masked out
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h)) if pad_h or pad_w else x
        hp, wp = h + pad_h, w + pad_w
        shift = ws // 2 if self.shift and min(hp, wp) > ws else 0
        if shift:
            x = torch.roll(x, (-shift, -shift), dims=(1, 2))
        xw = rearrange(x, "b (nh s1) (nw s2) c -> (b nh nw) (s1 s2) c", s1=ws, s2=ws)  # (B*nW, ws², C)
        mask = self._bias(ws, x.device)[None]  # (1, heads, ws², ws²)
        if shift or pad_h or pad_w:
            label = torch.zeros(hp, wp, device=x.device)  # which shifted sub-window each pixel is in
            if shift:
                for i, sl_h in enumerate((slice(0, -ws), slice(-ws, -shift), slice(-shift, None))):
                    for j, sl_w in enumerate((slice(0, -ws), slice(-ws, -shift), slice(-shift, None))):
                        label[sl_h, sl_w] = i * 3 + j
            padded = torch.ones(hp, wp, device=x.device)
            padded[:h, :w] = 0
            padded = torch.roll(padded, (-shift, -shift), dims=(0, 1)) if shift else padded
            lw = rearrange(label, "(nh s1) (nw s2) -> (nh nw) (s1 s2)", s1=ws, s2=ws)  # (nW, ws²)
            pw = rearrange(padded, "(nh s1) (nw s2) -> (nh nw) 1 (s1 s2)", s1=ws, s2=ws)  # (nW, 1, ws²)
            extra = ((lw[:, :, None] != lw[:, None, :]).float() + pw).clamp(max=1.0) * -100.0  # (nW, N, N)
            mask = repeat(mask + extra[:, None], "nw hd i j -> (b nw) hd i j", b=b)
        dev = x.device.type  # SDPA wants an additive mask in the dtype of q (the autocast dtype if on)
        mask = mask.to(torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else xw.dtype)
        xw = self.block(xw, attn_mask=mask)
        x = rearrange(xw, "(b nh nw) (s1 s2) c -> b (nh s1) (nw s2) c", b=b, nh=hp // ws, s1=ws)
        x = torch.roll(x, (shift, shift), dims=(1, 2)) if shift else x
        return x[:, :h, :w]


class PatchMerging(nn.Module):
    """2×2 concat -> linear 4C -> 2C -> norm (Swin-V2 order): (B, H, W, C) -> (B, H/2, W/2, 2C)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(2 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, (0, 0, 0, x.shape[2] % 2, 0, x.shape[1] % 2))  # odd sizes: pad to even
        x = rearrange(x, "b (h i) (w j) c -> b h w (j i c)", i=2, j=2)  # (B, H/2, W/2, 4C)
        return self.norm(self.reduction(x))


class SwinV2Encoder(nn.Module):
    """Hierarchical high-resolution optical encoder: (B, C, H, W) -> (B, C_last, H/(p·2^(S-1)), ...).

    ``depths``/``heads``: blocks and attention heads per stage (S = len(depths)); ``out_dim`` is
    ``embed_dim · 2^(S-1)``. Every block drops its residual branches with ``drop_path_rate``.
    """

    def __init__(
        self,
        in_chans: int,
        embed_dim: int,
        patch: int,
        depths: Sequence[int],
        heads: Sequence[int],
        window: int,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if len(depths) != len(heads):
            raise ValueError("depths and heads must have the same length")
        self.patch_embed = nn.Conv2d(in_chans, embed_dim, patch, stride=patch)
        self.embed_norm = nn.LayerNorm(embed_dim)
        self.grad_checkpointing = False
        self.stages = nn.ModuleList()
        dim = embed_dim
        for s, (depth, n_heads) in enumerate(zip(depths, heads)):
            blocks = [
                WindowBlock(dim, n_heads, window, i % 2 == 1, mlp_ratio, drop_path_rate) for i in range(depth)
            ]
            merge = PatchMerging(dim) if s < len(depths) - 1 else nn.Identity()
            self.stages.append(nn.ModuleDict({"blocks": nn.ModuleList(blocks), "merge": merge}))
            dim = dim * 2 if s < len(depths) - 1 else dim
        self.out_dim = dim
        self.norm = nn.LayerNorm(dim)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Activation checkpointing of every window block while training."""
        self.grad_checkpointing = enable

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed_norm(rearrange(self.patch_embed(x), "b c h w -> b h w c"))  # (B, H, W, C)
        for stage in self.stages:
            x = stage["merge"](checkpoint_blocks(stage["blocks"], x, self.grad_checkpointing))
        return rearrange(self.norm(x), "b h w c -> b c h w")
