"""Split-level evaluation metrics, accumulated as sums (see ``Metric``).

Conventions: depths and depth errors are in metres, angles in degrees, and every ratio-type
metric (mIoU, pixel accuracy, delta1, within-t, accuracy, F1) is a percentage in 0..100.
An accumulator that has seen no valid pixel/sample reports NaN, never 0.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from sparsemtl.tasks.base import (
    Metric,
    attribute_logits,
    match_resolution,
    ratio,
    valid_depth,
    valid_normals,
)
from sparsemtl.tasks.spec import IGNORE_INDEX

PERCENT = 100.0

#: delta1 threshold on max(pred / gt, gt / pred).
DELTA1_THRESHOLD = 1.25

#: Angular error thresholds (degrees) for the within-t percentages.
ANGLE_THRESHOLDS = (11.25, 22.5, 30.0)

#: Width (degrees) and count of the angle histogram that makes the median summable.
ANGLE_BIN_WIDTH = 0.01
ANGLE_BINS = 18000

#: Leading entries of ``NormalsMetric.totals``: count, sum of angles, one count per threshold.
_NORMALS_HEADER = 2 + len(ANGLE_THRESHOLDS)


def _within_name(limit: float) -> str:
    """Metric key for a threshold, e.g. 11.25 -> ``within_11_25``."""
    return f"within_{limit:g}".replace(".", "_")


def _count(values: Tensor) -> Tensor:
    """Number of elements as a float64 scalar on ``values``' device."""
    return torch.tensor(float(values.numel()), dtype=torch.float64, device=values.device)


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


class DepthMetric(Metric):
    """Depth errors over pixels with a finite, positive target.

    ``rmse`` is the square root of the mean squared error over all valid pixels of the
    split; ``delta1`` counts non-positive predictions as failures.
    """

    DIRECTIONS = {"abs_err": False, "rel_err": False, "rmse": False, "delta1": True}

    def __init__(self) -> None:
        super().__init__(5)  # count, sum |e|, sum |e|/g, sum e^2, delta1 hits

    def batch_totals(self, pred: Tensor, target: Tensor) -> Tensor:
        depth, truth = valid_depth(pred.double(), target)
        error = (depth - truth).abs()
        scale = torch.maximum(depth / truth, truth / depth)
        hits = (depth > 0) & (scale < DELTA1_THRESHOLD)
        sums = [error.sum(), (error / truth).sum(), error.square().sum(), hits.sum().double()]
        return torch.stack([_count(error), *sums])

    def compute(self) -> dict[str, float]:
        count, abs_sum, rel_sum, sq_sum, hits = self.totals.tolist()
        return {
            "abs_err": ratio(abs_sum, count),
            "rel_err": ratio(rel_sum, count),
            "rmse": math.sqrt(ratio(sq_sum, count)),
            "delta1": PERCENT * ratio(hits, count),
        }


class NormalsMetric(Metric):
    """Angular error (degrees) between unit predicted and target normals on valid pixels.

    The median must be summable, so it comes from a histogram of ``ANGLE_BINS`` bins of
    ``ANGLE_BIN_WIDTH`` (0.01) degrees: each middle order statistic (one for an odd pixel
    count, the two averaged for an even one, as numpy does) is placed inside its own bin as
    if that bin's angles were evenly spread. Each lies in the same bin as the exact value, so
    the median is within one bin width (0.01 degree) of the exact median.
    """

    DIRECTIONS = {
        "mean_angle": False,
        "median_angle": False,
        **{_within_name(limit): True for limit in ANGLE_THRESHOLDS},
    }

    def __init__(self) -> None:
        super().__init__(_NORMALS_HEADER + ANGLE_BINS)

    def batch_totals(self, pred: Tensor, target: Tensor) -> Tensor:
        normal, truth = valid_normals(pred.double(), target)
        angle = torch.rad2deg(torch.arccos((normal * truth).sum(dim=-1).clamp(-1.0, 1.0)))
        within = [(angle < limit).sum().double() for limit in ANGLE_THRESHOLDS]
        bins = (angle / ANGLE_BIN_WIDTH).long().clamp(max=ANGLE_BINS - 1)
        histogram = torch.bincount(bins, minlength=ANGLE_BINS).double()
        return torch.cat([torch.stack([_count(angle), angle.sum(), *within]), histogram])

    def compute(self) -> dict[str, float]:
        count, angle_sum, *within = self.totals[:_NORMALS_HEADER].tolist()
        return {
            "mean_angle": ratio(angle_sum, count),
            "median_angle": self._median(count),
            **{_within_name(limit): PERCENT * ratio(hits, count) for limit, hits in zip(ANGLE_THRESHOLDS, within)},
        }

    def _median(self, count: float) -> float:
        """Average of the middle order statistics estimated from the histogram."""
        if count == 0:
            return math.nan
        histogram = self.totals[_NORMALS_HEADER:]
        cumulative = histogram.cumsum(dim=0)
        n = int(count)
        ranks = ((n + 1) // 2, n // 2 + 1)
        return sum(_order_statistic(histogram, cumulative, rank) for rank in ranks) / 2


def _order_statistic(histogram: Tensor, cumulative: Tensor, rank: int) -> float:
    """Estimated ``rank``-th smallest angle (1-based): its bin, plus its place among the bin's
    counts assumed evenly spread across the bin width."""
    index = int(torch.searchsorted(cumulative, cumulative.new_tensor([rank])).item())
    below = cumulative[index].item() - histogram[index].item()
    return (index + (rank - below - 0.5) / histogram[index].item()) * ANGLE_BIN_WIDTH


class AttributeMetric(Metric):
    """Binary attribute accuracy and positive-class F1 from tp/fp/tn/fn counts.

    A logit >= 0 (probability >= 0.5) predicts the positive class. F1 is NaN when there is
    neither a positive target nor a positive prediction in the split (it is undefined).
    """

    DIRECTIONS = {"accuracy": True, "f1": True}

    def __init__(self) -> None:
        super().__init__(4)  # tp, fp, tn, fn

    def batch_totals(self, pred: Tensor, target: Tensor) -> Tensor:
        logits, truth = attribute_logits(pred, target)
        guess, actual = logits >= 0, truth > 0.5
        cells = [guess & actual, guess & ~actual, ~guess & ~actual, ~guess & actual]
        return torch.stack([cell.sum() for cell in cells]).double()

    def compute(self) -> dict[str, float]:
        tp, fp, tn, fn = self.totals.tolist()
        return {
            "accuracy": PERCENT * ratio(tp + tn, tp + fp + tn + fn),
            "f1": PERCENT * ratio(2 * tp, 2 * tp + fp + fn),
        }
