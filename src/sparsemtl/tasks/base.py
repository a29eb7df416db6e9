"""Shared pieces of every task kind: the task definition, the metric accumulator interface and
the pixel-selection helpers that losses and metrics both use (so they agree on validity)."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from sparsemtl.tasks.spec import TaskSpec

#: Lower bound on a vector's norm before dividing by it, so all-zero predictions stay finite.
NORM_EPS = 1e-8

HEADS = ("dense", "global")


def match_resolution(pred: Tensor, target: Tensor) -> Tensor:
    """Bilinearly resize a dense ``pred`` (B, C, h, w) to the target's (H, W).

    Evaluation happens at label resolution, so a head that predicts at a lower stride is
    upsampled rather than the labels being downsampled.
    """
    if pred.dim() != 4:
        raise ValueError(f"dense prediction must be (B, C, H, W), got {tuple(pred.shape)}")
    size = tuple(target.shape[-2:])
    if tuple(pred.shape[-2:]) == size:
        return pred
    return F.interpolate(pred, size=size, mode="bilinear", align_corners=False)


def upcast(x: Tensor) -> Tensor:
    """At least float32, so reductions over mixed-precision outputs keep their precision."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def check_dense_pair(pred: Tensor, target: Tensor, channels: int) -> None:
    """Raise if ``pred``/``target`` are not (B, channels, *, *) / (B, channels, H, W)."""
    if pred.dim() != 4 or target.dim() != 4:
        raise ValueError(f"expected 4-D prediction and target, got {tuple(pred.shape)} and {tuple(target.shape)}")
    if pred.shape[0] != target.shape[0] or pred.shape[1] != channels or target.shape[1] != channels:
        raise ValueError(
            f"expected (B, {channels}, H, W) prediction and target, got {tuple(pred.shape)} and {tuple(target.shape)}"
        )


def select_pixels(x: Tensor, mask: Tensor) -> Tensor:
    """Gather the (N, C) channel vectors of ``x`` (B, C, H, W) where ``mask`` (B, H, W) holds."""
    return x.movedim(1, -1)[mask]


def unit_vectors(x: Tensor) -> Tensor:
    """L2-normalise along the last dimension; vectors shorter than ``NORM_EPS`` map to ~zero."""
    return x / x.norm(dim=-1, keepdim=True).clamp_min(NORM_EPS)


def valid_depth(pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Prediction and target depths (N,), in ``pred``'s dtype, where the target is finite and > 0.

    Selecting before any arithmetic keeps NaN/inf targets out of the backward pass too.
    """
    check_dense_pair(pred, target, 1)
    pred, target = match_resolution(pred, target), target.to(pred.dtype)
    mask = torch.isfinite(target[:, 0]) & (target[:, 0] > 0)
    return select_pixels(pred, mask)[:, 0], select_pixels(target, mask)[:, 0]


def valid_normals(pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Unit prediction and target normals (N, 3) at pixels with a finite, non-zero target.

    The target is re-normalised as well, so labels that lost unit length when resampled are
    still compared purely by direction.
    """
    check_dense_pair(pred, target, 3)
    pred, target = match_resolution(pred, target), target.to(pred.dtype)
    mask = torch.isfinite(target).all(dim=1) & (target != 0).any(dim=1)
    return unit_vectors(select_pixels(pred, mask)), unit_vectors(select_pixels(target, mask))


def attribute_logits(pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Flatten (B, 1) or (B,) logits and a (B,) 0/1 target to matching (B,) tensors."""
    if pred.dim() == 2 and pred.shape[1] == 1:
        pred = pred[:, 0]
    if pred.dim() != 1 or target.shape != pred.shape:
        raise ValueError(
            f"attribute expects (B,) or (B, 1) logits and a (B,) target, "
            f"got {tuple(pred.shape)} and {tuple(target.shape)}"
        )
    return pred, target.to(pred.dtype)


def mean_or_zero(values: Tensor) -> Tensor:
    """Mean of ``values``; an empty selection gives 0 that is still attached to the graph."""
    return values.sum() / max(values.numel(), 1)


def ratio(numerator: float, denominator: float) -> float:
    """``numerator / denominator``, NaN when nothing was counted (an undefined metric)."""
    return numerator / denominator if denominator > 0 else math.nan


class Metric(ABC):
    """Split-level metric accumulator whose whole state is one flat float64 tensor of sums.

    Because the state is only sums, merging accumulators (or an all-reduce across processes)
    is plain addition of ``totals``, and metrics are exact over the split rather than
    averages of per-batch values.
    """

    #: Higher-is-better flag for every key that ``compute`` returns.
    DIRECTIONS: ClassVar[dict[str, bool]] = {}

    def __init__(self, size: int) -> None:
        self.totals = torch.zeros(size, dtype=torch.float64)

    @abstractmethod
    def batch_totals(self, pred: Tensor, target: Tensor) -> Tensor:
        """The sums contributed by one batch, same layout as ``totals`` (any device)."""

    @abstractmethod
    def compute(self) -> dict[str, float]:
        """Metric values from the accumulated sums (NaN where nothing was accumulated)."""

    def update(self, pred: Tensor, target: Tensor) -> None:
        with torch.no_grad():
            batch = self.batch_totals(pred.detach(), target)
        self.totals += batch.to(device="cpu", dtype=torch.float64)

    def reset(self) -> None:
        self.totals.zero_()

    def merge(self, other: Metric) -> Metric:
        """Add ``other``'s sums into this accumulator (returns ``self``)."""
        if type(other) is not type(self) or other.totals.shape != self.totals.shape:
            raise ValueError(
                f"cannot merge {type(other).__name__}{tuple(other.totals.shape)} into "
                f"{type(self).__name__}{tuple(self.totals.shape)}"
            )
        self.totals += other.totals
        return self


@dataclass(frozen=True, eq=False)
class TaskDefinition:
    """Everything the library needs to know about one task kind (one registry entry).

    ``head`` is ``"dense"`` for per-pixel heads and ``"global"`` for image-level classifiers;
    ``metric_directions`` says for every metric key whether higher is better (used for the
    multi-task Delta); ``primary_metric`` is the key used for model selection.
    """

    kind: str
    head: str
    primary_metric: str
    higher_is_better: bool
    metric_directions: dict[str, bool]
    channels: Callable[[TaskSpec], int]
    loss_fn: Callable[..., Tensor]
    metric_factory: Callable[[TaskSpec], Metric]

    def __post_init__(self) -> None:
        if self.head not in HEADS:
            raise ValueError(f"task kind {self.kind!r}: head must be one of {HEADS}")
        if self.metric_directions.get(self.primary_metric) is not self.higher_is_better:
            raise ValueError(
                f"task kind {self.kind!r}: primary metric {self.primary_metric!r} is missing "
                "from metric_directions or disagrees with higher_is_better"
            )

    @property
    def summary(self) -> str:
        """One line for ``sparsemtl list tasks``."""
        direction = "higher" if self.higher_is_better else "lower"
        return (
            f"{self.head} head; metrics {', '.join(self.metric_directions)}; "
            f"selects on {self.primary_metric} ({direction} is better)"
        )

    def out_channels(self, spec: TaskSpec) -> int:
        self._check_spec(spec)
        return self.channels(spec)

    def loss(self, pred: Tensor, target: Tensor, spec: TaskSpec, **options: float) -> Tensor:
        """Scalar training loss; ``options`` go to the kind's loss (e.g. ``label_smoothing``)."""
        expected = self.out_channels(spec)
        if self.head == "dense" and (pred.dim() != 4 or pred.shape[1] != expected):
            raise ValueError(f"task {spec.name!r} expects (B, {expected}, H, W) predictions, got {tuple(pred.shape)}")
        return self.loss_fn(pred, target, **options)

    def metric(self, spec: TaskSpec) -> Metric:
        """A fresh, empty accumulator for this task."""
        self._check_spec(spec)
        return self.metric_factory(spec)

    def _check_spec(self, spec: TaskSpec) -> None:
        if spec.kind != self.kind:
            raise ValueError(f"task {spec.name!r} has kind {spec.kind!r}, not {self.kind!r}")
