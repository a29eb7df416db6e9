"""Training losses, one per task kind, each averaged over valid pixels (or the batch).

Dense predictions are resized to label resolution first. A batch without a single valid
pixel yields a zero loss that is still connected to ``pred``, so backward never sees NaN.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from sparsemtl.tasks.base import (
    attribute_logits,
    match_resolution,
    mean_or_zero,
    upcast,
    valid_depth,
    valid_normals,
)
from sparsemtl.tasks.spec import IGNORE_INDEX


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


def depth_loss(pred: Tensor, target: Tensor) -> Tensor:
    """L1 in metres over pixels with a finite, positive target depth."""
    depth, truth = valid_depth(upcast(pred), target)
    return mean_or_zero((depth - truth).abs())


def normals_loss(pred: Tensor, target: Tensor) -> Tensor:
    """``1 - cos`` between the normalised prediction and the target, over valid pixels."""
    normal, truth = valid_normals(upcast(pred), target)
    return mean_or_zero(1.0 - (normal * truth).sum(dim=-1))


def attribute_loss(pred: Tensor, target: Tensor) -> Tensor:
    """Binary cross-entropy on logits (the sigmoid lives here), mean over the batch."""
    logits, truth = attribute_logits(upcast(pred), target)
    return F.binary_cross_entropy_with_logits(logits, truth)
