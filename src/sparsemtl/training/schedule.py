"""Schedules over epochs: learning rate, lambda warm-up, the validation monitor, early stopping."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..config import ConfigError, SchedulerConfig
from ..tasks import get_task
from ..tasks.spec import TaskSpec


def build_scheduler(cfg: SchedulerConfig, optimizer: torch.optim.Optimizer, epochs: int):
    """Epoch-level LR scheduler (``None`` for 'none'); 'plateau' follows the validation monitor."""
    lr_sched = torch.optim.lr_scheduler
    if cfg.name == "cosine":
        return lr_sched.CosineAnnealingLR(optimizer, T_max=epochs, eta_min=cfg.min_lr)
    if cfg.name == "plateau":
        return lr_sched.ReduceLROnPlateau(optimizer, mode="min", factor=cfg.factor, patience=cfg.patience, min_lr=cfg.min_lr)
    if cfg.name == "step":
        return lr_sched.StepLR(optimizer, step_size=cfg.step_size, gamma=cfg.factor)
    return None


def lam_for_epoch(optimizer: torch.optim.Optimizer, epoch: int, warmup_epochs: int) -> float:
    """Switch the penalty off for the first ``warmup_epochs`` epochs (1-based), then restore
    each group's configured strength; returns the lambda now in force."""
    lam = 0.0
    for group in optimizer.param_groups:
        group["lam"] = 0.0 if epoch <= warmup_epochs else group.get("base_lam", 0.0)
        lam = max(lam, group["lam"])
    return lam


@dataclass(frozen=True)
class Monitor:
    """The validation quantity that selects the best epoch: ``loss`` (sum of unweighted task
    losses, lower is better) or ``<task>.<metric>`` with the metric's own direction."""

    name: str
    task: str | None
    metric: str | None
    higher_is_better: bool

    @classmethod
    def parse(cls, name: str, specs: dict[str, TaskSpec]) -> "Monitor":
        if name == "loss":
            return cls(name, None, None, False)
        task, _, metric = name.partition(".")
        if task not in specs:
            raise ConfigError(f"config key 'train.monitor': expected 'loss' or '<task>.<metric>' with task in {', '.join(specs)}, got {name!r}")
        directions = get_task(specs[task].kind).metric_directions
        if metric not in directions:
            raise ConfigError(f"config key 'train.monitor': task {task!r} has metrics {', '.join(directions)}, got {metric!r}")
        return cls(name, task, metric, directions[metric])

    def value(self, result) -> float:
        if self.task is None:
            return result.total_loss
        return float(result.metrics[self.task][self.metric])

    def for_minimisation(self, value: float) -> float:
        return -value if self.higher_is_better else value


class EarlyStopping:
    """Tracks the best monitored value; ``should_stop`` after ``patience`` epochs without
    improvement (patience 0 never stops). NaN never counts as an improvement."""

    def __init__(self, patience: int, higher_is_better: bool) -> None:
        self.patience = patience
        self.higher_is_better = higher_is_better
        self.best = math.nan
        self.bad_epochs = 0

    def update(self, value: float) -> bool:
        better = math.isfinite(value) and (
            math.isnan(self.best) or (value > self.best if self.higher_is_better else value < self.best)
        )
        if better:
            self.best = value
            self.bad_epochs = 0
        else:
            self.bad_epochs += 1
        return better

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.bad_epochs >= self.patience
