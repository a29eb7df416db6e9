"""Turn a model and a sparsity config into optimiser param groups."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..registry import Registry
from .groupings import GroupStructure

#: name -> ``fn(group_sizes) -> per-group multiplier of lambda``
REWEIGHTS: Registry[Callable[[torch.Tensor], torch.Tensor]] = Registry("reweighting")


@REWEIGHTS.register("sqrt_size")
def sqrt_size(sizes: torch.Tensor) -> torch.Tensor:
    """w_g = sqrt(group size): large groups are not favoured (the group lasso's usual weight)."""
    return torch.sqrt(sizes)


@REWEIGHTS.register("none")
def unweighted(sizes: torch.Tensor) -> torch.Tensor:
    """w_g = 1 for every group."""
    return torch.ones_like(sizes)


def group_weights(structure: GroupStructure, reweight: str | Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Per-group lambda multipliers, e.g. sqrt(group size) so large groups are not favoured."""
    fn = REWEIGHTS.get(reweight) if isinstance(reweight, str) else reweight
    weights = torch.as_tensor(fn(structure.group_sizes()), dtype=torch.float64)
    if weights.shape != (structure.num_groups,) or not torch.isfinite(weights).all() or (weights < 0).any():
        raise ValueError("group reweighting must return one finite, non-negative weight per group")
    return weights


def regularized_param_groups(
    model: nn.Module,
    structure: GroupStructure,
    lam: float,
    reweight: str | Callable[[torch.Tensor], torch.Tensor] = "sqrt_size",
    penalty: str = "group_lasso",
    gamma: float | None = None,
) -> list[dict]:
    """Two param groups: the regularised tensors (with their prox spec) and everything else.

    ``gamma`` is group MCP's concavity parameter (the penalty flattens at ||W_g|| = gamma*lam*w_g).
    """
    regularized = {id(p) for p in structure.params}
    spec = structure.to_spec(group_weights(structure, reweight))
    spec["penalty"] = penalty
    if penalty == "group_mcp":
        spec["gamma"] = gamma
    rest = [p for p in model.parameters() if id(p) not in regularized and p.requires_grad]
    groups = [{"params": list(structure.params), "lam": lam, "prox": spec, "name": "sparse"}]
    if rest:
        groups.append({"params": rest, "name": "dense"})
    return groups
