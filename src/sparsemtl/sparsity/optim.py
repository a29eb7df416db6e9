"""Proximal optimisers: a torch.optim update followed by the group-sparsity prox.

Param groups that carry a ``prox`` spec (see :func:`sparsemtl.sparsity.regularized_param_groups`)
and a ``lam`` > 0 get, after every update, the prox of ``lr * lam * w_g * penalty(W_g)``:

* :class:`ProxAdamW` works in Adam's metric. By default (``prox_metric="corrected"``) that is
  d = sqrt(v_hat) + eps, where v_hat is the bias-corrected second moment: exactly the
  preconditioner the gradient step divided by, so the penalty and the loss are scaled alike from
  the first step on and lambda means the same thing over all of training.
  ``prox_metric="reference"`` uses the seed paper's metric d = sqrt(v) + eps with v NOT
  bias-corrected, which makes the prox 1/sqrt(1 - beta2^t) times stronger at step t (16x at
  step 4, 1.26x at step 1,000 for beta2 = 0.999): use it to give the paper's lambda values the
  sparsity path they had in the paper (see :class:`ProxAdamW`).
* :class:`ProxSGD` works in the Euclidean metric (d = 1): block soft-thresholding for the group
  lasso, firm thresholding for group MCP.

Everything else (state_dict, param groups, LR schedulers, AMP's GradScaler) is torch.optim's.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch

from . import native_step
from .penalties import PENALTIES
from .prox import AdamMetric, Precond
from .slices import GroupSlices

PROX_METRICS = ("corrected", "reference")


class _ProximalStep:
    """Mixin for torch optimisers: validates ``lam``/``prox`` group keys, caches each group's
    slice layout on the parameters' device, and applies the prox after the parent's step."""

    _slices: dict[Any, Any]  # per param group: its layout; per ('tensors', group): each tensor's own

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if not hasattr(self, "_slices"):
            self._slices = {}
        param_group.setdefault("lam", 0.0)
        param_group.setdefault("prox", None)
        spec = param_group["prox"]
        if spec is not None:
            params = param_group["params"]
            n = 1 if isinstance(params, torch.Tensor) else len(list(params))
            if len(spec["dims"]) != n or len(spec["ids"]) != n:
                raise ValueError(f"prox spec lists {len(spec['dims'])} tensors for {n} parameters")
            penalty = spec.get("penalty", "group_lasso")
            if penalty not in PENALTIES:
                raise ValueError(f"unknown penalty {penalty!r}; available: {', '.join(PENALTIES.names())}")
            PENALTIES.get(penalty)().check(spec)
        super().add_param_group(param_group)  # type: ignore[misc]
        self._slices.clear()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)  # type: ignore[misc]
        self._slices.clear()

    def __setstate__(self, state: dict[str, Any]) -> None:
        # torch pickles/deep-copies only defaults, state and param_groups: rebuild the cache.
        super().__setstate__(state)  # type: ignore[misc]
        self._slices = {}

    def _layout(self, index: int, group: dict[str, Any]) -> tuple[GroupSlices, torch.Tensor]:
        if index not in self._slices:
            spec = group["prox"]
            params = group["params"]
            ids = [torch.as_tensor(i, dtype=torch.long, device=p.device) for i, p in zip(spec["ids"], params)]
            weights = torch.tensor(spec["weights"], dtype=params[0].dtype, device=params[0].device)
            self._slices[index] = (GroupSlices(list(params), list(spec["dims"]), ids, len(weights)), weights)
        return self._slices[index]

    def _apply_prox(
        self,
        index: int,
        group: dict[str, Any],
        precond: Precond | None,
        informed: torch.Tensor | None = None,
    ) -> None:
        """Prox of every sparsity group of ``group`` in metric ``precond`` (None: Euclidean);
        groups where the boolean ``informed`` is False are left as they are."""
        slices, weights = self._layout(index, group)
        self._prox_of(slices, weights * (float(group["lr"]) * float(group["lam"])), group, precond, informed)

    def _prox_of(
        self,
        slices: GroupSlices,
        tau: torch.Tensor,
        group: dict[str, Any],
        precond: Precond | None,
        informed: torch.Tensor | None,
    ) -> None:
        """The prox of ``group``'s penalty with thresholds ``tau`` on the groups of ``slices`` (all
        of the param group's tensors, or some of them); groups not ``informed`` are left alone."""
        if informed is not None:
            tau = torch.where(informed, tau, torch.zeros_like(tau))
        spec = group["prox"]
        penalty = PENALTIES.get(spec.get("penalty", "group_lasso"))()
        penalty.prox_(slices, tau, float(group["lr"]), spec, precond, lambda: self._warm_starts(slices))

    def _warm_starts(self, slices: GroupSlices) -> list[torch.Tensor]:
        """Per-parameter group norms of the previous step (optimiser state, so they round-trip)."""
        return [self._warm_start(p, dim) for p, dim in zip(slices.tensors, slices.dims)]

    def _warm_start(self, p: torch.Tensor, dim: int) -> torch.Tensor:
        """``p``'s group norms of the previous step, kept in its state once it has taken a step;
        before that a throw-away zero start: an entry in an empty state would make torch's
        optimiser skip creating the state at the parameter's first gradient."""
        state = self.state[p]  # type: ignore[attr-defined]
        if "prox_norm" not in state:
            start = torch.zeros(p.shape[dim], dtype=p.dtype, device=p.device)
            if not state:
                return start
            state["prox_norm"] = start
        return state["prox_norm"]

    def _prox_groups(self):
        for index, group in enumerate(self.param_groups):  # type: ignore[attr-defined]
            if group["prox"] is not None and group["lam"] > 0:
                yield index, group


class ProxAdamW(_ProximalStep, torch.optim.AdamW):
    """``torch.optim.AdamW`` plus the group-sparsity prox in Adam's metric.

    Extra param-group keys: ``lam`` (penalty strength, 0 = plain AdamW; may be changed between
    steps like ``lr``), ``prox`` (plain-data layout: ``dims``, ``ids``, ``weights``, ``penalty``
    and, for group MCP, ``gamma``) and ``prox_metric`` (default from the constructor, like
    ``lr``; stored in ``state_dict``). Any sparsity group whose second moment is still exactly
    zero (it never received a gradient, so its metric would be eps everywhere and any lambda > 0
    would delete it before it learns), including every group of a parameter that has not taken an
    Adam step yet (e.g. a layer the forward pass does not use), is left unregularised for that
    step, whatever the metric; the other groups of the param group are regularised as usual.

    One step, for both metrics: torch's AdamW update (decoupled weight decay
    x <- x (1 - lr wd), then x <- x - lr/(1 - beta1^t) m_t / (sqrt(v_t / (1 - beta2^t)) + eps)),
    then, per sparsity group g, the prox of tau_g * P(||.||) in metric d with
    tau_g = lr * lam * w_g (lr the group's current learning rate, no bias correction in the step
    size); group MCP's concavity is lr / gamma. Only d differs:

    * ``"corrected"`` (default): d = sqrt(v_t / (1 - beta2^t)) + eps, the gradient step's own
      preconditioner, so the penalty and the loss are weighed alike at every step.
    * ``"reference"``: d = sqrt(v_t) + eps, the seed paper's prox metric: v_t is not
      bias-corrected and eps is added to the uncorrected root. This equals
      sqrt(1 - beta2^t) * d_corrected + (1 - sqrt(1 - beta2^t)) * eps, so d is smaller and the prox
      stronger early in training: where eps is negligible, a group is zeroed at a threshold
      1/sqrt(1 - beta2^t) times larger (31.6x at t = 1, 15.8x at t = 4, 1.26x at t = 1,000,
      1.003x at t = 5,000 for beta2 = 0.999); by t ~ 20,000 the two coincide in float32. The
      paper's lambda values were tuned with this metric.
    """

    def __init__(
        self, params: Any, *args: Any, prox_metric: str = "corrected", native_prox: bool = False, **kwargs: Any
    ) -> None:
        _check_metric(prox_metric)
        self._default_metric = prox_metric
        self.native_prox = native_prox
        super().__init__(params, *args, **kwargs)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        default = self.defaults.setdefault("prox_metric", getattr(self, "_default_metric", "corrected"))
        _check_metric(param_group.setdefault("prox_metric", default))
        super().add_param_group(param_group)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        for group in self.param_groups:
            # State saved before the key existed was trained with the corrected metric.
            _check_metric(group.setdefault("prox_metric", "corrected"))

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        if not getattr(self, "native_prox", False):  # not state: an unpickled optimiser runs eager
            loss = super().step(closure)
            for index, group in self._prox_groups():
                self._eager_prox(index, group)
            return loss
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        native = {i: g for i, g in self._prox_groups() if native_step.supports(g) and self._layout(i, g)[0].separable}
        with _grads_hidden([p for group in native.values() for p in group["params"]]) as grads:
            super().step()
        for index, group in self._prox_groups():
            if index in native:
                self._native_step(index, group, grads)
            else:
                self._eager_prox(index, group)
        return loss

    def _eager_prox(self, index: int, group: dict[str, Any]) -> None:
        """The prox of ``group`` after torch's AdamW step, by the eager solver."""
        moments = self._second_moments(group)
        slices, _ = self._layout(index, group)
        self._apply_prox(index, group, self._adam_metric(group, moments), _informed(slices, moments))

    def _native_step(self, index: int, group: dict[str, Any], grads: dict[torch.Tensor, torch.Tensor]) -> None:
        """AdamW's update and the prox of ``group`` in native passes (see :mod:`.native_step`);
        a tensor without a gradient this step, or one the native step leaves unsolved, gets the
        eager prox on its own."""
        slices, weights = self._layout(index, group)
        tau = weights * (float(group["lr"]) * float(group["lam"]))
        stepped = [k for k, p in enumerate(group["params"]) if p in grads]
        params = [group["params"][k] for k in stepped]
        for p in params:
            if "step" not in self.state[p]:
                native_step.init_state(self.state[p], p)
        done = native_step.native_prox_step_(
            params,
            [grads[p] for p in params],
            [self.state[p] for p in params],
            [slices.dims[k] for k in stepped],
            group,
            [tau[slices.ids[k]] for k in stepped],
            [self._warm_start(p, slices.dims[k]) for k, p in zip(stepped, params)],
        )
        solved = {k for k, ok in zip(stepped, done) if ok}
        for k, p in enumerate(group["params"]):
            if k not in solved:
                single = self._tensor_layouts(index, slices)[k]
                moments = self._second_moments({**group, "params": [p]})
                metric = self._adam_metric({**group, "params": [p]}, moments)
                self._prox_of(single, tau[slices.ids[k]], group, metric, _informed(single, moments))

    def _tensor_layouts(self, index: int, slices: GroupSlices) -> list[GroupSlices]:
        """Each tensor of ``slices`` as a layout of its own (groups numbered from 0), kept."""
        key = ("tensors", index)
        if key not in self._slices:
            self._slices[key] = [
                GroupSlices([t], [dim], [torch.arange(t.shape[dim], device=t.device)], t.shape[dim])
                for t, dim in zip(slices.tensors, slices.dims)
            ]
        return self._slices[key]

    def metric(self, group: dict[str, Any]) -> AdamMetric:
        """Adam's metric d of ``group``'s tensors, as its prox uses it (per ``prox_metric``)."""
        return self._adam_metric(group, self._second_moments(group))

    def _second_moments(self, group: dict[str, Any]) -> list[torch.Tensor]:
        """Adam's (uncorrected) second moments of the group; zeros for a parameter that has not
        taken a step yet, so its groups count as never informed."""
        key = "max_exp_avg_sq" if group["amsgrad"] else "exp_avg_sq"
        return [self.state[p][key] if key in self.state.get(p, {}) else torch.zeros_like(p) for p in group["params"]]

    def _adam_metric(self, group: dict[str, Any], moments: list[torch.Tensor]) -> AdamMetric:
        """d per the group's ``prox_metric``, formed by the prox one tensor at a time."""
        if group["prox_metric"] == "reference":
            return AdamMetric(moments, [1.0] * len(moments), group["eps"])  # v / 1 is v: d = sqrt(v) + eps
        _, beta2 = group["betas"]
        corrections = []
        for p in group["params"]:
            steps = float(self.state.get(p, {}).get("step", 1.0))  # no step yet: never informed, any value
            corrections.append(1.0 - beta2**steps)
        return AdamMetric(moments, corrections, group["eps"])


@contextlib.contextmanager
def _grads_hidden(params: list[torch.Tensor]) -> Iterator[dict[torch.Tensor, torch.Tensor]]:
    """Take the gradients of ``params`` away for the duration (torch's optimiser step skips a
    parameter without one), yielding them; they are put back however the block ends."""
    grads = {p: p.grad for p in params if p.grad is not None}
    for p in grads:
        p.grad = None
    try:
        yield grads
    finally:
        for p, grad in grads.items():
            p.grad = grad


def _informed(slices: GroupSlices, moments: list[torch.Tensor]) -> torch.Tensor | None:
    """Groups with a second moment > 0 somewhere (None: all of them). A tensor whose smallest
    moment is > 0, the usual case after its first step, settles all its groups with one cheap
    pass; only the others need the per-group maxima."""
    smallest = torch.stack([v.amin() if v.numel() else v.new_ones(()) for v in moments])
    if bool((smallest > 0).all()):
        return None
    return slices.group_amax(moments) > 0


def _check_metric(name: Any) -> None:
    if name not in PROX_METRICS:
        raise ValueError(f"unknown prox_metric {name!r}; allowed: {', '.join(PROX_METRICS)}")


class ProxSGD(_ProximalStep, torch.optim.SGD):
    """``torch.optim.SGD`` (momentum, Nesterov, weight decay as torch implements them) plus the
    group-sparsity prox in the Euclidean metric. Same extra param-group keys as ProxAdamW."""

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = super().step(closure)
        for index, group in self._prox_groups():
            self._apply_prox(index, group, None)
        return loss
