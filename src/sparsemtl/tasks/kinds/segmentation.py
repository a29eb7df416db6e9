"""Semantic segmentation: per-pixel class logits, cross-entropy, confusion-matrix mIoU."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from sparsemtl.tasks.base import (
    PERCENT,
    Metric,
    TaskKind,
    match_resolution,
    mean_or_zero,
    ratio,
    register_kind,
    upcast,
)
from sparsemtl.tasks.colours import class_palette
from sparsemtl.tasks.spec import IGNORE_INDEX, TaskSpec


def segmentation_loss(pred: Tensor, target: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """Cross-entropy over (B, C, H, W) logits, ignoring ``IGNORE_INDEX`` pixels.

    Per-pixel losses are averaged by hand (not ``reduction="mean"``) so an all-ignored batch
    gives 0 instead of 0/0.
    """
    if pred.dim() != 4 or target.dim() != 3 or pred.shape[0] != target.shape[0]:
        raise ValueError(
            f"segmentation expects (B, C, H, W) logits and a (B, H, W) target, "
            f"got {tuple(pred.shape)} and {tuple(target.shape)}"
        )
    target = target.long()
    per_pixel = F.cross_entropy(
        upcast(match_resolution(pred, target)),
        target,
        ignore_index=IGNORE_INDEX,
        label_smoothing=label_smoothing,
        reduction="none",
    )
    return mean_or_zero(per_pixel[target != IGNORE_INDEX])


class SegmentationMetric(Metric):
    """Confusion matrix (rows: target class, columns: predicted class) over non-ignored pixels.

    ``miou`` averages IoU over the classes whose union (target or prediction) is non-empty
    over the whole split; a class absent from both is left out rather than counted as 0 or 1.
    """

    DIRECTIONS = {"miou": True, "pixel_acc": True}

    def __init__(self, num_classes: int) -> None:
        if num_classes < 2:
            raise ValueError(f"segmentation needs num_classes >= 2, got {num_classes}")
        super().__init__(num_classes * num_classes)
        self.num_classes = num_classes

    def batch_totals(self, pred: Tensor, target: Tensor) -> Tensor:
        if pred.dim() != 4 or pred.shape[1] != self.num_classes or target.dim() != 3:
            raise ValueError(
                f"expected (B, {self.num_classes}, H, W) logits and a (B, H, W) target, "
                f"got {tuple(pred.shape)} and {tuple(target.shape)}"
            )
        guess = match_resolution(pred, target).argmax(dim=1)
        valid = target != IGNORE_INDEX
        truth = target[valid].long()
        if truth.numel() and (truth.min() < 0 or truth.max() >= self.num_classes):
            raise ValueError(f"segmentation labels must lie in [0, {self.num_classes}) or be {IGNORE_INDEX}")
        cells = truth * self.num_classes + guess[valid]
        return torch.bincount(cells, minlength=self.num_classes**2)

    def confusion(self) -> Tensor:
        """The accumulated (target, prediction) pixel counts as a (C, C) matrix."""
        return self.totals.view(self.num_classes, self.num_classes)

    def compute(self) -> dict[str, float]:
        confusion = self.confusion()
        hits = confusion.diagonal()
        union = confusion.sum(dim=0) + confusion.sum(dim=1) - hits
        present = union > 0
        miou = (hits[present] / union[present]).mean().item() if present.any() else math.nan
        return {
            "miou": PERCENT * miou,
            "pixel_acc": PERCENT * ratio(hits.sum().item(), confusion.sum().item()),
        }


@register_kind
class Segmentation(TaskKind):
    """(B, H, W) int64 labels, ``IGNORE_INDEX`` = void; nearest resampling keeps labels labels."""

    name = "segmentation"
    head = "dense"
    metric_directions = SegmentationMetric.DIRECTIONS
    primary_metrics = ("miou",)
    loss_options = ("label_smoothing",)

    def channels(self, spec: TaskSpec) -> int:
        return spec.num_classes

    def check_spec(self, spec: TaskSpec) -> None:
        super().check_spec(spec)
        if spec.num_classes < 2:
            raise ValueError(f"segmentation task {spec.name!r} needs num_classes >= 2")

    def compute_loss(self, pred: Tensor, target: Tensor, spec: TaskSpec, **options: float) -> Tensor:
        return segmentation_loss(pred, target, **options)

    def new_metric(self, spec: TaskSpec) -> Metric:
        return SegmentationMetric(spec.num_classes)

    def decode(self, pred: Tensor, spec: TaskSpec) -> Tensor:
        return pred.argmax(dim=0)

    def visualise(self, values: Tensor, spec: TaskSpec) -> np.ndarray:
        labels = values.cpu().numpy().astype(np.int64)
        picture = class_palette(spec.num_classes)[np.clip(labels, 0, spec.num_classes - 1)]
        picture[labels == IGNORE_INDEX] = 0
        return picture
