"""models.base: the protocol classes, the momentum schedule and the EMA primitive (ZeRO-3 duck typing)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from models.base import Encoder, Pretrainer, cosine_momentum, ema_, has_storage, join_fp32, split_fp32


def test_protocols_reject_a_module_without_the_methods():
    assert not isinstance(nn.Linear(2, 2), Encoder)
    assert not isinstance(nn.Linear(2, 2), Pretrainer)


@pytest.mark.parametrize(
    ("step", "total", "m0", "m1", "want"),
    [
        (0, 100, 0.99, 1.0, 0.99),
        (100, 100, 0.99, 1.0, 1.0),
        (50, 100, 0.9, 1.0, 0.95),
        (200, 100, 0.9, 0.95, 0.95),
    ],
)
def test_cosine_momentum(step, total, m0, m1, want):
    assert cosine_momentum(step, total, m0, m1) == pytest.approx(want)


def test_has_storage():
    assert has_storage(torch.zeros(2)) and not has_storage(None)
    assert not has_storage(torch.empty(0)) and not has_storage(torch.zeros(2, device="meta"))


def _pair(n: int = 6):
    t = nn.Parameter(torch.zeros(n), requires_grad=False)
    s = nn.Parameter(torch.ones(n))
    return t, s


def test_ema_plain_and_copy():
    t, s = _pair()
    ema_([t], [s], 0.75)
    torch.testing.assert_close(t.data, torch.full((6,), 0.25))
    t.data.fill_(float("nan"))  # momentum 0 copies, even over garbage
    ema_([t], [s], 0.0)
    torch.testing.assert_close(t.data, s.data)
    with pytest.raises(ValueError, match=r"momentum must be in \[0, 1\], got 1.5"):
        ema_([t], [s], 1.5)
    with pytest.raises(ValueError, match="zip"):
        ema_([t], [s, s], 0.5)


def test_ema_on_zero3_partitions_and_gathered_tensors():
    """Duck-typed ZeRO-3: the local partition (``ds_tensor``) is always updated; a teacher that is
    also gathered in its own storage has its full tensor updated from the student's full one."""
    t, s = _pair()
    t.ds_tensor, s.ds_tensor = torch.zeros(3), torch.ones(3)  # this rank's half
    t.ds_numel = s.ds_numel = 6
    t.ds_shape = s.ds_shape = (6,)
    ema_([t], [s], 0.5)
    torch.testing.assert_close(t.ds_tensor, torch.full((3,), 0.5))
    torch.testing.assert_close(t.data, torch.full((6,), 0.5))  # gathered: the full tensor too
    s.data = torch.empty(0)  # the student released, the teacher still gathered
    with pytest.raises(RuntimeError, match=r"teacher parameter of shape \(6,\) is gathered but its student"):
        ema_([t], [s], 0.5)
    t.data = torch.empty(0)  # both partitioned: partitions only
    ema_([t], [s], 0.5)
    torch.testing.assert_close(t.ds_tensor, torch.full((3,), 0.75))
    plain = nn.Parameter(torch.ones(6))
    with pytest.raises(ValueError, match="partitioned differently"):
        ema_([t], [plain], 0.5)
    s.ds_tensor = torch.empty(0)  # swapped out to NVMe: an error, not a skipped update
    with pytest.raises(RuntimeError, match=r"partition of a parameter of shape \(6,\) is not in memory"):
        ema_([t], [s], 0.5)


def test_split_fp32_is_exact_and_rounds_to_nearest():
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(4096, generator=g) * 10.0 ** torch.randint(-40, 30, (4096,), generator=g),
                   torch.tensor([0.0, -0.0, 1.0, -1.0, 1e-45, -1e-45, 3.4e38, -3.4e38])])
    hi, lo = split_fp32(x)
    assert hi.dtype == torch.bfloat16 and lo.dtype == torch.int16 and hi.shape == lo.shape == x.shape
    assert torch.equal(join_fp32(hi, lo).view(torch.int32), x.view(torch.int32))  # bit for bit
    # hi is a nearest bf16: it differs from torch's round-to-nearest-even only at exact ties
    ties = (x.view(torch.int32) & 0xFFFF) == 0x8000
    assert torch.equal(hi[~ties], x[~ties].bfloat16())
    assert ((hi.float() - x).abs() <= (x.bfloat16().float() - x).abs() * 1.0001 + 1e-45).all()
    tie = torch.tensor([1.0 + 2.0**-8])  # halfway between bf16 1.0 and 1.0078125: away from zero
    assert split_fp32(tie)[0].item() == 1.0078125 and split_fp32(-tie)[0].item() == -1.0078125


def test_ema_bf16_accumulates_in_fp32():
    """A bf16 teacher moves exactly as an fp32 one would (its fp32 value is the bf16 tensor plus the
    low bits kept in ``_ema_lo``), where bf16 alone would lose most updates."""
    t = nn.Parameter(torch.zeros(4, dtype=torch.bfloat16), requires_grad=False)
    s = nn.Parameter(torch.ones(4, dtype=torch.bfloat16))
    ref = torch.zeros(4)
    for _ in range(10):
        ema_([t], [s], 0.999)
        ref.mul_(0.999).add_(s.data.float(), alpha=1 - 0.999)
    assert t._ema_lo.dtype == torch.int16 and not hasattr(t, "_ema_fp32")
    assert torch.equal(join_fp32(t.data, t._ema_lo), ref)
    assert t.dtype == torch.bfloat16 and t.float().sub(ref).abs().max() < 1e-4
    ema_([t], [s], 0.0)  # a copy drops the low bits
    assert not hasattr(t, "_ema_lo") and torch.equal(t.data, s.data)
    f16 = nn.Parameter(torch.zeros(4, dtype=torch.float16), requires_grad=False)
    for _ in range(10):
        ema_([f16], [s.half()], 0.999)
    torch.testing.assert_close(f16._ema_fp32, ref, rtol=1e-3, atol=1e-6)
