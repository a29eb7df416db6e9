"""Description of one prediction target that a dataset provides."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: Label value of pixels that carry no segmentation target (void / unlabelled).
IGNORE_INDEX = 255


@dataclass(frozen=True)
class TaskSpec:
    """What a dataset says about one of its targets.

    ``name`` is the key of the target in every sample dict (and of the prediction in the
    model's output dict); ``kind`` names the :class:`~sparsemtl.tasks.base.TaskKind` that owns
    its loss, metrics, head and augmentation (``sparsemtl list tasks``), which checks the spec.
    """

    name: str
    kind: str
    num_classes: int = 0
    class_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        from sparsemtl.tasks.base import get_task  # the kinds import this module

        get_task(self.kind).check_spec(self)
        if self.class_names and len(self.class_names) != self.num_classes:
            raise ValueError(f"task {self.name!r}: {len(self.class_names)} class names for {self.num_classes} classes")

    def to_dict(self) -> dict[str, Any]:
        """Plain data for checkpoints (loadable with ``weights_only=True``)."""
        return {
            "name": self.name,
            "kind": self.kind,
            "num_classes": self.num_classes,
            "class_names": list(self.class_names),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TaskSpec":
        return cls(data["name"], data["kind"], data["num_classes"], tuple(data["class_names"]))
