"""Binary image attributes: one logit, BCE, accuracy and positive-class F1."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from sparsemtl.tasks.base import PERCENT, Metric, TaskKind, attribute_logits, ratio, register_kind, upcast
from sparsemtl.tasks.spec import TaskSpec


def attribute_loss(pred: Tensor, target: Tensor) -> Tensor:
    """Binary cross-entropy on logits (the sigmoid lives here), mean over the batch."""
    logits, truth = attribute_logits(upcast(pred), target)
    return F.binary_cross_entropy_with_logits(logits, truth)


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


# F1 rather than accuracy: face attributes are mostly imbalanced, and accuracy rewards the
# trivial "always negative" classifier (e.g. 90% on a 10%-positive attribute) while F1 of
# the positive class does not, so model selection and pruning decisions see real signal.
@register_kind
class Attribute(TaskKind):
    """(B,) 0/1 targets from an image-level head; not spatial, so augmentation leaves it alone."""

    name = "attribute"
    head = "global"
    metric_directions = AttributeMetric.DIRECTIONS
    primary_metrics = ("f1", "accuracy")

    def compute_loss(self, pred: Tensor, target: Tensor, spec: TaskSpec, **options: float) -> Tensor:
        return attribute_loss(pred, target)

    def new_metric(self, spec: TaskSpec) -> Metric:
        return AttributeMetric()

    def decode(self, pred: Tensor, spec: TaskSpec) -> Tensor:
        return torch.sigmoid(pred.float().reshape(()))
