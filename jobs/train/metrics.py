"""Downstream metrics, dataset-level: torchmetrics states summed (or concatenated) over every batch of a
split and, under ``torch.distributed``, over every rank before ``compute``, so a figure is the one of the
whole split, never a mean of per-batch figures.

    m = TaskMetrics("segmentation", num_classes=13)
    for logits, label in batches:           # (B, K, H, W) logits, (B, H, W) ids or IGNORE_INDEX
        m.update(logits, label)
    m.compute()                             # {"miou": ..., "oa": ...}, synced over ranks

Per task (``PRIMARY`` names the one model selection and sweeps rank by, higher is better):

========================  ====================================================================
classification            ``oa`` overall accuracy (micro)
multilabel                ``map_micro``, ``map_macro`` average precision of the sigmoid scores
segmentation              ``miou`` mean IoU over the classes present in the labels or predictions;
                          ``oa`` pixel accuracy; pixels labelled ``IGNORE_INDEX`` count nowhere
change                    ``precision``, ``recall``, ``f1`` of the change class (1); ignored pixels
                          count nowhere
========================  ====================================================================
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import (
    BinaryF1Score,
    BinaryPrecision,
    BinaryRecall,
    MulticlassAccuracy,
    MulticlassJaccardIndex,
    MultilabelAveragePrecision,
)

from pipeline.shards import IGNORE_INDEX

__all__ = ["METRICS", "PRIMARY", "TaskMetrics", "predictions"]

#: the metric each task is selected by (``val_score``)
PRIMARY = {"classification": "oa", "multilabel": "map_micro", "segmentation": "miou", "change": "f1"}
#: every metric of each task, in report order
METRICS = {
    "classification": ("oa",),
    "multilabel": ("map_micro", "map_macro"),
    "segmentation": ("miou", "oa"),
    "change": ("precision", "recall", "f1"),
}


def _collection(task: str, num_classes: int) -> dict[str, Metric]:
    if task == "classification":
        return {"oa": MulticlassAccuracy(num_classes, average="micro")}
    if task == "multilabel":
        return {"map_micro": MultilabelAveragePrecision(num_classes, average="micro"),
                "map_macro": MultilabelAveragePrecision(num_classes, average="macro")}
    if task == "segmentation":
        return {"miou": MulticlassJaccardIndex(num_classes, average="macro", ignore_index=IGNORE_INDEX),
                "oa": MulticlassAccuracy(num_classes, average="micro", ignore_index=IGNORE_INDEX)}
    if task == "change":
        return {"precision": BinaryPrecision(ignore_index=IGNORE_INDEX),
                "recall": BinaryRecall(ignore_index=IGNORE_INDEX),
                "f1": BinaryF1Score(ignore_index=IGNORE_INDEX)}
    raise ValueError(f"task must be one of {sorted(METRICS)}, got {task!r}")


def predictions(task: str, logits: torch.Tensor) -> torch.Tensor:
    """What the metrics score: class ids ``(B,)`` / ``(B, H, W)`` (argmax over K), sigmoid scores
    ``(B, K)`` for multilabel."""
    if task == "multilabel":
        return torch.sigmoid(logits.float())
    return logits.argmax(dim=1)


class TaskMetrics:
    """The metrics of one task over a split (see the module docstring). ``device``: where the states
    live (the workers' device, so NCCL can sync them)."""

    def __init__(self, task: str, num_classes: int, device: torch.device | str = "cpu") -> None:
        self.task, self.num_classes, self.device = task, num_classes, torch.device(device)
        self.metrics = MetricCollection(_collection(task, num_classes), compute_groups=False).to(device)

    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        """logits ``(B, K)`` or ``(B, K, H, W)``; target ``(B,)`` ids, ``(B, K)`` 0/1 or ``(B, H, W)``."""
        self.metrics.update(predictions(self.task, logits), target.long())

    def update_predictions(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        """As ``update`` from ``predictions(task, logits)`` already taken (e.g. saved ones)."""
        self.metrics.update(preds, target.long())

    def compute(self) -> dict[str, float]:
        """Every metric over all updates of every rank (a collective under ``torch.distributed``)."""
        if self.task == "multilabel":
            # Average precision keeps every score (list states, gathered over the ranks); a rank whose
            # share of the split was empty would gather a state of another rank (1-D instead of
            # (N, K)) and break the collective, so each rank adds a (0, K) entry before it.
            empty = torch.zeros(0, self.num_classes, device=self.device)
            self.metrics.update(empty, empty.long())
        return {k: float(v) for k, v in self.metrics.compute().items()}

    def reset(self) -> None:
        self.metrics.reset()


def prefixed(values: Mapping[str, float], prefix: str) -> dict[str, float]:
    """``{"oa": 0.9}`` -> ``{"val_oa": 0.9}``."""
    return {f"{prefix}_{k}": v for k, v in values.items()}
