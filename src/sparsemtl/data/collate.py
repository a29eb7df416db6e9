"""Batching samples: each task's targets are batched by their task kind, the rest by torch."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch.utils.data import default_collate

from ..tasks import TaskSpec, get_task


class TaskCollate:
    """``collate_fn`` for a DataLoader over sample dicts: a key that is a task in ``specs`` is
    batched by its kind's ``collate``; every other entry (image, intrinsics, ids) by
    ``default_collate``. A picklable object, so DataLoader workers can use it."""

    def __init__(self, specs: Mapping[str, TaskSpec]) -> None:
        self.kinds = {name: get_task(spec.kind) for name, spec in specs.items()}

    def __call__(self, samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        batch = {}
        for key in samples[0]:
            values = [s[key] for s in samples]
            kind = self.kinds.get(key)
            batch[key] = kind.collate(values) if kind is not None else default_collate(values)
        return batch
