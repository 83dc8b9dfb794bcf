"""Shared transformer building blocks: one attention, one block, position embeddings.

Pure torch + einops. Optional parts default to ``nn.Identity`` so ``forward`` has no branches
(timm ``layers/attention.py`` style). Shapes: B batch, N tokens, D width, H heads.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from torch.utils.checkpoint import checkpoint

from models.base import has_storage

__all__ = [
    "Attention",
    "Block",
    "DropPath",
    "Mlp",
    "checkpoint_blocks",
    "init_weights_mae",
    "resample_pos_embed_2d",
    "sincos_pos_embed_1d",
    "sincos_pos_embed_2d",
]


class Attention(nn.Module):
    """Multi-head self-attention on ``F.scaled_dot_product_attention``.

    One fused ``qkv`` projection (official checkpoints with separate q/k/v are concatenated
    by ``models.checkpoint``). ``attn_mask`` follows SDPA: bool (True = attend) or additive
    float, broadcastable to (B, H, N, N).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool = True,
        proj_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"dim {dim} must be divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim, bias=proj_bias)
        self.proj_drop = nn.Dropout(proj_drop) if proj_drop > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, N, D) -> (B, N, D)."""
        qkv = rearrange(self.qkv(x), "b n (three h d) -> three b h n d", three=3, h=self.num_heads)
        q, k, v = qkv.unbind(0)  # each (B, H, N, d)
        x = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.attn_drop if self.training else 0.0
        )
        x = rearrange(x, "b h n d -> b n (h d)")  # (B, N, D)
        return self.proj_drop(self.proj(x))


class Mlp(nn.Module):
    """Two-layer perceptron ``fc1 -> act -> drop -> fc2 -> drop``: (..., in) -> (..., out)."""

    def __init__(
        self,
        in_features: int,
        hidden_features: int | None = None,
        out_features: int | None = None,
        act_layer: Callable[[], nn.Module] = nn.GELU,
        drop: float = 0.0,
    ) -> None:
        super().__init__()
        hidden_features = hidden_features or in_features
        out_features = out_features or in_features
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden_features, out_features)
        self.drop = nn.Dropout(drop) if drop > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class DropPath(nn.Module):
    """Stochastic depth: zero a whole sample's residual branch with probability ``p`` in training."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"drop path probability must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        return x * x.new_empty(shape).bernoulli_(keep).div_(keep)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm1(x))`` then ``x + mlp(norm2(x))``; (B, N, D)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path: float = 0.0,
        norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
        act_layer: Callable[[], nn.Module] = nn.GELU,
    ) -> None:
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.drop_path1(self.attn(self.norm1(x), attn_mask=attn_mask))
        return x + self.drop_path2(self.mlp(self.norm2(x)))


def checkpoint_blocks(blocks: Sequence[nn.Module], x: torch.Tensor, enabled: bool, **kw) -> torch.Tensor:
    """Run ``blocks`` in order on ``x``; with activation checkpointing when ``enabled`` and training.

    Extra keyword arguments (e.g. ``attn_mask``) go to every block.
    """
    for blk in blocks:
        if enabled and blk.training and torch.is_grad_enabled():
            x = checkpoint(blk, x, use_reentrant=False, **kw)
        else:
            x = blk(x, **kw)
    return x


# ---------------------------------------------------------------------------------------------
# position embeddings
# ---------------------------------------------------------------------------------------------


def sincos_pos_embed_1d(dim: int, positions: torch.Tensor | Sequence[float] | int) -> torch.Tensor:
    """Fixed sine-cosine embedding of 1-D positions (MAE convention): (L,) -> (L, dim).

    ``emb[p] = [sin(p * w_0..w_{d/2-1}), cos(p * w_0..w_{d/2-1})]`` with
    ``w_i = 1 / 10000^(2i / dim)``. An int ``positions`` means ``arange(positions)``.
    """
    if dim % 2 != 0:
        raise ValueError(f"sincos embedding dim must be even, got {dim}")
    if isinstance(positions, int):
        positions = torch.arange(positions, dtype=torch.float64)
    pos = torch.as_tensor(positions, dtype=torch.float64).reshape(-1)
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0))
    out = pos[:, None] * omega[None, :]  # (L, dim/2)
    return torch.cat([out.sin(), out.cos()], dim=1).float()


def sincos_pos_embed_2d(dim: int, grid_h: int, grid_w: int) -> torch.Tensor:
    """2-D sine-cosine embedding on a ``grid_h × grid_w`` grid, row-major: -> (h*w, dim).

    Half the channels encode the column (x) position and half the row (y) position, as MAE.
    """
    if dim % 4 != 0:
        raise ValueError(f"2-D sincos embedding dim must be divisible by 4, got {dim}")
    ys, xs = torch.meshgrid(torch.arange(grid_h), torch.arange(grid_w), indexing="ij")
    emb_x = sincos_pos_embed_1d(dim // 2, xs.reshape(-1))
    emb_y = sincos_pos_embed_1d(dim // 2, ys.reshape(-1))
    return torch.cat([emb_x, emb_y], dim=1)  # (h*w, dim)


def resample_pos_embed_2d(
    pos: torch.Tensor,
    old_hw: tuple[int, int],
    new_hw: tuple[int, int],
    mode: str = "bicubic",
) -> torch.Tensor:
    """Interpolate a row-major 2-D position embedding from ``old_hw`` to ``new_hw``.

    pos: (1, h*w, D) or (h*w, D) -> same layout with new_h*new_w tokens. Returns ``pos``
    itself when the grids are equal. Interpolation runs in fp32 and casts back.
    """
    old_h, old_w = old_hw
    new_h, new_w = new_hw
    squeeze = pos.ndim == 2
    if squeeze:
        pos = pos.unsqueeze(0)
    if pos.shape[1] != old_h * old_w:
        raise ValueError(f"pos embed has {pos.shape[1]} tokens, expected {old_h}x{old_w}={old_h * old_w}")
    if (old_h, old_w) != (new_h, new_w):
        dtype = pos.dtype
        grid = rearrange(pos.float(), "b (h w) d -> b d h w", h=old_h, w=old_w)
        kw = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
        grid = F.interpolate(grid, size=(new_h, new_w), mode=mode, **kw)
        pos = rearrange(grid, "b d h w -> b (h w) d").to(dtype)  # (1, new_h*new_w, D)
    return pos.squeeze(0) if squeeze else pos


def init_weights_mae(module: nn.Module) -> None:
    """MAE init, for ``model.apply``: Linear weights xavier-uniform, biases 0; LayerNorm 1/0.

    Skips tensors without storage (meta, or already partitioned by ``deepspeed.zero.Init``);
    re-apply inside ``deepspeed.zero.GatheredParameters`` to initialise those.
    """
    if isinstance(module, nn.Linear):
        if has_storage(module.weight):
            nn.init.xavier_uniform_(module.weight)
        if has_storage(module.bias):
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        if has_storage(module.weight):
            nn.init.ones_(module.weight)
        if has_storage(module.bias):
            nn.init.zeros_(module.bias)
