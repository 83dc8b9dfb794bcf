"""Shared layers: SDPA attention equals the textbook computation, blocks, position embeddings."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from models.layers import (
    Attention,
    Block,
    DropPath,
    Mlp,
    checkpoint_blocks,
    init_weights_mae,
    resample_pos_embed_2d,
    sincos_pos_embed_1d,
    sincos_pos_embed_2d,
)


def manual_attention(attn: Attention, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    B, N, D = x.shape
    h = attn.num_heads
    q, k, v = attn.qkv(x).reshape(B, N, 3, h, D // h).permute(2, 0, 3, 1, 4)
    scores = q @ k.transpose(-2, -1) / math.sqrt(D // h)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, N, D)
    return attn.proj(out)


def test_attention_matches_manual_softmax():
    torch.manual_seed(0)
    attn = Attention(32, 4)
    x = torch.randn(2, 7, 32)
    torch.testing.assert_close(attn(x), manual_attention(attn, x), atol=1e-5, rtol=1e-5)


def test_attention_bool_mask():
    torch.manual_seed(0)
    attn = Attention(16, 2)
    x = torch.randn(1, 5, 16)
    mask = torch.ones(5, 5, dtype=torch.bool).tril()  # causal
    out = attn(x, attn_mask=mask)
    torch.testing.assert_close(out, manual_attention(attn, x, mask), atol=1e-5, rtol=1e-5)
    # token 0 only sees itself: changing later tokens leaves it unchanged
    x2 = x.clone()
    x2[:, 1:] += 1.0
    torch.testing.assert_close(attn(x2, attn_mask=mask)[:, 0], out[:, 0])


def test_attention_rejects_bad_heads():
    with pytest.raises(ValueError, match="divisible by num_heads"):
        Attention(30, 4)


def test_mlp_and_block_shapes_and_identity_defaults():
    assert Mlp(8, 32, 4)(torch.randn(3, 8)).shape == (3, 4)
    blk = Block(32, 4, qkv_bias=False)
    assert blk.attn.qkv.bias is None
    assert isinstance(blk.drop_path1, nn.Identity) and isinstance(blk.mlp.drop, nn.Identity)
    assert blk(torch.randn(2, 5, 32)).shape == (2, 5, 32)


def test_drop_path():
    dp = DropPath(0.5)
    x = torch.ones(1000, 3)
    dp.train()
    y = dp(x)
    kept = (y[:, 0] != 0).float()
    assert 0.4 < kept.mean() < 0.6
    assert torch.all((y == 0) | (y == 2.0))  # survivors rescaled by 1 / (1 - p)
    dp.eval()
    assert torch.equal(dp(x), x)
    with pytest.raises(ValueError, match=r"in \[0, 1\)"):
        DropPath(1.0)


def test_sincos_1d_values():
    emb = sincos_pos_embed_1d(8, 3)
    assert emb.shape == (3, 8)
    torch.testing.assert_close(emb[0], torch.tensor([0.0] * 4 + [1.0] * 4))
    torch.testing.assert_close(emb[1, 0], torch.tensor(math.sin(1.0)))  # w_0 = 1
    torch.testing.assert_close(emb[2, 5], torch.tensor(math.cos(2.0 / 10000 ** (1 / 4))))
    with pytest.raises(ValueError, match="must be even"):
        sincos_pos_embed_1d(7, 3)


def test_sincos_2d_layout():
    emb = sincos_pos_embed_2d(16, 2, 3)
    assert emb.shape == (6, 16)
    # row-major: token 1 is (y=0, x=1); first half encodes x, second half y
    torch.testing.assert_close(emb[1, :8], sincos_pos_embed_1d(8, [1.0])[0])
    torch.testing.assert_close(emb[1, 8:], sincos_pos_embed_1d(8, [0.0])[0])
    torch.testing.assert_close(emb[3, 8:], sincos_pos_embed_1d(8, [1.0])[0])
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_pos_embed_2d(6, 2, 2)


@pytest.mark.parametrize(
    ("layout", "old", "new"),
    [((1, 16, 8), (4, 4), (6, 6)), ((16, 8), (4, 4), (2, 8)), ((1, 12, 8), (3, 4), (3, 4))],
)
def test_resample_pos_embed_2d(layout, old, new):
    pos = torch.randn(layout)
    out = resample_pos_embed_2d(pos, old, new)
    assert out.shape == (*layout[:-2], new[0] * new[1], 8)
    if old == new:
        assert out is pos
    const = torch.full(layout, 0.5)  # a constant field stays constant
    torch.testing.assert_close(resample_pos_embed_2d(const, old, new), torch.full_like(out, 0.5))


def test_resample_pos_embed_wrong_tokens():
    with pytest.raises(ValueError, match="expected 3x3=9"):
        resample_pos_embed_2d(torch.zeros(1, 10, 4), (3, 3), (4, 4))


def test_checkpoint_blocks_same_output_and_grads():
    torch.manual_seed(0)
    blocks = nn.ModuleList(Block(16, 2) for _ in range(3)).train()
    x = torch.randn(2, 5, 16, requires_grad=True)
    grads = []
    for enabled in (False, True):
        blocks.zero_grad()
        x.grad = None
        out = checkpoint_blocks(blocks, x, enabled)
        out.square().sum().backward()
        grads.append((out.detach(), x.grad.clone(), blocks[0].attn.qkv.weight.grad.clone()))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


def test_init_weights_mae_skips_storage_less_params():
    with torch.device("meta"):
        meta = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
    meta.apply(init_weights_mae)  # no error on meta
    lin = nn.Linear(4, 4)
    lin.weight.data = torch.empty(0)  # as deepspeed.zero.Init leaves a partitioned parameter
    init_weights_mae(lin)
    assert torch.equal(lin.bias, torch.zeros(4))
    ln = nn.LayerNorm(4)
    nn.init.constant_(ln.weight, 3.0)
    init_weights_mae(ln)
    assert torch.equal(ln.weight, torch.ones(4))
