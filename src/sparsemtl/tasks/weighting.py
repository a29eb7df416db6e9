"""Loss-weighting strategies that combine per-task losses into one training loss.

Each strategy is an ``nn.Module`` (so learnable weights are ordinary parameters the trainer
hands to its optimiser) and is chosen by name from ``WEIGHTINGS``, independently of the
model and the tasks.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Callable, ClassVar, Iterable, Mapping, Sequence

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

    #: False: the caller backpropagates the returned total. True: the strategy needs the per-task
    #: gradients of the shared parameters and the caller uses :meth:`GradientWeighting.backward`.
    needs_gradients: ClassVar[bool] = False

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
        names, mask = self._active(active)
        stacked = self._stack(losses, names)
        weights = self.active_weights(mask).to(device=stacked.device, dtype=stacked.dtype)
        total = (weights * stacked).sum() + self.penalty(mask).to(stacked.device, stacked.dtype)
        return total, dict(zip(names, weights.detach().cpu().tolist()))

    def active_weights(self, active: Tensor) -> Tensor:
        """Weights of the ``active`` tasks (bool mask in ``task_names`` order), in that order.

        By default the ``task_weights`` of those tasks; a strategy whose weights depend on which
        tasks are active (e.g. ones normalised to sum to their number) overrides this.
        """
        weights = self.task_weights()
        return weights[active.to(weights.device)]

    def _active(self, active: Sequence[str] | None) -> tuple[list[str], Tensor]:
        """The active task names in ``task_names`` order and their bool mask."""
        names = self.task_names if active is None else [n for n in self.task_names if n in set(active)]
        unknown_active = sorted(set(active or ()) - set(self.task_names))
        if not names or unknown_active:
            raise ValueError(f"active tasks must be a non-empty subset of {self.task_names}, got {list(active or [])}")
        return names, torch.tensor([n in names for n in self.task_names])

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


@WEIGHTINGS.register("dwa")
class DynamicWeightAverage(LossWeighting):
    """Dynamic Weight Average (Liu, Johns & Davison, "End-to-End Multi-Task Learning with
    Attention", CVPR 2019).

    In epoch t the weights are w_k(t) = K * softmax_k(r_k(t-1) / T) with the loss descent rate
    r_k(t-1) = L_k(t-1) / L_k(t-2), where L_k(e) is the mean over the training steps of epoch
    e of task k's (unweighted) loss, K the number of active tasks (the softmax runs over them
    only) and the temperature T = 2, as in the paper. The weights are 1 until two epochs are
    complete (and whenever an active task lacks one of those two averages). The weights carry
    no gradient and there is no penalty.

    The strategy counts epochs itself: every call in training mode (``.train()``, the default)
    is one step, and after every ``steps_per_epoch`` steps the epoch's averages are rolled into
    the history. The history, the running sums and the step count are buffers, so a run resumed
    from a state dict saved at an epoch boundary continues exactly. Put the module in
    ``.eval()`` to compute a total without recording it. In a distributed run the epoch sums
    are all-reduced, so every process uses the same weights.
    """

    summary = "Dynamic Weight Average (Liu et al. 2019): K * softmax(last epochs' loss ratios / 2)"

    def __init__(self, task_names: Sequence[str], steps_per_epoch: int, temperature: float = 2.0) -> None:
        super().__init__(task_names)
        if int(steps_per_epoch) != steps_per_epoch or steps_per_epoch < 1:
            raise ValueError(f"dwa: steps_per_epoch must be a positive integer, got {steps_per_epoch}")
        if not (math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"dwa: temperature must be finite and > 0, got {temperature}")
        self.steps_per_epoch = int(steps_per_epoch)
        self.temperature = float(temperature)
        n = len(self.task_names)
        self.register_buffer("steps", torch.zeros((), dtype=torch.int64))
        self.register_buffer("epoch_sums", torch.zeros(n))
        self.register_buffer("epoch_counts", torch.zeros(n))
        # row 0: L(t-2), row 1: L(t-1); NaN where unknown
        self.register_buffer("history", torch.full((2, n), math.nan))

    def task_weights(self) -> Tensor:
        return self.active_weights(torch.ones(len(self.task_names), dtype=torch.bool))

    def active_weights(self, active: Tensor) -> Tensor:
        active = active.to(self.history.device)
        before, last = self.history[0][active], self.history[1][active]
        if not bool(torch.isfinite(before).all() and torch.isfinite(last).all()):
            return torch.ones(int(active.sum()), device=self.history.device)
        ratio = last / before.clamp_min(torch.finfo(before.dtype).tiny)
        return active.sum() * torch.softmax(ratio / self.temperature, dim=0)

    def forward(
        self, losses: Mapping[str, Tensor], active: Sequence[str] | None = None
    ) -> tuple[Tensor, dict[str, float]]:
        total, weights = super().forward(losses, active)
        if self.training:
            self.record(losses, active)
        return total, weights

    @torch.no_grad()
    def record(self, losses: Mapping[str, Tensor], active: Sequence[str] | None = None) -> None:
        """Count one training step with these task losses; roll the history at an epoch's end."""
        names, mask = self._active(active)
        mask = mask.to(self.epoch_sums.device)
        values = self._stack(losses, names).detach().to(self.epoch_sums.device, self.epoch_sums.dtype)
        self.epoch_sums[mask] += values
        self.epoch_counts[mask] += 1
        self.steps += 1
        if int(self.steps) % self.steps_per_epoch == 0:
            sums, counts = self.epoch_sums.clone(), self.epoch_counts.clone()
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                torch.distributed.all_reduce(sums)
                torch.distributed.all_reduce(counts)
            mean = torch.where(counts > 0, sums / counts.clamp_min(1), torch.full_like(sums, math.nan))
            self.history.copy_(torch.stack([self.history[1], mean]))
            self.epoch_sums.zero_()
            self.epoch_counts.zero_()


class GradientWeighting(LossWeighting):
    """A strategy that combines the per-task gradients of the shared parameters itself.

    The caller does not backpropagate a total: it calls :meth:`backward`, which fills ``.grad``
    of the shared parameters with :meth:`combine` of the per-task gradients and of the
    task-specific parameters (the heads) with the gradient of the sum of the task losses, i.e.
    each head gets its own task's gradient. Loss weights are all 1 (reported for logging).
    """

    needs_gradients: ClassVar[bool] = True

    def task_weights(self) -> Tensor:
        return torch.ones(len(self.task_names))

    @abstractmethod
    def combine(self, grads: Tensor) -> Tensor:
        """The shared parameters' update direction from the (tasks, parameters) matrix of the
        active tasks' flattened gradients (rows in ``task_names`` order)."""

    def backward(
        self,
        losses: Mapping[str, Tensor],
        shared_params: Iterable[Tensor],
        task_params: Iterable[Tensor] = (),
        active: Sequence[str] | None = None,
        scale: Callable[[Tensor], Tensor] | None = None,
    ) -> tuple[Tensor, dict[str, float]]:
        """Accumulate the combined gradients into ``.grad``; return the (detached, unscaled) total
        loss and the weights, as :meth:`forward` does.

        ``scale`` (e.g. ``GradScaler.scale``) multiplies each task loss before differentiation;
        :meth:`combine` must then be positively homogeneous (PCGrad is), so the gradients it
        writes carry the same scale for the scaler to unscale, and an overflow (inf/NaN) still
        reaches ``.grad`` for the scaler to skip the step. Parameters without ``requires_grad``
        (frozen heads) are skipped.
        """
        names, mask = self._active(active)
        stacked = self._stack(losses, names)
        shared = [p for p in shared_params if p.requires_grad]
        scaled = [scale(losses[n]) if scale is not None else losses[n] for n in names]
        if shared:
            rows = []
            for loss in scaled:
                grads = torch.autograd.grad(loss, shared, retain_graph=True, allow_unused=True)
                rows.append(
                    torch.cat(
                        [(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads, shared)]
                    )
                )
            combined = self.combine(torch.stack(rows))
            offset = 0
            for p in shared:
                piece = combined[offset : offset + p.numel()].view_as(p).to(p.dtype)
                offset += p.numel()
                p.grad = piece.clone() if p.grad is None else p.grad + piece
        others = [p for p in task_params if p.requires_grad]
        if others:
            grads = torch.autograd.grad(torch.stack(scaled).sum(), others, allow_unused=True)
            for p, g in zip(others, grads):
                if g is not None:
                    p.grad = g if p.grad is None else p.grad + g
        weights = self.active_weights(mask)
        total = (weights.to(stacked.device, stacked.dtype) * stacked).sum().detach()
        return total, dict(zip(names, weights.tolist()))


@WEIGHTINGS.register("pcgrad")
class PCGrad(GradientWeighting):
    """Projecting Conflicting Gradients (Yu et al., "Gradient Surgery for Multi-Task Learning",
    NeurIPS 2020).

    With g_i the gradient of task i's loss w.r.t. the shared parameters: for every task i,
    start from g_i^PC = g_i and, for every other task j in a random order (torch's global RNG,
    saved with the run's checkpoints), if g_i^PC . g_j < 0 replace
    g_i^PC <- g_i^PC - (g_i^PC . g_j) / ||g_j||^2 * g_j (project onto the normal plane of the
    original g_j). The shared update is sum_i g_i^PC; the heads get their own task's gradient.
    Every step costs one backward pass through the encoder per active task.
    """

    summary = "PCGrad (Yu et al. 2020): project conflicting per-task gradients of the encoder"

    def combine(self, grads: Tensor) -> Tensor:
        tasks = grads.shape[0]
        squared = (grads * grads).sum(dim=1).clamp_min(torch.finfo(grads.dtype).tiny)
        projected = grads.clone()
        for i in range(tasks):
            others = [j for j in range(tasks) if j != i]
            if len(others) > 1:
                others = [others[k] for k in torch.randperm(len(others)).tolist()]
            for j in others:
                dot = projected[i] @ grads[j]
                projected[i] = projected[i] - dot.clamp(max=0) / squared[j] * grads[j]
        return projected.sum(dim=0)


def build_weighting(name: str, task_names: Sequence[str], **options: object) -> LossWeighting:
    """Instantiate the strategy registered as ``name`` for ``task_names``."""
    return WEIGHTINGS.get(name)(task_names, **options)
