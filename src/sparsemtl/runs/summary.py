"""The typed record of a finished run (``summary.json``)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass
class RunSummary:
    """What a finished run reports. ``val`` and ``test`` are both measured with the best
    checkpoint (selected on val): ``{"loss", "losses": {task: ...}, "metrics": {task: {...}}}``."""

    run_dir: str
    tasks: list[str]
    task_kinds: dict[str, str]
    best_epoch: int
    epochs_run: int
    stopped_early: bool
    monitor: dict[str, Any]
    val: dict[str, Any]
    test: dict[str, Any]
    sparsity: dict[str, Any]
    parameters: dict[str, Any]
    train_seconds: float
    device: str
    timing: dict[str, float] = field(default_factory=dict)  # checkpoint_s (loop blocked), checkpoint_write_s
    world_size: int = 1
    frozen_tasks: list[str] = field(default_factory=list)
    resumed: int = 0
    data_check: dict[str, Any] = field(default_factory=dict)
    delta: dict[str, Any] | None = None
    baselines: dict[str, str] | None = None
    note: str = "val and test are both evaluated with the best checkpoint (selected on val)"

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        return {k: v for k, v in out.items() if v is not None}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "RunSummary":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})
