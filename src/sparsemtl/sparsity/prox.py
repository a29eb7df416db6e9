"""Proximal operators of the l1/l2 group-lasso penalty, vectorised over all groups.

Groups are given as :class:`GroupSlices` (tensor slices along one dimension plus a group id per
slice), so one code path serves groups inside one tensor and groups spread over several tensors;
everything is computed in place on the tensors, without copies of the parameters. The weighted
(preconditioned) prox solves, per group g with weights d_i > 0,

    z_g = argmin_z 1/2 sum_i d_i (z_i - x_i)^2 + tau_g ||z||_2.

If ||d x||_2 <= tau_g the minimiser is exactly 0; otherwise z_i = theta d_i x_i / (theta d_i + tau_g)
with theta = ||z_g||_2 the unique root of S(theta) = sum_i x_i^2 / (theta + tau_g/d_i)^2 = 1.

Root solve: Newton's method on h(theta) = S(theta)^(-1/2) - 1. h is increasing and concave on
theta >= 0 (the Moré–Sorensen secular-equation argument), so Newton started below the root climbs
monotonically to it and never overshoots; when all d_i of a group are equal h is affine and one
step is exact. The start is the lower bound (||d x|| - tau)/max(d), or a warm start (the group
norms of the previous optimiser step) when given: from above the root, one Newton step lands below
it (concavity) and the climb continues from there. Iterates are kept within the bounds
[(||d x|| - tau)/max(d), (||d x|| - tau)/min(d)]. Convergence is quadratic, so iteration stops
once every group's relative Newton step is below sqrt(rtol)/10 (``rtol`` default: 4 machine
epsilons of the dtype): the error left after such a step is far below ``rtol``. At most
``max_iter`` passes.
"""

from __future__ import annotations

import math

import torch

from .slices import GroupSlices


def _default_rtol(dtype: torch.dtype) -> float:
    return 4.0 * torch.finfo(dtype).eps


def group_lasso_prox_(
    slices: GroupSlices,
    tau: torch.Tensor,
    precond: list[torch.Tensor] | None = None,
    rtol: float | None = None,
    max_iter: int = 50,
    norms: list[torch.Tensor] | None = None,
) -> torch.Tensor:
    """Apply the (weighted) group-lasso prox in place to the tensors of ``slices``.

    ``tau`` holds one threshold per group; ``precond`` (one tensor per slice tensor, all entries
    > 0) is the metric d; its tensors are used as scratch space and overwritten. Without
    ``precond`` this is block soft-thresholding. ``norms`` (optional, weighted case with every
    group inside one tensor) holds per tensor the group norms of the previous call, one per slice:
    they warm-start the root solve and are overwritten with the new norms. Returns the mask of
    groups set to exactly zero.
    """
    sl = slices
    if precond is not None and sl.separable:
        return _weighted_prox_per_tensor_(sl, tau, precond, rtol, max_iter, norms)
    if precond is None:
        lengths = sl.group_sum([t.square() for t in sl.tensors]).sqrt()
        zero = lengths <= tau
        tiny = torch.finfo(lengths.dtype).tiny
        scale = torch.where(zero, torch.zeros_like(lengths), 1.0 - tau / lengths.clamp_min(tiny))
        for k, t in enumerate(sl.tensors):
            t.mul_(sl.expand(k, scale))
        return zero

    weighted = sl.group_sum([(d * t).square() for t, d in zip(sl.tensors, precond)]).sqrt()
    zero = weighted <= tau
    excess = (weighted - tau).clamp_min(0.0)
    theta = excess / sl.group_amax(precond)
    upper = excess / sl.group_amin(precond)
    offsets = [sl.expand(k, tau) / d for k, d in enumerate(precond)]
    squares = [t.square() for t in sl.tensors]
    step_tol = 0.1 * math.sqrt(_default_rtol(theta.dtype) if rtol is None else rtol)
    for _ in range(max_iter):
        inv = [1.0 / (sl.expand(k, theta) + c) for k, c in enumerate(offsets)]
        s = sl.group_sum([q * v.square() for q, v in zip(squares, inv)])
        t = sl.group_sum([q * v.pow(3) for q, v in zip(squares, inv)])
        step = (s * s.sqrt() - s) / t.clamp_min(torch.finfo(t.dtype).tiny)
        step = torch.where(zero, torch.zeros_like(step), step)
        new_theta = torch.minimum(theta + step.clamp_min(0.0), upper)
        converged = bool(((new_theta - theta).abs() <= step_tol * new_theta).all())
        theta = new_theta
        if converged:
            break
    theta = torch.where(zero, torch.zeros_like(theta), theta)
    for k, (t, c) in enumerate(zip(sl.tensors, offsets)):
        th = sl.expand(k, theta)
        t.mul_(th / (th + c))
    return zero


def _as_rows(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Contiguous (slices along ``dim``, everything else) matrix: a view of ``t`` when its
    memory layout allows, a copy otherwise."""
    return t.movedim(dim, 0).reshape(t.shape[dim], -1).contiguous()


def _weighted_prox_per_tensor_(
    sl: GroupSlices,
    tau: torch.Tensor,
    precond: list[torch.Tensor],
    rtol: float | None,
    max_iter: int,
    norms: list[torch.Tensor] | None,
) -> torch.Tensor:
    """Fast path when every group lies in one tensor: contiguous row matrices, and the root
    solve runs only over the groups that are not set to zero."""
    zero = torch.zeros(sl.num_groups, dtype=torch.bool, device=tau.device)
    for k, (t, dim, ids, d) in enumerate(zip(sl.tensors, sl.dims, sl.ids, precond)):
        rows = _as_rows(t, dim)
        start = None if norms is None else norms[k]
        zero[ids], theta = _weighted_rows_prox_(rows, _as_rows(d, dim), tau[ids], rtol, max_iter, start)
        if norms is not None:
            norms[k].copy_(theta)
        if rows.untyped_storage().data_ptr() != t.untyped_storage().data_ptr():
            t.copy_(rows.view(t.movedim(dim, 0).shape).movedim(0, dim))
    return zero


def _weighted_rows_prox_(
    x: torch.Tensor,
    d: torch.Tensor,
    tau: torch.Tensor,
    rtol: float | None,
    max_iter: int,
    start: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted prox of each row of the (G, n) matrix ``x`` in place; ``d`` is overwritten.

    Returns the zero-row mask and the new row norms (``start``: optional warm start per row)."""
    weighted = (d * x).square_().sum(1).sqrt_()
    zero = weighted <= tau
    result = torch.zeros_like(weighted)
    active = (~zero).nonzero().squeeze(1)
    if active.numel() == 0:
        x.zero_()
        return zero, result
    full = active.numel() == x.shape[0]
    xa = x if full else x.index_select(0, active)
    c = d if full else d.index_select(0, active)
    ta = tau if full else tau.index_select(0, active)
    excess = (weighted if full else weighted.index_select(0, active)) - ta
    lower = excess / c.amax(1)
    upper = excess / c.amin(1)
    theta = lower if start is None else torch.clamp(start[active].to(lower.dtype), lower, upper)
    c.reciprocal_().mul_(ta.unsqueeze(1))  # c_i = tau / d_i
    q = xa.square()
    step_tol = 0.1 * math.sqrt(_default_rtol(theta.dtype) if rtol is None else rtol)
    tiny = torch.finfo(theta.dtype).tiny
    for _ in range(max_iter):
        u = (c + theta.unsqueeze(1)).reciprocal_()
        w = u.square().mul_(q)
        s = w.sum(1)
        t = w.mul_(u).sum(1)
        new_theta = torch.minimum(torch.maximum(theta + (s * s.sqrt() - s) / t.clamp_min(tiny), lower), upper)
        converged = bool(((new_theta - theta).abs() <= step_tol * new_theta).all())
        theta = new_theta
        if converged:
            break
    result[active] = theta
    th = theta.unsqueeze(1)
    xa.mul_(c.add_(th).reciprocal_().mul_(th))  # x * theta / (theta + c)
    if not full:
        x.zero_()
        x.index_copy_(0, active, xa)
    return zero, result


def _rows_as_slices(x: torch.Tensor) -> GroupSlices:
    return GroupSlices([x], [0], [torch.arange(x.shape[0], device=x.device)], x.shape[0])


def block_soft_threshold(x: torch.Tensor, tau: torch.Tensor | float) -> torch.Tensor:
    """Prox of tau*||.||_2 applied to each row of ``x`` (a new tensor)."""
    z = x.clone()
    tau_t = torch.as_tensor(tau, dtype=x.dtype, device=x.device).expand(x.shape[0]).contiguous()
    group_lasso_prox_(_rows_as_slices(z), tau_t)
    return z


def weighted_group_lasso_prox(
    x: torch.Tensor, d: torch.Tensor, tau: torch.Tensor | float, rtol: float | None = None
) -> torch.Tensor:
    """Weighted prox of each row of ``x`` with per-entry metric ``d`` (a new tensor)."""
    z = x.clone()
    tau_t = torch.as_tensor(tau, dtype=x.dtype, device=x.device).expand(x.shape[0]).contiguous()
    group_lasso_prox_(_rows_as_slices(z), tau_t, [d.clone()], rtol=rtol)
    return z


def group_mcp_prox_(
    slices: GroupSlices,
    tau: torch.Tensor,
    concavity: float,
    precond: list[torch.Tensor] | None = None,
    rtol: float | None = None,
    max_iter: int = 50,
) -> torch.Tensor:
    """Group MCP prox in place: per group, argmin_z 1/2 sum_i d_i (z_i - x_i)^2 + P_g(||z||).

    P_g is the minimax concave penalty of a prox step: slope ``tau_g - concavity * r`` until it
    reaches 0 at the knee r_g = tau_g / concavity, flat beyond (for a step of size lr on
    lambda * MCP_gamma this is tau = lr * lambda * w_g and concavity = lr / gamma).

    Reduction (exact): below the knee the objective equals, up to a constant,
    1/2 sum_i d'_i (z_i - y_i)^2 + tau_g ||z|| with d' = d - concavity and y = d x / d', so the
    weighted group-lasso solver gives the minimiser; if its norm exceeds the knee, the penalty
    is flat there and the minimiser is x itself. The zero test is unchanged (||d x|| <= tau_g).
    The subproblem is convex only while d_i > concavity; for a group where some d_i is smaller
    the concavity is capped at half that group's smallest d_i, which keeps the step exact for a
    slightly less concave penalty instead of returning an arbitrary stationary point.
    Returns the mask of groups set to exactly zero.
    """
    sl = slices
    d = [torch.ones_like(t) for t in sl.tensors] if precond is None else precond
    kappa = torch.clamp(0.5 * sl.group_amin(d), max=concavity)
    knee = tau / kappa.clamp_min(torch.finfo(tau.dtype).tiny)
    shifted = [dk - sl.expand(k, kappa) for k, dk in enumerate(d)]
    targets = [dk * t / s for dk, t, s in zip(d, sl.tensors, shifted)]
    target_slices = GroupSlices(targets, sl.dims, sl.ids, sl.num_groups)
    zero = group_lasso_prox_(target_slices, tau, shifted, rtol, max_iter)
    beyond_knee = target_slices.group_sum([z.square() for z in targets]).sqrt() > knee
    for k, (t, z) in enumerate(zip(sl.tensors, targets)):
        t.copy_(torch.where(sl.expand(k, beyond_knee), t, z))
    return zero


def group_mcp_prox(
    x: torch.Tensor,
    tau: torch.Tensor | float,
    concavity: float,
    d: torch.Tensor | None = None,
    rtol: float | None = None,
) -> torch.Tensor:
    """Group MCP prox of each row of ``x`` (optionally in metric ``d``), as a new tensor."""
    z = x.clone()
    tau_t = torch.as_tensor(tau, dtype=x.dtype, device=x.device).expand(x.shape[0]).contiguous()
    group_mcp_prox_(_rows_as_slices(z), tau_t, concavity, None if d is None else [d.clone()], rtol=rtol)
    return z
