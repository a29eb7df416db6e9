"""Split-level evaluation: per-task losses and metrics accumulated over the whole split."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch
from torch import nn

from ..runtime import ProcessContext, autocast
from ..tasks import get_task
from ..tasks.spec import TaskSpec


@dataclass
class EvalResult:
    """Mean loss per task (sample-weighted) and metrics per task for one split."""

    losses: dict[str, float]
    metrics: dict[str, dict[str, float]]

    @property
    def total_loss(self) -> float:
        """Unweighted sum of the task losses (independent of any learned loss weights)."""
        return float(sum(self.losses.values()))

    def to_dict(self) -> dict:
        return {"loss": self.total_loss, "losses": self.losses, "metrics": self.metrics}

    @classmethod
    def from_dict(cls, values: dict) -> "EvalResult":
        return cls(dict(values["losses"]), {task: dict(m) for task, m in values["metrics"].items()})


def task_loss_options(spec: TaskSpec, label_smoothing: float) -> dict[str, float]:
    """Loss keyword options that apply to this task kind (the kind declares which it takes)."""
    return get_task(spec.kind).select_options({"label_smoothing": label_smoothing})


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    loader: Iterable[dict[str, torch.Tensor]],
    specs: dict[str, TaskSpec],
    device: torch.device,
    amp: str = "none",
    label_smoothing: float = 0.0,
    context: ProcessContext | None = None,
) -> EvalResult:
    """Evaluate ``model`` in eval mode; in a distributed run each process sees a shard and the
    sums are all-reduced, so every process returns the same, exact split-level numbers."""
    context = context or ProcessContext()
    was_training = model.training
    model.eval()
    tasks = {name: get_task(spec.kind) for name, spec in specs.items()}
    metrics = {name: tasks[name].metric(spec) for name, spec in specs.items()}
    loss_sums = torch.zeros(len(specs) + 1, dtype=torch.float64)
    for batch in loader:
        images = batch["image"].to(device, non_blocking=True)
        with autocast(device, amp):
            outputs = model(images)
        for i, (name, spec) in enumerate(specs.items()):
            pred = outputs[name].float()
            target = batch[name].to(device, non_blocking=True)
            loss = tasks[name].loss(pred, target, spec, **task_loss_options(spec, label_smoothing))
            loss_sums[i] += float(loss) * images.shape[0]
            metrics[name].update(pred, target)
        loss_sums[-1] += images.shape[0]
    model.train(was_training)
    context.all_reduce_(loss_sums)
    for metric in metrics.values():
        context.all_reduce_(metric.totals)
    count = max(float(loss_sums[-1]), 1.0)
    losses = {name: float(loss_sums[i]) / count for i, name in enumerate(specs)}
    return EvalResult(losses, {name: m.compute() for name, m in metrics.items()})
