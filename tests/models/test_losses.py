"""Pure losses (models.losses): balanced assignment, InfoNCE, soft cross-entropy."""

from __future__ import annotations

import pytest
import torch

from models.losses import info_nce, sinkhorn, soft_cross_entropy


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


def test_soft_cross_entropy_is_minimal_at_the_target():
    target = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    at_target = soft_cross_entropy(target, target.log())
    entropy = -(target * target.log()).sum(-1).mean()
    torch.testing.assert_close(at_target, entropy)
    assert soft_cross_entropy(target, torch.zeros(2, 3)) > at_target
