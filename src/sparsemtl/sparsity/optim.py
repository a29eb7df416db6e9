"""Proximal AdamW: the AdamW update followed by the Adam-preconditioned group-lasso prox.

Param groups that carry a ``prox`` spec (see :func:`sparsemtl.sparsity.regularized_param_groups`)
and a ``lam`` > 0 get, after every AdamW step, the prox of ``lr * lam * w_g * ||W_g||`` in the
metric d = sqrt(v_hat) + eps, where v_hat is Adam's bias-corrected second moment: the same
preconditioner the gradient step divided by, so the penalty and the loss are scaled alike from the
first step on (the seed left the bias correction out of the prox, making it ~3x stronger early).
Everything else (state_dict, param groups, schedulers, AMP's GradScaler) is torch.optim.AdamW's.
"""

from __future__ import annotations

from typing import Any

import torch

from .prox import group_lasso_prox_
from .slices import GroupSlices

PENALTIES = ("group_lasso",)


class ProxAdamW(torch.optim.AdamW):
    """``torch.optim.AdamW`` plus a group-sparsity prox on the param groups that request it.

    Extra param-group keys: ``lam`` (penalty strength, 0 = plain AdamW; a scheduler may change
    it like ``lr``) and ``prox`` (plain-data group layout: ``dims``, ``ids``, ``weights``,
    ``penalty``). A group whose parameters have not all taken an Adam step yet (no second moment)
    is left unregularised for that step.
    """

    def __init__(self, params: Any, lr: float = 1e-3, **kwargs: Any) -> None:
        self._slices: dict[int, tuple[GroupSlices, torch.Tensor]] = {}
        super().__init__(params, lr=lr, **kwargs)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        param_group.setdefault("lam", 0.0)
        param_group.setdefault("prox", None)
        spec = param_group["prox"]
        if spec is not None:
            params = param_group["params"]
            n = 1 if isinstance(params, torch.Tensor) else len(list(params))
            if len(spec["dims"]) != n or len(spec["ids"]) != n:
                raise ValueError(f"prox spec lists {len(spec['dims'])} tensors for {n} parameters")
            if spec.get("penalty", "group_lasso") not in PENALTIES:
                raise ValueError(f"unknown penalty {spec['penalty']!r}; available: {', '.join(PENALTIES)}")
        super().add_param_group(param_group)
        self._slices.clear()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._slices.clear()

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = super().step(closure)
        for index, group in enumerate(self.param_groups):
            if group["prox"] is not None and group["lam"] > 0:
                self._prox(index, group)
        return loss

    def _layout(self, index: int, group: dict[str, Any]) -> tuple[GroupSlices, torch.Tensor]:
        if index not in self._slices:
            spec = group["prox"]
            params = group["params"]
            ids = [torch.as_tensor(i, dtype=torch.long, device=p.device) for i, p in zip(spec["ids"], params)]
            weights = torch.tensor(spec["weights"], dtype=params[0].dtype, device=params[0].device)
            self._slices[index] = (GroupSlices(list(params), list(spec["dims"]), ids, len(weights)), weights)
        return self._slices[index]

    def _prox(self, index: int, group: dict[str, Any]) -> None:
        _, beta2 = group["betas"]
        precond = []
        for p in group["params"]:
            state = self.state.get(p)
            if not state:
                return
            second = state["max_exp_avg_sq"] if group["amsgrad"] else state["exp_avg_sq"]
            correction = 1.0 - beta2 ** float(state["step"])
            precond.append((second / correction).sqrt_().add_(group["eps"]))
        slices, weights = self._layout(index, group)
        tau = weights * (float(group["lr"]) * float(group["lam"]))
        group_lasso_prox_(slices, tau, precond)
