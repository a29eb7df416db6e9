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
[(||d x|| - tau)/max(d), (||d x|| - tau)/min(d)]. Convergence is quadratic, so a group stops
once its relative Newton step is below sqrt(rtol)/10 (``rtol`` default: 4 machine epsilons of the
dtype): the error left after such a step is far below ``rtol``; or once a step after the first
fails to climb, which only rounding can cause (see ``weighted_solver.settled``). At most
``max_iter`` passes.

The separable case (every group inside one tensor, as for channel groups), the one training
takes, is solved by :mod:`.weighted_solver`; groups spread over several tensors take the
general path here, which iterates until every group has converged.
"""

from __future__ import annotations

import math

import torch

from .slices import GroupSlices
from .weighted_solver import (
    AdamMetric,
    Precond,
    clear_zero,
    default_rtol,
    metric_tensors,
    safe_max,
    scaled_threshold,
    separable_weighted_prox_,
    smallest_normal,
)

__all__ = [
    "AdamMetric",
    "Precond",
    "block_soft_threshold",
    "group_lasso_prox_",
    "group_mcp_prox",
    "group_mcp_prox_",
    "weighted_group_lasso_prox",
]


def group_lasso_prox_(
    slices: GroupSlices,
    tau: torch.Tensor,
    precond: Precond | None = None,
    rtol: float | None = None,
    max_iter: int = 50,
    norms: list[torch.Tensor] | None = None,
) -> torch.Tensor:
    """Apply the (weighted) group-lasso prox in place to the tensors of ``slices``.

    ``tau`` holds one threshold per group; ``precond`` (one tensor per slice tensor, all entries
    > 0, or an :class:`AdamMetric`) is the metric d; its tensors are used as scratch space and
    overwritten. Without ``precond`` this is block soft-thresholding. ``norms`` (optional, weighted case with every
    group inside one tensor) holds per tensor the group norms of the previous call, one per slice:
    they warm-start the root solve and are overwritten with the new norms. Returns the mask of
    groups set to exactly zero.
    """
    sl = slices
    if any(t.dtype in _LOW_PRECISION for t in sl.tensors):
        return _in_float32(lambda s, t, d, n: group_lasso_prox_(s, t, d, rtol, max_iter, n), sl, tau, precond, norms)
    if precond is not None and sl.separable:
        return separable_weighted_prox_(sl, tau, precond, rtol, max_iter, norms)
    if precond is not None:
        precond = metric_tensors(precond)
    fi = torch.finfo(tau.dtype)
    size = sum(t.numel() for t in sl.tensors)  # bounds every group's size
    if precond is None:
        sumsq = sl.group_sum([t.square() for t in sl.tensors])
        safe = sumsq.isfinite() & ((sumsq >= fi.tiny / fi.eps) | clear_zero(sumsq, tau, size) | (tau <= 0))
        if bool(safe.all()):
            length, thresh = sumsq.sqrt_(), tau
        else:  # ||x|| as max|x| * ||x / max|x||| (tau / max|x| alike): no square under- or overflows
            xmax = safe_max(sl.group_amax([t.abs() for t in sl.tensors]))
            length = sl.group_sum([(t / sl.expand(k, xmax)).square_() for k, t in enumerate(sl.tensors)]).sqrt_()
            thresh = scaled_threshold(tau, xmax)
        zero = (length <= thresh) & (tau > 0)
        scale = torch.where(zero, torch.zeros_like(length), 1.0 - thresh / length.clamp_min(fi.tiny))
        for k, t in enumerate(sl.tensors):
            t.mul_(sl.expand(k, scale))
        return zero

    # The solve below works on x / max|x| (tau / max|x| alike) and takes ||d x|| as
    # max|d x| * ||d x / max|d x|||, so no square under- or overflows; where the direct
    # sums are safe (the same checks as _Solver's) both scales are 1 and skipped.
    sumsq = sl.group_sum([(d * t).square_() for t, d in zip(sl.tensors, precond)])
    dmax, dmin = sl.group_amax(precond), sl.group_amin(precond)
    weighted = sumsq.sqrt()
    limit = math.sqrt(fi.max) / 16
    solve = (weighted > tau) & (tau > 0)
    safe = sumsq.isfinite() & ((sumsq >= fi.tiny / fi.eps) | clear_zero(sumsq, tau, size))
    bounded = (weighted <= limit * tau) & ((weighted - tau) / dmax * limit >= 1.0) & (weighted <= limit * dmin)
    safe = (safe & (~solve | bounded)) | (tau <= 0)
    if bool(safe.all()):
        ones = torch.ones_like(weighted)
        xmax, pmax, unit, thresh = ones, ones, sl.tensors, tau
    else:
        xmax = safe_max(sl.group_amax([t.abs() for t in sl.tensors]))
        unit = [t / sl.expand(k, xmax) for k, t in enumerate(sl.tensors)]
        thresh = scaled_threshold(tau, xmax)  # tau / max|x|
        prods = [d * u for u, d in zip(unit, precond)]
        pmax = safe_max(sl.group_amax([q.abs() for q in prods]))
        weighted = sl.group_sum([q.div_(sl.expand(k, pmax)).square_() for k, q in enumerate(prods)]).sqrt_()
    keep = tau <= 0  # no penalty: the prox is the identity, whatever d
    zero = (weighted <= scaled_threshold(thresh, pmax)) & ~keep
    solve = ~(zero | keep)
    # ||d x'|| - tau' = pmax * (weighted - tau' / pmax); the bounds divide it by max d and min d
    excess = torch.where(solve, weighted - thresh / pmax, torch.ones_like(weighted))
    theta = excess * (pmax / dmax)
    upper = excess * (pmax / dmin)
    thr = torch.where(solve, thresh, torch.zeros_like(thresh))
    at_zero = torch.where(solve, math.inf, 0.0)  # tau / 0 where tau > 0; 0 / 0 -> 0 elsewhere
    offsets = [torch.where(d > 0, sl.expand(k, thr) / d, sl.expand(k, at_zero)) for k, d in enumerate(precond)]
    step_tol = 0.1 * math.sqrt(default_rtol(theta.dtype) if rtol is None else rtol)
    tiny = smallest_normal(theta)
    for _ in range(max_iter):
        inv = [1.0 / (sl.expand(k, theta) + c) for k, c in enumerate(offsets)]
        ws = [(u * v).square() for u, v in zip(unit, inv)]
        s = sl.group_sum(ws)
        t = sl.group_sum([w * v for w, v in zip(ws, inv)])
        step = (s * s.sqrt() - s) / t.clamp_min(tiny)
        step = torch.where(solve, step, torch.zeros_like(step))
        new_theta = torch.minimum(theta + step.clamp_min(0.0), upper)
        converged = bool(((new_theta - theta).abs() <= step_tol * new_theta).all())
        theta = new_theta
        if converged:
            break
    factor = torch.where(zero, torch.zeros_like(theta), torch.where(keep, torch.ones_like(theta), theta))
    for k, (t, c) in enumerate(zip(sl.tensors, offsets)):
        th = sl.expand(k, factor)
        t.mul_(th / (th + c).clamp_min(tiny))
    return zero


_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _in_float32(fn, sl: GroupSlices, tau: torch.Tensor, precond, norms=None):
    """Run ``fn(slices, tau, precond, norms)`` on float32 copies of float16/bfloat16 tensors and
    write the results back (the prox arithmetic needs float32's range and precision)."""
    work = [t.float() for t in sl.tensors]
    d32 = None if precond is None else [d.float() for d in metric_tensors(precond)]
    n32 = None if norms is None else [n.float() for n in norms]
    zero = fn(GroupSlices(work, sl.dims, sl.ids, sl.num_groups), tau.float(), d32, n32)
    for t, w in zip(sl.tensors, work):
        t.copy_(w)
    for n, m in zip(norms or [], n32 or []):
        n.copy_(m)
    return zero


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
    precond: Precond | None = None,
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
    if any(t.dtype in _LOW_PRECISION for t in sl.tensors):
        return _in_float32(lambda s, t, d, n: group_mcp_prox_(s, t, concavity, d, rtol, max_iter), sl, tau, precond)
    d = [torch.ones_like(t) for t in sl.tensors] if precond is None else metric_tensors(precond)
    # Solved for x / max|x| with tau / max|x| (the concavity is scale-free), so that y below,
    # up to 2 |x|, cannot overflow; the knee scales alike.
    xmax = safe_max(sl.group_amax([t.abs() for t in sl.tensors]))
    thresh = scaled_threshold(tau, xmax)
    # a tau > 0 whose scaled value underflows stays > 0 (the smallest subnormal): entries with
    # d_i = 0 must still go to 0, and tau = 0 would mean "no penalty" below
    fi = torch.finfo(thresh.dtype)
    thresh = torch.where((tau > 0) & (thresh == 0), fi.smallest_normal * fi.eps, thresh)
    kappa = torch.clamp(0.5 * sl.group_amin(d), max=concavity)
    knee = torch.where(kappa > 0, thresh / kappa, math.inf)  # kappa = 0 (some d_i = 0): no knee
    shifted = [dk - sl.expand(k, kappa) for k, dk in enumerate(d)]
    # y = d x / d' with d' = d - kappa >= d / 2; where d = 0, kappa = 0 and the ratio is 1
    targets = [
        (t / sl.expand(k, xmax)).mul_(torch.where(s > 0, dk / s, 1.0))
        for k, (dk, t, s) in enumerate(zip(d, sl.tensors, shifted))
    ]
    target_slices = GroupSlices(targets, sl.dims, sl.ids, sl.num_groups)
    zero = group_lasso_prox_(target_slices, thresh, shifted, rtol, max_iter)
    beyond_knee = target_slices.group_sum([z.square() for z in targets]).sqrt() > knee
    for k, (t, z) in enumerate(zip(sl.tensors, targets)):
        t.copy_(torch.where(sl.expand(k, beyond_knee), t, z.mul_(sl.expand(k, xmax))))
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
