"""Budget-driven sparsity: steer lambda so that the pruned model meets a MAC, parameter or latency
budget by a given epoch, then hold it while the model keeps training.

Users want a model that fits a budget, not a lambda; the lambda that gives a budget depends on the
model, loss weights, batch size and learning rate. :class:`BudgetControl` measures, every few
optimiser steps, the cost of the model pruning would produce now (exact MACs and parameters from
the removable channels, :class:`~sparsemtl.pruning.cost.PrunedCostModel`; or a latency predicted
by a per-layer table measured on the target device, :mod:`sparsemtl.evaluation.latency_model`)
as a fraction ``c`` of the dense model's, and steers lambda along a path:

* **Track.** The target fraction falls linearly from 1 (when the warm-up ends) to the budget
  ``B`` (at the end of epoch ``sparsity.budget_epochs``). Lambda is multiplied by
  ``exp(GAIN * (c - target) / (1 - B))``, capped at a factor of 2 either way per control point:
  up while the model is denser than the path, down (zero groups may come back) while it is
  sparser. Tracking a moving target rather than jumping at the budget keeps the steps small, so
  zero groups appear gradually instead of overshooting and coming back.
* **Lock.** At the deadline, if ``c`` is still above ``B``, the groups of smallest RMS weight are
  set to zero, as few as a bisection finds enough, so the cost is at most ``B``. Then the zero
  groups are locked: they are set to zero again after every step, lambda goes to 0, and the
  remaining weights train on without the penalty (the fine-tuning phase). The cost cannot change
  after the lock, so the budget is held exactly, with no oscillation.
* **Select.** Model selection restarts at the lock (epochs before it do not meet the budget),
  and early stopping waits for it, so the best checkpoint, and the pruned model made from it,
  meet the budget. The summary records the lambda trajectory and what the final model costs
  (for a latency budget, also the measured latency of the really pruned model).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Callable, Iterator

import torch

from ..config import BudgetConfig, Config, ConfigError, budget_deadline
from ..errors import one_line
from ..evaluation.fold import fold_batchnorm
from ..evaluation.latency import measure_latency
from ..evaluation.latency_model import LatencyModel, LayerTable, measure_latency_model
from ..pruning import prune_model
from ..pruning.cost import PrunedCost, PrunedCostModel
from ..sparsity import ProxAdamW
from .callbacks import Callback

if TYPE_CHECKING:
    from ..evaluation.evaluate import EvalResult
    from ..sparsity.groupings import GroupStructure
    from .trainer import Trainer

#: largest change of lambda per control point (factor, either way); also lambda's margin below
#: every critical lambda when no group needs to go (above all of them when every group must)
MAX_FACTOR = 2.0
#: a final cost this far below the budget (relative) is pointed out in the summary's message
UNDER_NOTED = 0.05
#: control points per epoch (every step if an epoch has fewer steps)
POINTS_PER_EPOCH = 8


class BudgetControl(Callback):
    """The lambda controller of ``sparsity.budget`` (see the module docstring)."""

    all_ranks = True
    state_key = "budget"

    def __init__(self, cfg: Config) -> None:
        self.budget: BudgetConfig = cfg.sparsity.budget
        self.deadline_epoch = budget_deadline(cfg)
        self.warmup_epochs = cfg.sparsity.warmup_epochs
        self.input_size = tuple(cfg.data.image_size)
        self.lam = cfg.sparsity.lam
        self.locked: torch.Tensor | None = None  # zero groups held at zero after the lock
        self.projected = 0  # groups set to zero at the lock to meet the budget
        self.trajectory: list[dict[str, Any]] = []
        self._latency_state: dict[str, Any] | None = None
        self.costs: PrunedCostModel | None = None
        self.latency: LatencyModel | None = None

    # ------------------------------------------------------------------------------- set-up
    def prepare(self, trainer: Trainer) -> None:
        """Price the dense model and check the budget can be met: called while the trainer is
        built, so an impossible budget is refused before a run directory exists."""
        self.costs = PrunedCostModel(trainer.model, self.input_size)
        if self.budget.kind == "latency_ms":
            self.latency = self._latency_model(trainer)
        self.target = self._target_fraction()
        floor = self._fraction_with_zeros(trainer.structure, torch.ones(trainer.structure.num_groups, dtype=torch.bool))
        if floor > self.target:
            raise ConfigError(
                f"config key 'sparsity.budget.{self.budget.kind}': {self.budget.value:g} cannot be met: even with "
                f"every group of sparsity.modules zero the pruned model keeps {floor:.1%} of the dense model's "
                f"{self._unit()} (the rest is outside the regularised layers); raise the budget or widen "
                "sparsity.modules"
            )
        steps = len(trainer.loaders.train)
        self.interval = max(1, steps // POINTS_PER_EPOCH)
        self.start_step = self.warmup_epochs * steps
        self.deadline_step = self.deadline_epoch * steps

    def on_fit_start(self, trainer: Trainer) -> None:
        if self.locked is None and trainer.global_step >= self.deadline_step:
            self._lock(trainer)  # a resumed run that stopped right at the deadline
        else:  # the steps before the first control point are dense: Adam's moments inform it
            self._set_lambda(trainer, self.lam if self.trajectory and self.locked is None else 0.0)

    def _latency_model(self, trainer: Trainer) -> LatencyModel:
        if trainer.context.distributed:
            raise ConfigError(
                "config key 'sparsity.budget.latency_ms': latency budgets are measured in one process; "
                "train on one device or use a macs budget"
            )
        budget = self.budget
        try:
            model = measure_latency_model(
                trainer.model, self.input_size, budget.batch, budget.device, budget.threads or None
            )
        except (RuntimeError, ValueError) as exc:
            raise ConfigError(
                f"config key 'sparsity.budget.device': cannot time layers on {budget.device!r}: {one_line(exc)}"
            ) from None
        self._latency_state = _latency_to_state(model)
        return model

    def _target_fraction(self) -> float:
        if self.budget.kind != "latency_ms":
            return self.budget.value
        dense = self.latency.predict(self.costs.dense.widths)
        if self.budget.value >= dense:
            raise ConfigError(
                f"config key 'sparsity.budget.latency_ms': {self.budget.value:g} ms is not below the dense "
                f"model's {dense:.3g} ms ({self.budget.device}, batch {self.budget.batch}): no pruning is needed"
            )
        return self.budget.value / dense

    def _unit(self) -> str:
        return {"macs": "MACs", "params": "parameters", "latency_ms": "latency"}[self.budget.kind]

    # ------------------------------------------------------------------------------- cost
    def fraction(self, cost: PrunedCost | None = None) -> float:
        """The would-be-pruned model's cost as a fraction of the dense model's."""
        cost = self.costs.cost() if cost is None else cost
        dense = self.costs.dense
        if self.budget.kind == "macs":
            return cost.macs / dense.macs
        if self.budget.kind == "params":
            return cost.params / dense.params
        return self.latency.predict(cost.widths) / self.latency.predict(dense.widths)

    def value(self, cost: PrunedCost) -> float:
        """The cost in the budget's own unit (fraction of dense, or milliseconds)."""
        if self.budget.kind == "latency_ms":
            return self.latency.predict(cost.widths)
        return self.fraction(cost)

    def _fraction_with_zeros(self, structure: GroupStructure, mask: torch.Tensor) -> float:
        """Cost fraction if the groups in ``mask`` were zero (weights restored afterwards)."""
        with _trial(structure) as trial:
            return trial(mask, self.fraction)

    # ------------------------------------------------------------------------------- control
    def on_step_end(self, trainer: Trainer, step: int, loss: float, task_losses: dict[str, float]) -> None:
        if self.locked is not None:
            trainer.structure.zero_groups_(self.locked)
            return
        now = trainer.global_step
        if now >= self.deadline_step:
            self._lock(trainer)
        elif now > self.start_step and (self.onset or (now - self.start_step) % self.interval == 0):
            self._control(trainer, now)

    @property
    def onset(self) -> bool:
        """No channel is removable yet: control every step, so the first zeros come gradually."""
        return not self.trajectory or self.trajectory[-1]["fraction"] >= 1.0

    def path(self, step: int) -> float:
        """The target cost fraction at ``step``: 1 at the end of the warm-up, the budget at the
        deadline, linear in between."""
        progress = (step - self.start_step) / max(1, self.deadline_step - self.start_step)
        return 1.0 - (1.0 - self.target) * min(1.0, max(0.0, progress))

    def _control(self, trainer: Trainer, step: int) -> None:
        """Set lambda just above the critical lambdas of the fewest groups whose zeros bring the
        cost down to the path's target (groups in order of critical lambda)."""
        structure = trainer.structure
        critical = critical_lambdas(trainer.optimizer, structure)
        order = torch.argsort(critical, stable=True)
        k = self._fewest(structure, order, self.path(step + self.interval))  # zeros show a point later
        ranked = critical[order]
        if k == 0:  # already on the path: stay below every group's critical lambda
            lam = float(ranked[0]) / MAX_FACTOR
        elif k == len(ranked):
            lam = float(ranked[-1]) * MAX_FACTOR
        else:  # between the last group to go and the first to stay
            lam = math.sqrt(float(ranked[k - 1]) * float(ranked[k]))
        if math.isfinite(lam) and lam > 0:  # up by at most MAX_FACTOR per point, down at once
            self.lam = min(lam, self.lam * MAX_FACTOR)
        self._set_lambda(trainer, self.lam)
        self._note(trainer, step, self.fraction())

    def _fewest(self, structure: GroupStructure, order: torch.Tensor, target: float) -> int:
        """Smallest ``k`` such that the groups ``order[:k]`` being the zero ones brings the cost
        to ``target`` (bisection: more zero groups never cost more)."""
        low, high = 0, structure.num_groups  # cost(high) <= the budget <= target (the floor was checked)
        with _trial(structure) as trial:
            while low < high:
                mid = (low + high) // 2
                mask = torch.zeros(structure.num_groups, dtype=torch.bool)
                mask[order[:mid]] = True
                if trial(mask, self.fraction) <= target:
                    high = mid
                else:
                    low = mid + 1
        return high

    def _set_lambda(self, trainer: Trainer, lam: float) -> None:
        for group in trainer.optimizer.param_groups:
            if group.get("prox") is not None:
                group["base_lam"] = lam
                group["lam"] = lam if trainer.epoch >= self.warmup_epochs else 0.0

    def _note(self, trainer: Trainer, step: int, fraction: float) -> None:
        zero = int((trainer.structure.group_max_abs() == 0).sum())
        self.trajectory.append(
            {
                "step": step,
                "epoch": trainer.epoch + 1,
                "lam": self.lam,
                "fraction": fraction,
                "target": self.path(step),
                "zero_groups": zero,
            }
        )

    @torch.no_grad()
    def _lock(self, trainer: Trainer) -> None:
        structure = trainer.structure
        if self.fraction() > self.target:
            self.projected = self._project(structure)
        self.locked = structure.group_max_abs() == 0
        self.lam = 0.0
        self._set_lambda(trainer, 0.0)
        self._note(trainer, trainer.global_step, self.fraction())
        trainer.restart_model_selection()

    def _project(self, structure: GroupStructure) -> int:
        """Zero the fewest smallest-RMS groups that bring the cost to the budget; returns how many
        were not zero yet."""
        slices = structure.slices([p.detach().double().cpu() for p in structure.params])
        rms = (slices.group_sum([t.square() for t in slices.tensors]) / structure.group_sizes()).sqrt()
        order = torch.argsort(rms, stable=True)  # the zero groups first
        k = self._fewest(structure, order, self.target)
        mask = torch.zeros(structure.num_groups, dtype=torch.bool)
        mask[order[:k]] = True
        structure.zero_groups_(mask)
        return int((mask & (rms > 0)).sum())

    # ------------------------------------------------------------------------------- selection and records
    def on_validation_end(self, trainer: Trainer, val: EvalResult) -> None:
        if self.locked is None:
            trainer.should_stop = False  # early stopping waits for the budget

    def on_epoch_end(self, trainer: Trainer, record: dict[str, Any]) -> None:
        record["budget"] = {
            "lam": self.lam,
            "fraction": self.fraction(),
            "target": self.target,
            "locked": self.locked is not None,
        }

    def report(self, trainer: Trainer) -> dict[str, Any]:
        """The summary's ``sparsity.budget``: what was asked, what the final (best) model costs,
        whether it meets the budget (one line why not), and the lambda trajectory."""
        cost = self.costs.cost()
        fraction = self.fraction(cost)
        met = fraction <= self.target * (1 + 1e-9)
        report: dict[str, Any] = {
            "kind": self.budget.kind,
            "budget": self.budget.value,
            "target_fraction": self.target,
            "achieved": self.value(cost),
            "achieved_fraction": fraction,
            "macs": cost.macs,
            "params": cost.params,
            "dense_macs": self.costs.dense.macs,
            "dense_params": self.costs.dense.params,
            "deadline_epoch": self.deadline_epoch,
            "locked": self.locked is not None,
            "projected_groups": self.projected,
            "met": met,
            "trajectory": self.trajectory,
        }
        if self.budget.kind == "latency_ms":
            measured = self._measured_pruned_ms(trainer)
            report["latency"] = {
                "predicted_dense_ms": self.latency.predict(self.costs.dense.widths),
                "measured_dense_ms": self.latency.dense_ms,
                "predicted_ms": report["achieved"],
                "measured_ms": measured,
                "device": self.latency.device,
                "batch": self.latency.batch,
                "threads": self.latency.threads,
            }
            report["achieved"] = measured  # the real pruned model decides
            report["met"] = measured <= self.budget.value
        report["message"] = self._verdict(report)
        return report

    def _measured_pruned_ms(self, trainer: Trainer) -> float:
        """Milliseconds per forward of the really pruned (BN-folded) model on the budget's device."""
        size, budget = self.input_size, self.budget
        pruned = prune_model(trainer.model, torch.rand(1, 3, *size), input_size=size).model
        folded = fold_batchnorm(pruned).to(budget.device)
        return measure_latency(folded, size, budget.batch, budget.device, self.latency.threads).median * 1e3

    def _verdict(self, report: dict[str, Any]) -> str:
        asked = _describe(self.budget.kind, self.budget.value)
        got = _describe(self.budget.kind, report["achieved"])
        if report["met"]:
            verdict = f"budget {asked}: met ({got}, {report['achieved_fraction']:.1%} of dense)"
            under = 1 - report["achieved_fraction"] / self.target
            if under > UNDER_NOTED:  # more pruned than asked: say so, the user may have wanted the quality
                verdict += f", {under:.0%} below the budget: channels zeroed early did not come back"
            return verdict
        if self.locked is None:
            why = "the run ended before the budget deadline (sparsity.budget_epochs)"
        elif self.budget.kind == "latency_ms":
            why = f"the per-layer latency table predicted {report['latency']['predicted_ms']:.3g} ms"
        else:
            why = "the model changed after the lock"
        over = report["achieved"] / self.budget.value - 1
        return f"budget {asked}: missed by {over:.1%} ({got}): {why}"

    def state_dict(self) -> dict[str, Any]:
        return {
            "lam": self.lam,
            "locked": None if self.locked is None else self.locked.tolist(),
            "projected": self.projected,
            "trajectory": self.trajectory,
            "latency": self._latency_state,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.lam = float(state["lam"])
        self.locked = None if state["locked"] is None else torch.tensor(state["locked"], dtype=torch.bool)
        self.projected = int(state["projected"])
        self.trajectory = list(state["trajectory"])
        self._latency_state = state["latency"]
        if self._latency_state is not None:  # resumed: the table the run was steered by
            self.latency = _latency_from_state(self._latency_state)
            self.target = self._target_fraction()


@contextmanager
def _trial(structure: GroupStructure) -> Iterator[Callable[[torch.Tensor, Callable[[], float]], float]]:
    """``trial(mask, measure)``: ``measure()`` with exactly the groups in ``mask`` zero (groups
    zero now but outside ``mask`` are filled with ones: any non-zero value decides
    removability alike); the weights are restored after every trial and when the block ends."""
    saved = [p.detach().clone() for p in structure.params]
    zero_now = structure.group_max_abs() == 0
    slices = structure.slices()

    def restore() -> None:
        for p, s in zip(structure.params, saved):
            p.detach().copy_(s)

    @torch.no_grad()
    def trial(mask: torch.Tensor, measure: Callable[[], float]) -> float:
        revived = (zero_now & ~mask).to(torch.float64)
        for k, t in enumerate(slices.tensors):
            t.add_(slices.expand(k, revived.to(t.device, t.dtype)))
        structure.zero_groups_(mask)
        try:
            return measure()
        finally:
            restore()

    try:
        yield trial
    finally:
        restore()


@torch.no_grad()
def critical_lambdas(optimizer: ProxAdamW, structure: GroupStructure) -> torch.Tensor:
    """Per group, the smallest lambda at which ProxAdamW's next step would set it to zero, if its
    moments stayed as they are (float64, CPU; inf for groups never informed).

    The next step's point before the prox is ``x = w (1 - lr wd) - lr m_hat / d`` in Adam's
    metric ``d``, and the prox zeroes a group iff ``||d x|| <= lr lam w_g`` (module
    :mod:`sparsemtl.sparsity.prox`), so the critical lambda is ``||d x|| / (lr w_g)``. A group
    that is zero now has ``d x = -lr m_hat``: it stays zero while lambda exceeds
    ``||m_hat|| / w_g``.
    """
    group = next(g for g in optimizer.param_groups if g.get("prox") is not None)
    lr, wd = float(group["lr"]), float(group["weight_decay"])
    beta1, _ = group["betas"]
    metric = optimizer.metric(group)
    points = []
    for k, p in enumerate(group["params"]):
        state = optimizer.state.get(p, {})
        if "exp_avg" not in state:
            points.append(torch.full(p.shape, math.inf, dtype=torch.float64))
            continue
        m_hat = state["exp_avg"] / (1.0 - beta1 ** float(state["step"]))
        points.append((metric.tensor(k) * p.detach() * (1.0 - lr * wd) - lr * m_hat).double().cpu())
    slices = structure.slices(points)
    norms = slices.group_sum([t.square() for t in points]).sqrt()
    weights = torch.tensor(group["prox"]["weights"], dtype=torch.float64)
    return norms / (lr * weights)


def _describe(kind: str, value: float) -> str:
    return f"{value:.3g} ms" if kind == "latency_ms" else f"{kind} {value:.1%}"


def _latency_to_state(model: LatencyModel) -> dict[str, Any]:
    """Plain data (``last.pt`` holds no custom classes)."""
    return {
        "layers": {
            name: {
                "inputs": list(t.inputs),
                "outputs": list(t.outputs),
                "times": [list(r) for r in t.times],
                "depthwise": t.depthwise,
            }
            for name, t in model.layers.items()
        },
        "rest_ms": model.rest_ms,
        "dense_ms": model.dense_ms,
        "batch": model.batch,
        "device": model.device,
        "threads": model.threads,
        "scale": model.scale,
    }


def _latency_from_state(state: dict[str, Any]) -> LatencyModel:
    layers = {
        name: LayerTable(tuple(t["inputs"]), tuple(t["outputs"]), tuple(tuple(r) for r in t["times"]), t["depthwise"])
        for name, t in state["layers"].items()
    }
    return LatencyModel(
        layers, state["rest_ms"], state["dense_ms"], state["batch"], state["device"], state["threads"], state["scale"]
    )
