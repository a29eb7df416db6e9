"""Loss-weighting strategies that combine per-task losses into one training loss.

Each strategy is an ``nn.Module`` (so learnable weights are ordinary parameters the trainer
hands to its optimiser) and is chosen by name from ``WEIGHTINGS``, independently of the
model and the tasks.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Iterable, Mapping, Sequence

import torch
from torch import Tensor, nn

from sparsemtl.registry import Registry

WEIGHTINGS: Registry[type[LossWeighting]] = Registry("loss weighting")


def _mismatch(expected: Sequence[str], given: Iterable[str]) -> tuple[list[str], list[str]]:
    """Names in ``expected`` missing from ``given``, and names in ``given`` not expected."""
    present = set(given)
    return [name for name in expected if name not in present], sorted(present - set(expected))


class LossWeighting(nn.Module, ABC):
    """Total loss = sum_t w_t * L_t + penalty, for the task set fixed at construction.

    Subclasses provide the weights (and optionally a penalty); this class validates the task
    set and reports the effective weights for logging.
    """

    def __init__(self, task_names: Sequence[str]) -> None:
        super().__init__()
        names = list(task_names)
        if not names or len(set(names)) != len(names):
            raise ValueError(f"task names must be non-empty and unique, got {names}")
        self.task_names = names

    @abstractmethod
    def task_weights(self) -> Tensor:
        """Current weight per task, in ``task_names`` order."""

    def penalty(self, active: Tensor) -> Tensor:
        """Additive term of the total loss for the ``active`` tasks (bool mask in ``task_names``
        order); zero unless the strategy regularises itself."""
        return torch.zeros(())

    def forward(
        self, losses: Mapping[str, Tensor], active: Sequence[str] | None = None
    ) -> tuple[Tensor, dict[str, float]]:
        """Weighted total loss and each task's current weight (plain floats, for logging).

        ``active`` (default: every task) names the tasks still trained, e.g. after per-task early
        stopping; ``losses`` must hold exactly those tasks.
        """
        names = self.task_names if active is None else [n for n in self.task_names if n in set(active)]
        unknown_active = sorted(set(active or ()) - set(self.task_names))
        if not names or unknown_active:
            raise ValueError(f"active tasks must be a non-empty subset of {self.task_names}, got {list(active or [])}")
        stacked = self._stack(losses, names)
        mask = torch.tensor([n in names for n in self.task_names])
        weights = self.task_weights().to(device=stacked.device, dtype=stacked.dtype)[mask.to(stacked.device)]
        total = (weights * stacked).sum() + self.penalty(mask).to(stacked.device, stacked.dtype)
        return total, dict(zip(names, weights.detach().cpu().tolist()))

    def _stack(self, losses: Mapping[str, Tensor], names: list[str]) -> Tensor:
        """Scalar losses in ``names`` order; a different task set is a ValueError."""
        missing, unknown = _mismatch(names, losses)
        if missing or unknown:
            raise ValueError(f"loss weighting expects tasks {names}; missing {missing}, unexpected {unknown}")
        for name in names:
            if losses[name].dim() != 0:
                raise ValueError(f"loss of task {name!r} must be a scalar, got shape {tuple(losses[name].shape)}")
        return torch.stack([losses[name] for name in names])


@WEIGHTINGS.register("equal")
class EqualWeighting(LossWeighting):
    """Plain sum of the task losses."""

    def task_weights(self) -> Tensor:
        return torch.ones(len(self.task_names))


@WEIGHTINGS.register("fixed")
class FixedWeighting(LossWeighting):
    """Constant, user-given weight per task (every task needs one, and no others)."""

    def __init__(self, task_names: Sequence[str], weights: Mapping[str, float]) -> None:
        super().__init__(task_names)
        missing, unknown = _mismatch(self.task_names, weights)
        if missing or unknown:
            raise ValueError(f"fixed weights: missing tasks {missing}, unknown tasks {unknown}")
        values = [float(weights[name]) for name in self.task_names]
        if not all(math.isfinite(value) and value >= 0 for value in values):
            raise ValueError(f"fixed weights must be finite and >= 0, got {dict(weights)}")
        self.register_buffer("weights", torch.tensor(values), persistent=False)

    def task_weights(self) -> Tensor:
        return self.weights


@WEIGHTINGS.register("uncertainty")
class UncertaintyWeighting(LossWeighting):
    """Homoscedastic-uncertainty weighting (Kendall, Gal & Cipolla, CVPR 2018).

    One learnable log-variance s_t per task (initialised to 0, i.e. weight 1) and
    total = sum_t exp(-s_t) * L_t + s_t. We use the same form for every task kind, without
    the 1/2 factor the paper derives for Gaussian regression: the factor only rescales a
    task's weight and its regulariser, and a single form keeps task kinds interchangeable.
    At the optimum s_t = log L_t, so each weighted loss tends to 1. The reported weight is
    exp(-s_t); the total can be negative once losses drop below 1.
    """

    def __init__(self, task_names: Sequence[str]) -> None:
        super().__init__(task_names)
        self.log_vars = nn.Parameter(torch.zeros(len(self.task_names)))

    def task_weights(self) -> Tensor:
        return torch.exp(-self.log_vars)

    def penalty(self, active: Tensor) -> Tensor:
        return self.log_vars[active.to(self.log_vars.device)].sum()


def build_weighting(name: str, task_names: Sequence[str], **options: object) -> LossWeighting:
    """Instantiate the strategy registered as ``name`` for ``task_names``."""
    return WEIGHTINGS.get(name)(task_names, **options)
