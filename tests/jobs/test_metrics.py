"""Downstream metrics (``jobs.train.metrics``): each task's figures against values computed by hand on tiny
examples, dataset-level (not the mean of per-batch figures), ignore index 255, and the sync over two gloo
ranks (one of which may have no rows of the split)."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from jobs.train.metrics import METRICS, PRIMARY, TaskMetrics, predictions, prefixed

IGN = 255


def _logits(classes: list[int], k: int) -> torch.Tensor:
    """One-hot-ish logits whose argmax is ``classes``: (B, K)."""
    out = torch.zeros(len(classes), k)
    out[torch.arange(len(classes)), torch.tensor(classes)] = 5.0
    return out


def _map_logits(pred: torch.Tensor, k: int) -> torch.Tensor:
    """(B, H, W) class ids -> (B, K, H, W) logits with that argmax."""
    return torch.nn.functional.one_hot(pred, k).permute(0, 3, 1, 2).float() * 5.0


def _per_batch_mean(task: str, k: int, batches, key: str) -> float:
    vals = []
    for logits, target in batches:
        m = TaskMetrics(task, k)
        m.update(logits, target)
        vals.append(m.compute()[key])
    return sum(vals) / len(vals)


def test_tables_agree():
    assert set(PRIMARY) == set(METRICS)
    assert all(PRIMARY[t] in METRICS[t] for t in PRIMARY)
    assert prefixed({"oa": 0.5}, "val") == {"val_oa": 0.5}


def test_classification_oa_is_over_the_split_not_the_batches():
    # batch 1: 3 of 4 right; batch 2: 0 of 1 right -> OA 3/5 = 0.6; per-batch mean (0.75 + 0) / 2
    batches = [(_logits([0, 1, 2, 0], 3), torch.tensor([0, 1, 2, 1])), (_logits([2], 3), torch.tensor([0]))]
    m = TaskMetrics("classification", 3)
    for lg, t in batches:
        m.update(lg, t)
    assert m.compute() == {"oa": pytest.approx(0.6)}
    assert _per_batch_mean("classification", 3, batches, "oa") == pytest.approx(0.375)
    m.reset()
    m.update(*batches[1])
    assert m.compute()["oa"] == 0.0


def test_multilabel_average_precision_by_hand():
    # label 0: scores .9 .8 .3 .1 for targets 1 0 1 0 -> AP = (1/1 + 2/3) / 2 = 5/6
    # label 1: scores .2 .7 .6 .4 for targets 0 1 0 0 -> AP = 1
    # micro: all 8 (score, target) pairs ranked: .9(1) .8(0) .7(1) .6(0) .4(0) .3(1) .2(0) .1(0)
    #        -> precisions at the positives 1/1, 2/3, 3/6 -> AP = (1 + 2/3 + 1/2) / 3 = 13/18
    scores = torch.tensor([[0.9, 0.2], [0.8, 0.7], [0.3, 0.6], [0.1, 0.4]])
    target = torch.tensor([[1, 0], [0, 1], [1, 0], [0, 0]])
    logits = torch.logit(scores)
    m = TaskMetrics("multilabel", 2)
    m.update(logits[:1], target[:1])
    m.update(logits[1:], target[1:])
    got = m.compute()
    assert got["map_macro"] == pytest.approx((5 / 6 + 1) / 2, abs=1e-6)
    assert got["map_micro"] == pytest.approx(13 / 18, abs=1e-6)
    torch.testing.assert_close(predictions("multilabel", logits), scores)


def test_segmentation_miou_and_oa_ignore_255():
    target = torch.tensor([[[0, 0, 1, 1], [0, 2, 2, IGN]]])  # (1, 2, 4)
    pred = torch.tensor([[[0, 1, 1, 1], [0, 2, 0, 0]]])
    # labelled pixels: 7; right: (0,0) (0,2) (0,3) (1,0) (1,1) -> OA 5/7
    # IoU: class 0: inter 2 (px 00, 10), union |pred 0 labelled: 00 10 12| ∪ |target 0: 00 01 10| = 4 -> 1/2
    #      class 1: inter 2, union {01 02 03} -> 2/3; class 2: inter 1, union {11 12} -> 1/2
    m = TaskMetrics("segmentation", 3)
    m.update(_map_logits(pred, 3), target)
    got = m.compute()
    assert got["oa"] == pytest.approx(5 / 7)
    assert got["miou"] == pytest.approx((1 / 2 + 2 / 3 + 1 / 2) / 3)


def test_segmentation_miou_over_the_split_differs_from_per_batch():
    t1, p1 = torch.tensor([[[0, 0], [1, 1]]]), torch.tensor([[[0, 0], [1, 1]]])  # perfect: miou 1
    t2, p2 = torch.tensor([[[1, 1], [1, 1]]]), torch.tensor([[[0, 1], [1, 1]]])  # miou (0 + 3/4) / 2
    batches = [(_map_logits(p1, 2), t1), (_map_logits(p2, 2), t2)]
    m = TaskMetrics("segmentation", 2)
    for lg, t in batches:
        m.update(lg, t)
    # whole split: class 0 inter 2 union 3 -> 2/3; class 1 inter 5 union 6 -> 5/6
    assert m.compute()["miou"] == pytest.approx((2 / 3 + 5 / 6) / 2)
    assert _per_batch_mean("segmentation", 2, batches, "miou") == pytest.approx((1 + 3 / 8) / 2)


def test_change_precision_recall_f1_of_the_change_class():
    target = torch.tensor([[[1, 1, 0, 0], [1, 0, IGN, IGN]]])
    pred = torch.tensor([[[1, 0, 1, 0], [1, 0, 1, 1]]])
    # labelled: tp = 2 (00, 10), fp = 1 (02), fn = 1 (01) -> P = R = F1 = 2/3; the ignored pred-1 pixels
    # count nowhere
    m = TaskMetrics("change", 2)
    m.update(_map_logits(pred, 2), target)
    got = m.compute()
    assert got == pytest.approx({"precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3})


def test_change_f1_over_the_split_differs_from_per_batch():
    b1 = (_map_logits(torch.tensor([[[1, 1, 1, 1]]]), 2), torch.tensor([[[1, 1, 1, 1]]]))  # f1 1
    b2 = (_map_logits(torch.tensor([[[1, 0, 0, 0]]]), 2), torch.tensor([[[0, 1, 0, 0]]]))  # f1 0
    m = TaskMetrics("change", 2)
    for lg, t in (b1, b2):
        m.update(lg, t)
    # tp 4, fp 1, fn 1 -> F1 = 8 / 10
    assert m.compute()["f1"] == pytest.approx(0.8)
    assert _per_batch_mean("change", 2, [b1, b2], "f1") == pytest.approx(0.5)


def test_unknown_task():
    with pytest.raises(ValueError, match="task must be one of"):
        TaskMetrics("detection", 3)


# ------------------------------------------------------------------------------------ two ranks


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, world: int, port: int, cases, queue) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    out = {}
    for task, k, shares in cases:
        m = TaskMetrics(task, k)
        for logits, target in shares[rank]:
            m.update(logits, target)
        out[task] = m.compute()
    queue.put((rank, out))
    dist.destroy_process_group()


def _case(task: str):
    """(task, K, each rank's batches, the whole split's figures in one process)."""
    g = torch.Generator().manual_seed(3)
    k = 2 if task == "change" else 3
    if task in ("classification", "multilabel"):
        logits = torch.randn(10, k, generator=g)
        target = (torch.randint(0, k, (10,), generator=g) if task == "classification"
                  else torch.randint(0, 2, (10, k), generator=g))
    else:
        logits = torch.randn(6, k, 4, 4, generator=g)
        target = torch.randint(0, k, (6, 4, 4), generator=g)
        target[0, 0] = IGN
    cut = 10 if task == "multilabel" else 4  # multilabel: rank 1 has no rows at all
    shares = [[(logits[:cut], target[:cut])], [(logits[cut:], target[cut:])] if cut < len(logits) else []]
    whole = TaskMetrics(task, k)
    whole.update(logits, target)
    return (task, k, shares), whole.compute()


@pytest.mark.slow
def test_synced_over_ranks_equals_the_whole_split():
    """Two gloo ranks each score part of a split (for multilabel rank 1 none of it: the empty-rank case);
    both get the figures of the whole split computed in one process, for every task."""
    made = [_case(t) for t in METRICS]
    cases, expected = [c for c, _ in made], {c[0]: e for c, e in made}
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_rank, args=(r, 2, port, cases, queue)) for r in range(2)]
    for p in procs:
        p.start()
    got = dict(queue.get(timeout=300) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    for r in (0, 1):
        for task in METRICS:
            assert got[r][task] == pytest.approx(expected[task], abs=1e-6), (r, task)
