"""Surface normals: unit camera-frame vectors, 1 - cosine loss, angular error metrics."""

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
    count_of,
    mean_or_zero,
    ratio,
    register_kind,
    upcast,
    valid_normals,
)
from sparsemtl.tasks.spec import TaskSpec

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


def normals_loss(pred: Tensor, target: Tensor) -> Tensor:
    """``1 - cos`` between the normalised prediction and the target, over valid pixels."""
    normal, truth = valid_normals(upcast(pred), target)
    return mean_or_zero(1.0 - (normal * truth).sum(dim=-1))


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
        return torch.cat([torch.stack([count_of(angle), angle.sum(), *within]), histogram])

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


@register_kind
class Normals(TaskKind):
    """(B, 3, H, W) unit normals (x right, y down, z forward), all-zero = invalid. A mirrored
    scene has its normals' x component negated; zooming keeps directions."""

    name = "normals"
    head = "dense"
    metric_directions = NormalsMetric.DIRECTIONS
    primary_metrics = ("mean_angle",)

    def channels(self, spec: TaskSpec) -> int:
        return 3

    def compute_loss(self, pred: Tensor, target: Tensor, spec: TaskSpec, **options: float) -> Tensor:
        return normals_loss(pred, target)

    def new_metric(self, spec: TaskSpec) -> Metric:
        return NormalsMetric()

    def flip(self, target: Tensor) -> Tensor:
        flipped = target.flip(-1).clone()
        flipped[0] = -flipped[0]
        flipped[0][flipped[0] == 0] = 0.0  # no -0.0: invalid pixels stay exactly zero
        return flipped

    def decode(self, pred: Tensor, spec: TaskSpec) -> Tensor:
        return F.normalize(pred.float(), dim=0)

    def visualise(self, values: Tensor, spec: TaskSpec) -> np.ndarray:
        normals = values.float().cpu().numpy().transpose(1, 2, 0)
        picture = np.round((np.clip(normals, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)
        picture[~np.any(normals != 0, axis=-1)] = 0
        return picture
