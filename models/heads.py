"""Task heads on top of any encoder: linear probe, multi-label, segmentation, change detection.

Shapes: B batch, D feature width, C_i channels of level i, K classes.

- ``LinearProbe``: pooled features (B, D) -> class logits (B, K) (optional parameter-free BN, as
  the MAE linear-probing protocol).
- ``MultiLabelHead``: pooled features (B, D) -> logits (B, K) for ``BCEWithLogits`` (``.loss``).
- ``SegmentationHead``: light UPerNet: a pyramid pooling module on the deepest level plus an FPN
  over ``list[(B, C_i, H_i, W_i)]`` (finest first) -> (B, K, H, W).
- ``ChangeHead``: features of two dates, single maps or multi-level lists, compared per level
  as ``[a, b, |a - b|]`` and decoded by a ``SegmentationHead`` -> change logits (B, K, H, W).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["IGNORE_INDEX", "ChangeHead", "LinearProbe", "MultiLabelHead", "SegmentationHead",
           "masked_cross_entropy"]

#: label of a pixel no loss counts (padding, unlabelled); the shard contract's ``IGNORE_INDEX``
IGNORE_INDEX = 255


def masked_cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """Mean cross-entropy over the targets that are not ``ignore_index``: logits (B, K) or (B, K, H, W),
    target (B,) or (B, H, W) int64. 0 (not NaN, as torch's mean would give) when every target is ignored,
    so a batch of padding alone leaves the weights alone instead of failing the run."""
    total = F.cross_entropy(logits.float(), target, ignore_index=ignore_index, reduction="sum")
    return total / (target != ignore_index).sum().clamp(min=1)


class LinearProbe(nn.Module):
    """(B, D) -> (B, K). ``norm=True`` puts a BatchNorm without affine parameters before the linear."""

    def __init__(self, in_dim: int, num_classes: int, norm: bool = False) -> None:
        super().__init__()
        if in_dim < 1 or num_classes < 1:
            raise ValueError(f"in_dim and num_classes must be >= 1, got {in_dim}, {num_classes}")
        self.norm = nn.BatchNorm1d(in_dim, affine=False, eps=1e-6) if norm else nn.Identity()
        self.fc = nn.Linear(in_dim, num_classes)
        nn.init.trunc_normal_(self.fc.weight, std=0.01)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.norm(x))


class MultiLabelHead(nn.Module):
    """(B, D) -> independent per-class logits (B, K); ``hidden`` adds one GELU layer before them."""

    def __init__(
        self, in_dim: int, num_classes: int, hidden: int | None = None, dropout: float = 0.0
    ) -> None:
        super().__init__()
        if in_dim < 1 or num_classes < 1:
            raise ValueError(f"in_dim and num_classes must be >= 1, got {in_dim}, {num_classes}")
        self.norm = nn.LayerNorm(in_dim)
        self.hidden = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU()) if hidden else nn.Identity()
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(hidden or in_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(self.hidden(self.norm(x))))

    @staticmethod
    def loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean binary cross-entropy; targets (B, K) multi-hot in {0, 1}."""
        return F.binary_cross_entropy_with_logits(logits.float(), targets.float())


def _conv_norm_act(cin: int, cout: int, k: int) -> nn.Sequential:
    """Conv k×k -> GroupNorm (≥ 2 channels a group) -> ReLU, so batch 1 with 1×1 pooled maps trains."""
    groups = next(g for g in (32, 16, 8, 4, 2, 1) if cout % g == 0 and (cout // g >= 2 or g == 1))
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.GroupNorm(groups, cout), nn.ReLU(inplace=True)
    )


class SegmentationHead(nn.Module):
    """Light UPerNet: PPM on the deepest level + FPN top-down path -> (B, K, H, W).

    ``in_channels``: C_i of each level, finest (largest map) first. ``forward(features, out_size)``
    upsamples the logits to ``out_size`` (default: the finest level's size).
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        num_classes: int,
        channels: int = 128,
        pool_scales: Sequence[int] = (1, 2, 3, 6),
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if len(in_channels) < 1 or num_classes < 1:
            raise ValueError("need at least one input level and one class")
        self.in_channels = list(in_channels)
        self.pool_scales = tuple(pool_scales)
        self.ppm = nn.ModuleList(_conv_norm_act(in_channels[-1], channels, 1) for _ in pool_scales)
        self.bottleneck = _conv_norm_act(in_channels[-1] + len(pool_scales) * channels, channels, 3)
        self.lateral = nn.ModuleList(_conv_norm_act(c, channels, 1) for c in in_channels[:-1])
        self.fpn = nn.ModuleList(_conv_norm_act(channels, channels, 3) for _ in in_channels[:-1])
        self.fuse = _conv_norm_act(len(in_channels) * channels, channels, 3)
        self.drop = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def _ppm(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        pooled = [
            F.interpolate(conv(F.adaptive_avg_pool2d(x, s)), size=size, mode="bilinear", align_corners=False)
            for s, conv in zip(self.pool_scales, self.ppm)
        ]
        return self.bottleneck(torch.cat([x, *pooled], dim=1))  # (B, channels, h, w)

    def forward(
        self, features: Sequence[torch.Tensor], out_size: tuple[int, int] | None = None
    ) -> torch.Tensor:
        """features: list of (B, C_i, H_i, W_i), finest first -> logits (B, K, *out_size)."""
        if len(features) != len(self.in_channels):
            raise ValueError(f"expected {len(self.in_channels)} feature levels, got {len(features)}")
        for f, c in zip(features, self.in_channels):
            if f.ndim != 4 or f.shape[1] != c:
                raise ValueError(f"level with shape {tuple(f.shape)} does not have {c} channels")
        lat = [conv(f) for conv, f in zip(self.lateral, features[:-1])] + [self._ppm(features[-1])]
        for i in range(len(lat) - 1, 0, -1):  # top-down: coarse -> fine
            lat[i - 1] = lat[i - 1] + F.interpolate(
                lat[i], size=lat[i - 1].shape[-2:], mode="bilinear", align_corners=False
            )
        outs = [conv(x) for conv, x in zip(self.fpn, lat[:-1])] + [lat[-1]]
        size = outs[0].shape[-2:]
        outs = [outs[0]] + [
            F.interpolate(o, size=size, mode="bilinear", align_corners=False) for o in outs[1:]
        ]
        logits = self.classifier(self.drop(self.fuse(torch.cat(outs, dim=1))))  # (B, K, H_0, W_0)
        if out_size is not None and tuple(out_size) != tuple(size):
            logits = F.interpolate(logits, size=out_size, mode="bilinear", align_corners=False)
        return logits


class ChangeHead(nn.Module):
    """Change logits from two dates' features: per level ``[a, b, |a - b|]`` -> ``SegmentationHead``.

    ``in_channels``: an int (one map per date) or C_i per level, finest first. ``forward(a, b)``
    takes (B, C, H, W) maps or lists of them -> (B, K, H, W) (K = 1: binary change).
    """

    def __init__(self, in_channels: int | Sequence[int], num_classes: int = 1, channels: int = 128) -> None:
        super().__init__()
        levels = [in_channels] if isinstance(in_channels, int) else list(in_channels)
        self.decoder = SegmentationHead([3 * c for c in levels], num_classes, channels, dropout=0.0)

    def forward(
        self,
        a: torch.Tensor | Sequence[torch.Tensor],
        b: torch.Tensor | Sequence[torch.Tensor],
        out_size: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        a_l = [a] if torch.is_tensor(a) else list(a)
        b_l = [b] if torch.is_tensor(b) else list(b)
        if len(a_l) != len(b_l) or any(x.shape != y.shape for x, y in zip(a_l, b_l)):
            raise ValueError("the two dates' features must have the same levels and shapes")
        return self.decoder([torch.cat([x, y, (x - y).abs()], dim=1) for x, y in zip(a_l, b_l)], out_size)
