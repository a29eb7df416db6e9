"""Proximal optimisers: a torch.optim update followed by the group-sparsity prox.

Param groups that carry a ``prox`` spec (see :func:`sparsemtl.sparsity.regularized_param_groups`)
and a ``lam`` > 0 get, after every update, the prox of ``lr * lam * w_g * penalty(W_g)``:

* :class:`ProxAdamW` works in Adam's metric d = sqrt(v_hat) + eps, where v_hat is the
  bias-corrected second moment: exactly the preconditioner the gradient step divided by, so the
  penalty and the loss are scaled alike from the first step on. (The seed left the bias
  correction out of the prox, which makes the prox ~3x stronger than the gradient step early in
  training; consistency is the choice that keeps lambda's meaning constant over training.)
* :class:`ProxSGD` works in the Euclidean metric (d = 1): block soft-thresholding for the group
  lasso, firm thresholding for group MCP.

Everything else (state_dict, param groups, LR schedulers, AMP's GradScaler) is torch.optim's.
"""

from __future__ import annotations

from typing import Any

import torch

from .prox import group_lasso_prox_, group_mcp_prox_
from .slices import GroupSlices

PENALTIES = ("group_lasso", "group_mcp")


class _ProximalStep:
    """Mixin for torch optimisers: validates ``lam``/``prox`` group keys, caches each group's
    slice layout on the parameters' device, and applies the prox after the parent's step."""

    _slices: dict[int, tuple[GroupSlices, torch.Tensor]]

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
                raise ValueError(f"unknown penalty {penalty!r}; available: {', '.join(PENALTIES)}")
            if penalty == "group_mcp" and not (spec.get("gamma") or 0) > 0:
                raise ValueError("group_mcp needs a prox spec 'gamma' > 0")
        super().add_param_group(param_group)  # type: ignore[misc]
        self._slices.clear()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)  # type: ignore[misc]
        self._slices.clear()

    def _layout(self, index: int, group: dict[str, Any]) -> tuple[GroupSlices, torch.Tensor]:
        if index not in self._slices:
            spec = group["prox"]
            params = group["params"]
            ids = [torch.as_tensor(i, dtype=torch.long, device=p.device) for i, p in zip(spec["ids"], params)]
            weights = torch.tensor(spec["weights"], dtype=params[0].dtype, device=params[0].device)
            self._slices[index] = (GroupSlices(list(params), list(spec["dims"]), ids, len(weights)), weights)
        return self._slices[index]

    def _apply_prox(self, index: int, group: dict[str, Any], precond: list[torch.Tensor] | None) -> None:
        slices, weights = self._layout(index, group)
        lr, spec = float(group["lr"]), group["prox"]
        tau = weights * (lr * float(group["lam"]))
        if precond is not None:
            # A group that has never had a non-zero gradient has metric d = eps everywhere and
            # would be deleted for any lambda > 0 before it learns; leave it untouched until then.
            tau = torch.where(slices.group_amax(precond) > group["eps"], tau, torch.zeros_like(tau))
        if spec.get("penalty", "group_lasso") == "group_mcp":
            group_mcp_prox_(slices, tau, lr / float(spec["gamma"]), precond)
        elif precond is None:
            group_lasso_prox_(slices, tau)
        else:
            group_lasso_prox_(slices, tau, precond, norms=self._warm_starts(group, slices))

    def _warm_starts(self, group: dict[str, Any], slices: GroupSlices) -> list[torch.Tensor]:
        """Per-parameter group norms of the previous step (optimiser state, so they round-trip)."""
        starts = []
        for p, dim in zip(group["params"], slices.dims):
            state = self.state[p]  # type: ignore[attr-defined]
            if "prox_norm" not in state:
                state["prox_norm"] = torch.zeros(p.shape[dim], dtype=p.dtype, device=p.device)
            starts.append(state["prox_norm"])
        return starts

    def _prox_groups(self):
        for index, group in enumerate(self.param_groups):  # type: ignore[attr-defined]
            if group["prox"] is not None and group["lam"] > 0:
                yield index, group


class ProxAdamW(_ProximalStep, torch.optim.AdamW):
    """``torch.optim.AdamW`` plus the group-sparsity prox in Adam's metric.

    Extra param-group keys: ``lam`` (penalty strength, 0 = plain AdamW; may be changed between
    steps like ``lr``) and ``prox`` (plain-data layout: ``dims``, ``ids``, ``weights``,
    ``penalty`` and, for group MCP, ``gamma``). A param group whose parameters have not all taken
    an Adam step yet, and any sparsity group whose second moment is still exactly zero (it never
    received a gradient), are left unregularised for that step.
    """

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = super().step(closure)
        for index, group in self._prox_groups():
            precond = self._adam_metric(group)
            if precond is not None:
                self._apply_prox(index, group, precond)
        return loss

    def _adam_metric(self, group: dict[str, Any]) -> list[torch.Tensor] | None:
        _, beta2 = group["betas"]
        metric = []
        for p in group["params"]:
            state = self.state.get(p)
            if not state:
                return None
            second = state["max_exp_avg_sq"] if group["amsgrad"] else state["exp_avg_sq"]
            correction = 1.0 - beta2 ** float(state["step"])
            metric.append((second / correction).sqrt_().add_(group["eps"]))
        return metric


class ProxSGD(_ProximalStep, torch.optim.SGD):
    """``torch.optim.SGD`` (momentum, Nesterov, weight decay as torch implements them) plus the
    group-sparsity prox in the Euclidean metric. Same extra param-group keys as ProxAdamW."""

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = super().step(closure)
        for index, group in self._prox_groups():
            self._apply_prox(index, group, None)
        return loss
