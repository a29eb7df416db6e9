"""Depth: one channel in metres, L1 over valid pixels (0 = invalid), AbsErr/RelErr/RMSE/delta1."""

from __future__ import annotations

import math

import numpy as np
import torch
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
    valid_depth,
)
from sparsemtl.tasks.colours import colour_map
from sparsemtl.tasks.spec import TaskSpec

#: delta1 threshold on max(pred / gt, gt / pred).
DELTA1_THRESHOLD = 1.25


def depth_loss(pred: Tensor, target: Tensor) -> Tensor:
    """L1 in metres over pixels with a finite, positive target depth."""
    depth, truth = valid_depth(upcast(pred), target)
    return mean_or_zero((depth - truth).abs())


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
        return torch.stack([count_of(error), *sums])

    def compute(self) -> dict[str, float]:
        count, abs_sum, rel_sum, sq_sum, hits = self.totals.tolist()
        return {
            "abs_err": ratio(abs_sum, count),
            "rel_err": ratio(rel_sum, count),
            "rmse": math.sqrt(ratio(sq_sum, count)),
            "delta1": PERCENT * ratio(hits, count),
        }


@register_kind
class Depth(TaskKind):
    """(B, 1, H, W) metres. Zooming in by ``s`` brings the scene closer: depth is divided by ``s``
    (see :mod:`sparsemtl.data.augment`). Primary metric RMSE (Maninis et al. 2019), else AbsErr."""

    name = "depth"
    head = "dense"
    metric_directions = DepthMetric.DIRECTIONS
    primary_metrics = ("rmse", "abs_err")

    def compute_loss(self, pred: Tensor, target: Tensor, spec: TaskSpec, **options: float) -> Tensor:
        return depth_loss(pred, target)

    def new_metric(self, spec: TaskSpec) -> Metric:
        return DepthMetric()

    def zoom(self, target: Tensor, scale: float) -> Tensor:
        return target / scale if scale != 1.0 else target  # 0 / s = 0: invalid stays invalid

    def visualise(self, values: Tensor, spec: TaskSpec) -> np.ndarray:
        depth = values.reshape(values.shape[-2:]).float().cpu().numpy()
        valid = np.isfinite(depth) & (depth > 0)
        low, high = np.percentile(depth[valid], [2, 98]) if valid.any() else (0.0, 1.0)
        return colour_map(-depth, -float(high), -float(low), ~valid)  # near = bright

    def export_arrays(self, values: Tensor, spec: TaskSpec) -> dict[str, np.ndarray]:
        """``mm.png``: 16-bit millimetres, the convention of depth cameras and NYU-v2 tools;
        0 = invalid (non-positive or non-finite), clipped at 65.535 m."""
        depth = values.reshape(values.shape[-2:]).double().cpu().numpy()
        valid = np.isfinite(depth) & (depth > 0)
        millimetres = np.round(np.where(valid, depth, 0.0) * 1000.0)
        return {"mm.png": np.clip(millimetres, 0, np.iinfo(np.uint16).max).astype(np.uint16)}
