"""Semantic edges: binary boundaries between segmentation classes (a fifth kind, all in one file).

Target: (B, 1, H, W) uint8, 1 on a boundary pixel, 0 elsewhere, ``IGNORE_INDEX`` where the
segmentation is void. Loss: class-balanced binary cross-entropy (HED, Xie & Tu 2015): edges are
a few percent of the pixels, so positives are weighted by #negatives / #positives of the batch.
Metric: the pixel-exact F-measure at probability 0.5 with its precision and recall, and the ODS
F-measure (the best dataset-wide F over fixed thresholds). Unlike the BSDS benchmark, no distance
tolerance is applied when matching boundary pixels, so values are lower than published ODS-F.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from sparsemtl.tasks.base import (
    PERCENT,
    Metric,
    TaskKind,
    check_dense_pair,
    match_resolution,
    mean_or_zero,
    ratio,
    register_kind,
    upcast,
)
from sparsemtl.tasks.colours import colour_map
from sparsemtl.tasks.spec import IGNORE_INDEX, TaskSpec

#: Probability thresholds of the ODS F-measure; 0.5 is among them.
THRESHOLDS = tuple(round(0.05 * k, 2) for k in range(1, 20))
_HALF = THRESHOLDS.index(0.5)


def boundaries(labels: np.ndarray) -> np.ndarray:
    """(1, H, W) uint8 edge target of an (H, W) label map: 1 where a 4-neighbour has another
    valid class, ``IGNORE_INDEX`` on void pixels, else 0."""
    labels = np.asarray(labels)
    valid = labels != IGNORE_INDEX
    edge = np.zeros(labels.shape, dtype=bool)
    for axis in (0, 1):
        a = [slice(None)] * 2
        b = [slice(None)] * 2
        a[axis], b[axis] = slice(1, None), slice(None, -1)
        differs = (labels[tuple(a)] != labels[tuple(b)]) & valid[tuple(a)] & valid[tuple(b)]
        edge[tuple(a)] |= differs
        edge[tuple(b)] |= differs
    out = edge.astype(np.uint8)
    out[~valid] = IGNORE_INDEX
    return out[None]


def _valid_pairs(pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Logits and 0/1 targets (N,) at non-void pixels."""
    check_dense_pair(pred, target, 1)
    pred = match_resolution(pred, target)
    valid = target != IGNORE_INDEX
    return pred[valid], target[valid].to(pred.dtype)


def edge_loss(pred: Tensor, target: Tensor) -> Tensor:
    """Class-balanced BCE on logits over non-void pixels (pos_weight = #neg / #pos)."""
    logits, truth = _valid_pairs(upcast(pred), target)
    positives = truth.sum()
    pos_weight = ((truth.numel() - positives) / positives.clamp_min(1.0)).detach()
    per_pixel = F.binary_cross_entropy_with_logits(logits, truth, pos_weight=pos_weight, reduction="none")
    return mean_or_zero(per_pixel)


class EdgeMetric(Metric):
    """True-positive, false-positive and false-negative pixel counts at every threshold."""

    DIRECTIONS = {"ods_f": True, "f1": True, "precision": True, "recall": True}

    def __init__(self) -> None:
        super().__init__(3 * len(THRESHOLDS))

    def batch_totals(self, pred: Tensor, target: Tensor) -> Tensor:
        logits, truth = _valid_pairs(pred.double(), target)
        prob = torch.sigmoid(logits)
        guess = prob.unsqueeze(0) >= prob.new_tensor(THRESHOLDS).unsqueeze(1)  # (T, N)
        actual = truth.unsqueeze(0) > 0.5
        tp = (guess & actual).sum(dim=1)
        fp = (guess & ~actual).sum(dim=1)
        fn = (~guess & actual).sum(dim=1)
        return torch.cat([tp, fp, fn]).double()

    def compute(self) -> dict[str, float]:
        tp, fp, fn = self.totals.view(3, len(THRESHOLDS))
        f = [ratio(2 * t, 2 * t + p + n) for t, p, n in zip(tp.tolist(), fp.tolist(), fn.tolist())]
        defined = [v for v in f if v == v]
        t, p, n = tp[_HALF].item(), fp[_HALF].item(), fn[_HALF].item()
        return {
            "ods_f": PERCENT * max(defined) if defined else float("nan"),
            "f1": PERCENT * f[_HALF],
            "precision": PERCENT * ratio(t, t + p),
            "recall": PERCENT * ratio(t, t + n),
        }


@register_kind
class Edges(TaskKind):
    """Boundary map from a dense head with one logit per pixel; mirrored and resampled as a label
    map (nearest), values unchanged by zoom."""

    name = "edges"
    head = "dense"
    metric_directions = EdgeMetric.DIRECTIONS
    primary_metrics = ("ods_f", "f1")

    def compute_loss(self, pred: Tensor, target: Tensor, spec: TaskSpec, **options: float) -> Tensor:
        return edge_loss(pred, target)

    def new_metric(self, spec: TaskSpec) -> Metric:
        return EdgeMetric()

    def decode(self, pred: Tensor, spec: TaskSpec) -> Tensor:
        return torch.sigmoid(pred.float())

    def visualise(self, values: Tensor, spec: TaskSpec) -> np.ndarray:
        edge = values.reshape(values.shape[-2:]).float().cpu().numpy()
        return colour_map(edge, 0.0, 1.0, edge == IGNORE_INDEX)
