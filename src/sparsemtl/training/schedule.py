"""Schedules over epochs: learning rate, lambda warm-up, the validation monitor, early stopping."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch

from ..config import ConfigError, SchedulerConfig
from ..registry import Registry
from ..tasks import get_task
from ..tasks.spec import TaskSpec

SCHEDULERS: Registry[Callable[[SchedulerConfig, torch.optim.Optimizer, int], Any]] = Registry("LR scheduler")


@SCHEDULERS.register("cosine")
def cosine(cfg: SchedulerConfig, optimizer: torch.optim.Optimizer, epochs: int) -> Any:
    """Cosine annealing from the initial lr to ``scheduler.min_lr`` over ``train.epochs``."""
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs, eta_min=cfg.min_lr)


@SCHEDULERS.register("plateau")
def plateau(cfg: SchedulerConfig, optimizer: torch.optim.Optimizer, epochs: int) -> Any:
    """Multiply lr by ``scheduler.factor`` after ``scheduler.patience`` epochs without a better
    validation monitor (the seed's ReduceLROnPlateau)."""
    return torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=cfg.factor, patience=cfg.patience, min_lr=cfg.min_lr
    )


@SCHEDULERS.register("step")
def step(cfg: SchedulerConfig, optimizer: torch.optim.Optimizer, epochs: int) -> Any:
    """Multiply lr by ``scheduler.factor`` every ``scheduler.step_size`` epochs."""
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.step_size, gamma=cfg.factor)


@SCHEDULERS.register("none")
def constant(cfg: SchedulerConfig, optimizer: torch.optim.Optimizer, epochs: int) -> None:
    """A constant learning rate."""
    return None


def build_scheduler(cfg: SchedulerConfig, optimizer: torch.optim.Optimizer, epochs: int):
    """Epoch-level LR scheduler (``None`` for 'none'); 'plateau' follows the validation monitor."""
    try:
        factory = SCHEDULERS.get(cfg.name)
    except KeyError as exc:
        raise ConfigError(f"config key 'scheduler.name': {exc.args[0]}") from None
    return factory(cfg, optimizer, epochs)


class PenaltyScheduler:
    """Epoch-wise lambda schedule, like an LR scheduler but for the sparsity strength.

    Each param group keeps its configured strength in ``base_lam`` (recorded on construction);
    ``step(epoch)`` (1-based) sets ``lam`` to 0 during the first ``warmup_epochs`` epochs (the
    seed's warm-up: the network first learns densely), then ramps it linearly to ``base_lam``
    over ``ramp_epochs`` epochs, then keeps it constant.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, warmup_epochs: int = 0, ramp_epochs: int = 0) -> None:
        if warmup_epochs < 0 or ramp_epochs < 0:
            raise ValueError("warmup_epochs and ramp_epochs must be >= 0")
        self.optimizer = optimizer
        self.warmup_epochs = warmup_epochs
        self.ramp_epochs = ramp_epochs
        for group in optimizer.param_groups:
            group.setdefault("base_lam", group.get("lam", 0.0))

    def factor(self, epoch: int) -> float:
        if epoch <= self.warmup_epochs:
            return 0.0
        if self.ramp_epochs == 0:
            return 1.0
        return min(1.0, (epoch - self.warmup_epochs) / self.ramp_epochs)

    def step(self, epoch: int) -> float:
        """Apply the schedule for ``epoch``; returns the largest lambda now in force."""
        factor = self.factor(epoch)
        for group in self.optimizer.param_groups:
            group["lam"] = group["base_lam"] * factor
        return max((group["lam"] for group in self.optimizer.param_groups), default=0.0)


def is_improvement(value: float, best: float, higher_is_better: bool) -> bool:
    """The one rule for model selection and early stopping alike: ``value`` beats ``best`` (NaN
    when there is none yet); NaN and infinite values never do."""
    return math.isfinite(value) and (math.isnan(best) or (value > best if higher_is_better else value < best))


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
            raise ConfigError(
                f"config key 'train.monitor': expected 'loss' or '<task>.<metric>' with task in "
                f"{', '.join(specs)}, got {name!r}"
            )
        directions = get_task(specs[task].kind).metric_directions
        if metric not in directions:
            raise ConfigError(
                f"config key 'train.monitor': task {task!r} has metrics {', '.join(directions)}, got {metric!r}"
            )
        return cls(name, task, metric, directions[metric])

    def value(self, result) -> float:
        if self.task is None:
            return result.total_loss
        return float(result.metrics[self.task][self.metric])

    def improves(self, value: float, best: float) -> bool:
        """Whether ``value`` is a better validation result than ``best`` (NaN: none yet)."""
        return is_improvement(value, best, self.higher_is_better)

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
        better = is_improvement(value, self.best, self.higher_is_better)
        if better:
            self.best = value
            self.bad_epochs = 0
        else:
            self.bad_epochs += 1
        return better

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.bad_epochs >= self.patience

    def state_dict(self) -> dict[str, float | int]:
        return {"best": self.best, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict[str, float | int]) -> None:
        self.best = float(state["best"])
        self.bad_epochs = int(state["bad_epochs"])
