"""The task-kind registry: adding a task kind means adding one ``TaskDefinition`` here."""

from __future__ import annotations

from sparsemtl.registry import Registry
from sparsemtl.tasks.base import TaskDefinition
from sparsemtl.tasks.losses import attribute_loss, depth_loss, normals_loss, segmentation_loss
from sparsemtl.tasks.metrics import AttributeMetric, DepthMetric, NormalsMetric, SegmentationMetric

TASKS: Registry[TaskDefinition] = Registry("task kind")


TASKS.register(
    "segmentation",
    TaskDefinition(
        kind="segmentation",
        head="dense",
        primary_metric="miou",
        higher_is_better=True,
        metric_directions=SegmentationMetric.DIRECTIONS,
        channels=lambda spec: spec.num_classes,
        loss_fn=segmentation_loss,
        metric_factory=lambda spec: SegmentationMetric(spec.num_classes),
    ),
)

TASKS.register(
    "depth",
    TaskDefinition(
        kind="depth",
        head="dense",
        primary_metric="abs_err",
        higher_is_better=False,
        metric_directions=DepthMetric.DIRECTIONS,
        channels=lambda spec: 1,
        loss_fn=depth_loss,
        metric_factory=lambda spec: DepthMetric(),
    ),
)

TASKS.register(
    "normals",
    TaskDefinition(
        kind="normals",
        head="dense",
        primary_metric="mean_angle",
        higher_is_better=False,
        metric_directions=NormalsMetric.DIRECTIONS,
        channels=lambda spec: 3,
        loss_fn=normals_loss,
        metric_factory=lambda spec: NormalsMetric(),
    ),
)

# F1 rather than accuracy: face attributes are mostly imbalanced, and accuracy rewards the
# trivial "always negative" classifier (e.g. 90% on a 10%-positive attribute) while F1 of
# the positive class does not, so model selection and pruning decisions see real signal.
TASKS.register(
    "attribute",
    TaskDefinition(
        kind="attribute",
        head="global",
        primary_metric="f1",
        higher_is_better=True,
        metric_directions=AttributeMetric.DIRECTIONS,
        channels=lambda spec: 1,
        loss_fn=attribute_loss,
        metric_factory=lambda spec: AttributeMetric(),
    ),
)


def get_task(kind: str) -> TaskDefinition:
    """The definition of task ``kind``; unknown kinds raise a KeyError listing the known ones."""
    return TASKS.get(kind)
