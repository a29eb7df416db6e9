"""Shared pieces of every task kind: the :class:`TaskKind` base class and its registry, the
metric accumulator interface and the pixel-selection helpers that losses and metrics both use
(so they agree on validity)."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from sparsemtl.registry import Registry
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


PERCENT = 100.0


def count_of(values: Tensor) -> Tensor:
    """Number of elements as a float64 scalar on ``values``' device."""
    return torch.tensor(float(values.numel()), dtype=torch.float64, device=values.device)


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


class TaskKind(ABC):
    """Everything the library knows about one task kind, in one place (one registry entry).

    A kind owns its head type (``"dense"`` per-pixel or ``"global"`` image-level), output
    channels, loss and the loss options it accepts, metric accumulator with the direction of
    every metric, the primary metrics (model selection and the one-metric Delta), how a dense
    target follows the geometric augmentation (mirror, zoom: resampling and value change),
    how targets are batched, and how a target or prediction is shown as an image. No other
    module switches on kind names: they ask the kind. Register a new kind with
    :func:`register_kind` (see :mod:`sparsemtl.tasks.kinds`).
    """

    name: ClassVar[str]
    head: ClassVar[str]
    #: Higher-is-better flag for every key the metric accumulator returns.
    metric_directions: ClassVar[dict[str, bool]]
    #: Metrics in order of preference: the first one the model reports is the kind's primary.
    primary_metrics: ClassVar[tuple[str, ...]]
    #: ``LossConfig`` fields this kind's loss takes as keyword options (e.g. label smoothing).
    loss_options: ClassVar[tuple[str, ...]] = ()
    #: How a dense target is resampled by crop-and-resize augmentation: labels stay labels
    #: with ``nearest``; smooth fields may use ``bilinear``.
    interpolation: ClassVar[str] = "nearest"

    # ------------------------------------------------------------------ model and training
    def channels(self, spec: TaskSpec) -> int:
        """Output channels of the head for ``spec`` (after :meth:`check_spec`)."""
        return 1

    def check_spec(self, spec: TaskSpec) -> None:
        """Raise ValueError if ``spec`` is not a valid target description for this kind."""
        if spec.kind != self.name:
            raise ValueError(f"task {spec.name!r} has kind {spec.kind!r}, not {self.name!r}")

    def out_channels(self, spec: TaskSpec) -> int:
        self.check_spec(spec)
        return self.channels(spec)

    def loss(self, pred: Tensor, target: Tensor, spec: TaskSpec, **options: float) -> Tensor:
        """Scalar training loss; ``options`` must be among :attr:`loss_options`."""
        expected = self.out_channels(spec)
        if self.head == "dense" and (pred.dim() != 4 or pred.shape[1] != expected):
            raise ValueError(f"task {spec.name!r} expects (B, {expected}, H, W) predictions, got {tuple(pred.shape)}")
        unknown = sorted(set(options) - set(self.loss_options))
        if unknown:
            raise ValueError(f"task kind {self.name!r} takes no loss option(s) {unknown}")
        return self.compute_loss(pred, target, spec, **options)

    @abstractmethod
    def compute_loss(self, pred: Tensor, target: Tensor, spec: TaskSpec, **options: float) -> Tensor:
        """The kind's loss on checked inputs."""

    def select_options(self, available: Mapping[str, float]) -> dict[str, float]:
        """The loss options of this kind found in ``available`` (e.g. the loss config)."""
        return {key: available[key] for key in self.loss_options if key in available}

    @abstractmethod
    def new_metric(self, spec: TaskSpec) -> Metric:
        """A fresh accumulator (after :meth:`check_spec`)."""

    def metric(self, spec: TaskSpec) -> Metric:
        """A fresh, empty accumulator for this task."""
        self.check_spec(spec)
        return self.new_metric(spec)

    @property
    def primary_metric(self) -> str:
        return self.primary_metrics[0]

    @property
    def higher_is_better(self) -> bool:
        """Direction of :attr:`primary_metric`."""
        return self.metric_directions[self.primary_metric]

    # ------------------------------------------------------------------ data
    def flip(self, target: Tensor) -> Tensor:
        """A dense target of the left-right mirrored scene (default: mirror the map)."""
        return target.flip(-1)

    def zoom(self, target: Tensor, scale: float) -> Tensor:
        """The values of a dense target after zooming in by ``scale`` (resampling is done by the
        augmentation; default: values unchanged)."""
        return target

    def collate(self, targets: Sequence[Tensor]) -> Tensor:
        """One batch from per-sample targets (default: stacked)."""
        return torch.stack(list(targets))

    # ------------------------------------------------------------------ looking at results
    def decode(self, pred: Tensor, spec: TaskSpec) -> Tensor:
        """A raw head output of one sample turned into target space (e.g. logits -> labels)."""
        return pred

    def visualise(self, values: Tensor, spec: TaskSpec) -> np.ndarray | None:
        """An (H, W, 3) uint8 picture of one target or decoded prediction; None for kinds with
        no spatial output."""
        return None

    def export_arrays(self, values: Tensor, spec: TaskSpec) -> dict[str, np.ndarray]:
        """Files written next to the picture of a decoded prediction, keyed by file-name suffix
        (``"mm.png"``, ``"x.npy"``), for tools that need the numbers rather than colours; default none."""
        return {}

    @property
    def summary(self) -> str:
        """One line for ``sparsemtl list tasks``."""
        direction = "higher" if self.higher_is_better else "lower"
        return (
            f"{self.head} head; metrics {', '.join(self.metric_directions)}; "
            f"primary {self.primary_metric} ({direction} is better)"
        )


TASKS: Registry[TaskKind] = Registry("task kind")

INTERPOLATIONS = ("nearest", "bilinear")


def register_kind(cls: type[TaskKind]) -> type[TaskKind]:
    """Class decorator: check the kind's declarations and register one instance under its name."""
    kind = cls()
    if kind.head not in HEADS:
        raise ValueError(f"task kind {kind.name!r}: head must be one of {HEADS}")
    if kind.interpolation not in INTERPOLATIONS:
        raise ValueError(f"task kind {kind.name!r}: interpolation must be one of {INTERPOLATIONS}")
    missing = [m for m in kind.primary_metrics if m not in kind.metric_directions]
    if not kind.primary_metrics or missing:
        raise ValueError(f"task kind {kind.name!r}: primary metrics {missing or '()'} are not among its metrics")
    TASKS.register(kind.name, kind)
    return cls


def get_task(kind: str) -> TaskKind:
    """The task kind registered as ``kind``; unknown kinds raise a KeyError listing the known ones."""
    import sparsemtl.tasks.kinds  # noqa: F401  - the built-in kinds register on import

    return TASKS.get(kind)
