"""Task kinds (losses, metrics, head types) and loss-weighting strategies."""

from sparsemtl.tasks.base import Metric, TaskDefinition, match_resolution
from sparsemtl.tasks.definitions import TASKS, get_task
from sparsemtl.tasks.losses import attribute_loss, depth_loss, normals_loss, segmentation_loss
from sparsemtl.tasks.metrics import AttributeMetric, DepthMetric, NormalsMetric, SegmentationMetric
from sparsemtl.tasks.spec import IGNORE_INDEX, TaskSpec
from sparsemtl.tasks.weighting import (
    WEIGHTINGS,
    DynamicWeightAverage,
    EqualWeighting,
    FixedWeighting,
    GradientWeighting,
    LossWeighting,
    PCGrad,
    UncertaintyWeighting,
    build_weighting,
)

__all__ = [
    "IGNORE_INDEX",
    "TASKS",
    "WEIGHTINGS",
    "AttributeMetric",
    "DepthMetric",
    "DynamicWeightAverage",
    "EqualWeighting",
    "FixedWeighting",
    "GradientWeighting",
    "LossWeighting",
    "Metric",
    "NormalsMetric",
    "PCGrad",
    "SegmentationMetric",
    "TaskDefinition",
    "TaskSpec",
    "UncertaintyWeighting",
    "attribute_loss",
    "build_weighting",
    "depth_loss",
    "get_task",
    "match_resolution",
    "normals_loss",
    "segmentation_loss",
]
