"""Task kinds (one module each under :mod:`sparsemtl.tasks.kinds`) and loss-weighting strategies."""

from sparsemtl.tasks.base import TASKS, Metric, TaskKind, get_task, match_resolution, register_kind
from sparsemtl.tasks.kinds.attribute import AttributeMetric, attribute_loss
from sparsemtl.tasks.kinds.depth import DepthMetric, depth_loss
from sparsemtl.tasks.kinds.normals import NormalsMetric, normals_loss
from sparsemtl.tasks.kinds.segmentation import SegmentationMetric, segmentation_loss
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
    "TaskKind",
    "TaskSpec",
    "UncertaintyWeighting",
    "attribute_loss",
    "build_weighting",
    "depth_loss",
    "get_task",
    "match_resolution",
    "normals_loss",
    "register_kind",
    "segmentation_loss",
]
