"""The penalties the proximal optimisers apply, as registry entries.

A penalty is applied only through its proximal map, after the optimiser's update, so an entry
says how to take that prox for every group of a param group at once. Add one (e.g. SCAD or a
hierarchical penalty) by registering a :class:`Penalty` subclass under a new name; it is then
accepted by ``sparsity.penalty`` and listed by ``sparsemtl list penalties``.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from ..registry import Registry
from .prox import Precond, group_lasso_prox_, group_mcp_prox_
from .slices import GroupSlices


class Penalty:
    """lam * w_g * P(||W_g||) for every group g; subclasses implement the prox in place."""

    def check(self, spec: dict[str, Any]) -> None:
        """Raise ValueError when the param group's prox spec lacks what this penalty needs."""

    def prox_(
        self,
        slices: GroupSlices,
        tau: torch.Tensor,
        lr: float,
        spec: dict[str, Any],
        precond: Precond | None,
        warm_starts: Callable[[], list[torch.Tensor]],
    ) -> None:
        """Replace every group by its prox with thresholds ``tau`` (= lr * lam * w_g) in the
        metric ``precond`` (None: Euclidean). ``warm_starts()`` gives per-parameter group norms
        of the previous step kept in the optimiser state, for iterative solvers."""
        raise NotImplementedError


PENALTIES: Registry[type[Penalty]] = Registry("penalty")


@PENALTIES.register("none")
class NoPenalty(Penalty):
    """No penalty, P = 0 (a dense run; needs lam = 0): its prox is the identity."""

    def prox_(self, slices, tau, lr, spec, precond, warm_starts) -> None:
        return None


@PENALTIES.register("group_lasso")
class GroupLasso(Penalty):
    """Group lasso, P(t) = t: block soft-thresholding, exact zeros for every small group."""

    def prox_(self, slices, tau, lr, spec, precond, warm_starts) -> None:
        if precond is None:
            group_lasso_prox_(slices, tau)
        else:
            group_lasso_prox_(slices, tau, precond, norms=warm_starts())


@PENALTIES.register("group_mcp")
class GroupMCP(Penalty):
    """Group minimax concave penalty (spec key ``gamma``): flat beyond gamma * lam * w_g, so large
    groups are not shrunk."""

    def check(self, spec: dict[str, Any]) -> None:
        if not (spec.get("gamma") or 0) > 0:
            raise ValueError("group_mcp needs a prox spec 'gamma' > 0")

    def prox_(self, slices, tau, lr, spec, precond, warm_starts) -> None:
        group_mcp_prox_(slices, tau, lr / float(spec["gamma"]), precond)
