"""Pure loss functions of the pretrainers: no modules, no parameters, fp32 math.

- ``mae_loss_terms``: SpectralGPT's masked-token MSE and spectral-summed MSE;
- ``info_nce``: the contrastive loss of every SkySense granularity;
- ``sinkhorn``: balanced soft assignment (Sinkhorn-Knopp, SwAV) for object clusters and geo prototypes;
- ``soft_cross_entropy``: swapped prediction of a (detached) soft target.

Shapes: B batch, L tokens, P pixels per token, N items, K clusters, D width.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["info_nce", "mae_loss_terms", "sinkhorn", "soft_cross_entropy"]


def mae_loss_terms(
    target: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor, groups: int, norm_pix_loss: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """The two reconstruction terms of SpectralGPT, in fp32.

    target (B, L, P) patchified input with tokens in (t, h, w) order, pred (B, L, P), mask (B, L)
    with 1 = masked, ``groups`` = t spectral groups (L = t·h·w). Returns

    - masked: mean over masked tokens of the per-token MSE (target per-token normalised when
      ``norm_pix_loss``); 0, not NaN, when nothing is masked;
    - spectral: MSE between prediction and target summed over the t spectral groups, i.e.
      (B, h*w, P) maps, averaged over all positions. As in the official code the summed target
      is taken before the ``norm_pix_loss`` normalisation.
    """
    target = target.float()
    pred = pred.float()
    B, L, P = target.shape
    target_sum = target.view(B, groups, L // groups, P).sum(1)  # (B, h*w, P)
    pred_sum = pred.view(B, groups, L // groups, P).sum(1)  # (B, h*w, P)
    spectral = (pred_sum - target_sum).pow(2).mean()
    if norm_pix_loss:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + 1.0e-6) ** 0.5
    per_token = (pred - target).pow(2).mean(dim=-1)  # (B, L)
    mask = mask.float()
    masked = (per_token * mask).sum() / mask.sum().clamp(min=1.0)
    return masked, spectral


@torch.no_grad()
def sinkhorn(scores: torch.Tensor, n_iters: int = 3, eps: float = 0.05) -> torch.Tensor:
    """Balanced soft assignment of N items to K clusters (Sinkhorn-Knopp, SwAV): (N, K) -> (N, K).

    Finds ``Q ∝ exp(scores / eps)`` whose rows sum to 1 and whose columns sum to ≈ N / K (exact
    in the limit of iterations; the last step normalizes rows). Log domain, fp32, no gradient.
    """
    if scores.ndim != 2:
        raise ValueError(f"scores must be (N, K), got {tuple(scores.shape)}")
    if n_iters < 1 or eps <= 0:
        raise ValueError(f"need n_iters >= 1 and eps > 0, got {n_iters}, {eps}")
    n, k = scores.shape
    log_q = scores.float() / eps
    for _ in range(n_iters):
        log_q = log_q - torch.logsumexp(log_q, dim=0, keepdim=True) - math.log(k)  # columns sum to 1/K
        log_q = log_q - torch.logsumexp(log_q, dim=1, keepdim=True) - math.log(n)  # rows sum to 1/N
    return torch.softmax(log_q, dim=1)  # rows sum to 1


def info_nce(
    q: torch.Tensor, k: torch.Tensor, temperature: float = 0.2, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """InfoNCE: row i of ``q`` must pick row i of ``k`` among all rows of ``k``. (N, D), (N, D) -> ().

    Cosine similarities over ``temperature``; ``weight`` (N,) weights each row's cross-entropy
    (rows with weight 0 are left out as queries, but stay negatives). fp32.
    """
    if q.shape != k.shape or q.ndim != 2:
        raise ValueError(f"q and k must both be (N, D), got {tuple(q.shape)} and {tuple(k.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    q = F.normalize(q.float(), dim=-1)
    k = F.normalize(k.float(), dim=-1)
    logits = q @ k.T / temperature  # (N, N)
    ce = F.cross_entropy(logits, torch.arange(q.shape[0], device=q.device), reduction="none")
    if weight is None:
        return ce.mean()
    w = weight.float()
    return (ce * w).sum() / w.sum().clamp(min=1e-6)


def soft_cross_entropy(target: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Mean over rows of ``−Σ_k target · log_softmax(logits)``: (N, K), (N, K) -> () (swapped prediction)."""
    return -(target * F.log_softmax(logits, dim=-1)).sum(-1).mean()
