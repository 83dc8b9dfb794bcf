"""Task heads: output shapes, gradient flow, a tiny overfit, error paths."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from models.heads import ChangeHead, LinearProbe, MultiLabelHead, SegmentationHead


def levels(b: int = 2, dims=(8, 8, 8, 16), sizes=(16, 8, 4, 2), seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, c, s, s, generator=g, requires_grad=True) for c, s in zip(dims, sizes)]


@pytest.mark.parametrize("norm", [False, True])
def test_linear_probe_shape_and_grad(norm):
    head = LinearProbe(16, 5, norm=norm)
    x = torch.randn(4, 16, requires_grad=True)
    out = head(x)
    assert out.shape == (4, 5)
    out.sum().backward()
    assert x.grad is not None and head.fc.weight.grad.abs().sum() > 0
    assert sum(p.numel() for p in head.parameters()) == 16 * 5 + 5  # BN carries no parameters


@pytest.mark.parametrize("hidden", [None, 32])
def test_multilabel_head_shape_grad_and_loss(hidden):
    head = MultiLabelHead(16, 7, hidden=hidden, dropout=0.1)
    x = torch.randn(3, 16, requires_grad=True)
    logits = head(x)
    assert logits.shape == (3, 7)
    targets = (torch.rand(3, 7) > 0.5).float()
    loss = head.loss(logits, targets)
    torch.testing.assert_close(loss, F.binary_cross_entropy_with_logits(logits, targets))
    loss.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_head_constructor_errors():
    with pytest.raises(ValueError, match="must be >= 1"):
        LinearProbe(0, 3)
    with pytest.raises(ValueError, match="must be >= 1"):
        MultiLabelHead(4, 0)
    with pytest.raises(ValueError, match="at least one input level"):
        SegmentationHead([], 3)


@pytest.mark.parametrize("out_size", [None, (32, 32)])
def test_segmentation_head_shapes_and_grads(out_size):
    feats = levels()
    head = SegmentationHead([8, 8, 8, 16], num_classes=3, channels=16)
    out = head(feats, out_size=out_size)
    assert out.shape == (2, 3, *(out_size or (16, 16)))
    out.mean().backward()
    assert all(f.grad is not None and f.grad.abs().sum() > 0 for f in feats)  # every level contributes


def test_segmentation_head_batch_one_single_level_trains():
    head = SegmentationHead([8], num_classes=2, channels=8).train()
    x = torch.randn(1, 8, 5, 5)
    assert head([x]).shape == (1, 2, 5, 5)


def test_segmentation_head_errors():
    head = SegmentationHead([8, 16], num_classes=2, channels=8)
    with pytest.raises(ValueError, match="expected 2 feature levels"):
        head([torch.randn(1, 8, 4, 4)])
    with pytest.raises(ValueError, match="does not have 16 channels"):
        head([torch.randn(1, 8, 4, 4), torch.randn(1, 8, 2, 2)])


def test_segmentation_head_overfits_a_tiny_batch():
    torch.manual_seed(0)
    feats = [f.detach() for f in levels(b=2, dims=(8, 8), sizes=(8, 4))]
    target = F.interpolate(feats[0][:, :3], size=(16, 16), mode="nearest").argmax(1)  # (2, 16, 16)
    head = SegmentationHead([8, 8], num_classes=3, channels=16, dropout=0.0)
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    first = None
    for _ in range(60):
        loss = F.cross_entropy(head(feats, out_size=(16, 16)), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = first if first is not None else loss.item()
    assert loss.item() < 0.3 * first


def test_change_head_single_and_multilevel():
    a, b = torch.randn(2, 8, 4, 4, requires_grad=True), torch.randn(2, 8, 4, 4)
    single = ChangeHead(8, num_classes=1, channels=8)
    out = single(a, b, out_size=(16, 16))
    assert out.shape == (2, 1, 16, 16)
    out.sum().backward()
    assert a.grad is not None and a.grad.abs().sum() > 0
    multi = ChangeHead([8, 8, 8, 16], num_classes=2, channels=8)
    assert multi(levels(seed=0), levels(seed=1)).shape == (2, 2, 16, 16)
    with pytest.raises(ValueError, match="same levels and shapes"):
        multi(levels(), levels()[:3])


def test_change_head_learns_to_find_the_change():
    torch.manual_seed(0)
    a = torch.randn(4, 4, 8, 8)
    changed = torch.rand(4, 1, 8, 8) > 0.7
    b = torch.where(changed, a + 3.0, a)
    head = ChangeHead(4, num_classes=1, channels=8)
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    for _ in range(60):
        loss = F.binary_cross_entropy_with_logits(head(a, b), changed.float())
        opt.zero_grad()
        loss.backward()
        opt.step()
    acc = ((head(a, b) > 0) == changed).float().mean()
    assert acc > 0.95, acc


def test_masked_cross_entropy_counts_only_labelled_targets():
    from models.heads import IGNORE_INDEX, masked_cross_entropy

    logits = torch.randn(2, 3, 4, 4)
    target = torch.randint(0, 3, (2, 4, 4))
    target[0] = IGNORE_INDEX
    keep = target != IGNORE_INDEX
    expected = F.cross_entropy(logits.permute(0, 2, 3, 1)[keep], target[keep])
    torch.testing.assert_close(masked_cross_entropy(logits, target), expected)
    # every target ignored: 0, not NaN (torch's mean), and no gradient
    logits.requires_grad_(True)
    loss = masked_cross_entropy(logits, torch.full((2, 4, 4), IGNORE_INDEX))
    loss.backward()
    assert loss.item() == 0.0 and logits.grad.abs().sum() == 0
    nan = F.cross_entropy(logits, torch.full((2, 4, 4), IGNORE_INDEX), ignore_index=IGNORE_INDEX)
    assert torch.isnan(nan)
