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
    if any(t.dtype in _LOW_PRECISION for t in sl.tensors):
        return _in_float32(lambda s, t, d, n: group_lasso_prox_(s, t, d, rtol, max_iter, n), sl, tau, precond, norms)
    if precond is not None and sl.separable:
        return _weighted_prox_per_tensor_(sl, tau, precond, rtol, max_iter, norms)
    fi = torch.finfo(tau.dtype)
    size = sum(t.numel() for t in sl.tensors)  # bounds every group's size
    if precond is None:
        sumsq = sl.group_sum([t.square() for t in sl.tensors])
        safe = sumsq.isfinite() & ((sumsq >= fi.tiny / fi.eps) | _clear_zero(sumsq, tau, size) | (tau <= 0))
        if bool(safe.all()):
            length, thresh = sumsq.sqrt_(), tau
        else:  # ||x|| as max|x| * ||x / max|x||| (tau / max|x| alike): no square under- or overflows
            xmax = _safe_max(sl.group_amax([t.abs() for t in sl.tensors]))
            length = sl.group_sum([(t / sl.expand(k, xmax)).square_() for k, t in enumerate(sl.tensors)]).sqrt_()
            thresh = _scaled_threshold(tau, xmax)
        zero = (length <= thresh) & (tau > 0)
        scale = torch.where(zero, torch.zeros_like(length), 1.0 - thresh / length.clamp_min(fi.tiny))
        for k, t in enumerate(sl.tensors):
            t.mul_(sl.expand(k, scale))
        return zero

    # The solve below works on x / max|x| (tau / max|x| alike) and takes ||d x|| as
    # max|d x| * ||d x / max|d x|||, so no square under- or overflows; where the direct
    # sums are safe (the same checks as _weighted_rows_prox_) both scales are 1 and skipped.
    sumsq = sl.group_sum([(d * t).square_() for t, d in zip(sl.tensors, precond)])
    dmax, dmin = sl.group_amax(precond), sl.group_amin(precond)
    weighted = sumsq.sqrt()
    limit = math.sqrt(fi.max) / 16
    solve = (weighted > tau) & (tau > 0)
    safe = sumsq.isfinite() & ((sumsq >= fi.tiny / fi.eps) | _clear_zero(sumsq, tau, size))
    bounded = (weighted <= limit * tau) & ((weighted - tau) / dmax * limit >= 1.0) & (weighted <= limit * dmin)
    safe = (safe & (~solve | bounded)) | (tau <= 0)
    if bool(safe.all()):
        ones = torch.ones_like(weighted)
        xmax, pmax, unit, thresh = ones, ones, sl.tensors, tau
    else:
        xmax = _safe_max(sl.group_amax([t.abs() for t in sl.tensors]))
        unit = [t / sl.expand(k, xmax) for k, t in enumerate(sl.tensors)]
        thresh = _scaled_threshold(tau, xmax)  # tau / max|x|
        prods = [d * u for u, d in zip(unit, precond)]
        pmax = _safe_max(sl.group_amax([q.abs() for q in prods]))
        weighted = sl.group_sum([q.div_(sl.expand(k, pmax)).square_() for k, q in enumerate(prods)]).sqrt_()
    keep = tau <= 0  # no penalty: the prox is the identity, whatever d
    zero = (weighted <= _scaled_threshold(thresh, pmax)) & ~keep
    solve = ~(zero | keep)
    # ||d x'|| - tau' = pmax * (weighted - tau' / pmax); the bounds divide it by max d and min d
    excess = torch.where(solve, weighted - thresh / pmax, torch.ones_like(weighted))
    theta = excess * (pmax / dmax)
    upper = excess * (pmax / dmin)
    thr = torch.where(solve, thresh, torch.zeros_like(thresh))
    at_zero = torch.where(solve, math.inf, 0.0)  # tau / 0 where tau > 0; 0 / 0 -> 0 elsewhere
    offsets = [torch.where(d > 0, sl.expand(k, thr) / d, sl.expand(k, at_zero)) for k, d in enumerate(precond)]
    step_tol = 0.1 * math.sqrt(_default_rtol(theta.dtype) if rtol is None else rtol)
    tiny = _tiny(theta)
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


def _tiny(t: torch.Tensor) -> float:
    return torch.finfo(t.dtype).tiny


def _clear_zero(sumsq: torch.Tensor, tau: torch.Tensor, size: int) -> torch.Tensor:
    """Groups certainly set to zero even if terms of their sum of squares ``sumsq`` underflowed
    (each by less than the smallest normal number; ``size`` bounds the group size)."""
    return (sumsq + size * torch.finfo(sumsq.dtype).tiny).sqrt() <= tau


def _safe_max(m: torch.Tensor) -> torch.Tensor:
    """Per-group scale: the group's largest entry, kept >= the smallest normal number so that
    all-zero groups divide to 0 (not NaN) and subnormal groups are still scaled up to O(1)."""
    return m.clamp_min(_tiny(m))


def _scaled_threshold(tau: torch.Tensor, *scales: torch.Tensor) -> torch.Tensor:
    """tau / prod(scales), divided one at a time so that an overflow can only go to +inf (which
    then correctly reads "zero group"), never to a NaN."""
    for sc in scales:
        tau = tau / sc
    return tau


def _in_float32(fn, sl: GroupSlices, tau: torch.Tensor, precond, norms=None):
    """Run ``fn(slices, tau, precond, norms)`` on float32 copies of float16/bfloat16 tensors and
    write the results back (the prox arithmetic needs float32's range and precision)."""
    work = [t.float() for t in sl.tensors]
    d32 = None if precond is None else [d.float() for d in precond]
    n32 = None if norms is None else [n.float() for n in norms]
    zero = fn(GroupSlices(work, sl.dims, sl.ids, sl.num_groups), tau.float(), d32, n32)
    for t, w in zip(sl.tensors, work):
        t.copy_(w)
    for n, m in zip(norms or [], n32 or []):
        n.copy_(m)
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

    Returns the zero-row mask and the new row norms (``start``: optional warm start per row).
    Rows whose numbers could under- or overflow in the direct solve (checked on per-row values
    it computes anyway) go to :func:`_scaled_rows_prox_` instead; the others, in practice all of
    them, cost no extra pass over the data."""
    fi = torch.finfo(x.dtype)
    sumsq = (d * x).square_().sum(1)
    weighted = sumsq.sqrt()
    dmax = d.amax(1)
    # The direct solve is safe where ||d x||^2 neither under- nor overflows, and (u = 1/(theta + tau/d)
    # <= min(1/theta, d/tau)) the Newton terms (x u)^2 <= (||d x|| / tau)^2 and u <= 1/lower stay
    # far below the largest float. tau <= 0 (identity) and clear zeros are always safe.
    limit = math.sqrt(fi.max) / 16
    solve = (weighted > tau) & (tau > 0)
    lower_all = (weighted - tau) / dmax
    safe = sumsq.isfinite() & ((sumsq >= fi.tiny / fi.eps) | _clear_zero(sumsq, tau, x.shape[1]))
    dmin = d.amin(1)
    # ... and theta, tau / d_i <= ||d x|| / min d stay finite in theta + tau / d_i
    safe &= ~solve | ((weighted <= limit * tau) & (lower_all * limit >= 1.0) & (weighted <= limit * dmin))
    safe |= tau <= 0
    if not bool(safe.all()):
        risky = (~safe).nonzero().squeeze(1)
        zero = torch.zeros_like(solve)
        result = torch.zeros_like(weighted)
        xr, dr = x.index_select(0, risky), d.index_select(0, risky)
        start_r = None if start is None else start.index_select(0, risky)
        zero[risky], result[risky] = _scaled_rows_prox_(xr, dr, tau.index_select(0, risky), rtol, max_iter, start_r)
        ok = safe.nonzero().squeeze(1)
        if ok.numel():
            xo, do = x.index_select(0, ok), d.index_select(0, ok)
            start_o = None if start is None else start.index_select(0, ok)
            zero[ok], result[ok] = _weighted_rows_prox_(xo, do, tau.index_select(0, ok), rtol, max_iter, start_o)
            x.index_copy_(0, ok, xo)
        x.index_copy_(0, risky, xr)
        return zero, result
    zero = (weighted <= tau) & (tau > 0)
    result = torch.zeros_like(weighted)
    keep = tau <= 0
    if bool(keep.any()):
        result[keep] = torch.linalg.vector_norm(x[keep], dim=1)
    active = solve.nonzero().squeeze(1)
    if active.numel() == 0:
        x.masked_fill_(zero.unsqueeze(1), 0.0)
        return zero, result
    full = active.numel() == x.shape[0]
    xa = x if full else x.index_select(0, active)
    c = d if full else d.index_select(0, active)
    ta = tau if full else tau.index_select(0, active)
    excess = (weighted if full else weighted.index_select(0, active)) - ta
    lower = lower_all if full else lower_all.index_select(0, active)
    upper = excess / (dmin if full else dmin.index_select(0, active))
    theta = _row_start(start, active, lower, upper)
    c = torch.div(ta.unsqueeze(1), c, out=c)  # c_i = tau / d_i (tau > 0; d_i = 0 gives inf)
    theta = _row_newton(xa, c, theta, lower, upper, rtol, max_iter)
    result[active] = theta
    th = theta.unsqueeze(1)
    xa.mul_(c.add_(th).reciprocal_().mul_(th))  # x * theta / (theta + c)
    if not full:
        x.masked_fill_(zero.unsqueeze(1), 0.0)
        x.index_copy_(0, active, xa)
    return zero, result


def _scaled_rows_prox_(
    x: torch.Tensor,
    d: torch.Tensor,
    tau: torch.Tensor,
    rtol: float | None,
    max_iter: int,
    start: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted prox of each row of the (G, n) matrix ``x`` in place; ``d`` is overwritten.

    Returns the zero-row mask and the new row norms (``start``: optional warm start per row).
    Each row is solved for x / max|x| (tau / max|x| alike; the minimiser scales back by max|x|),
    and ||d x|| is taken as max|d x| * ||d x / max|d x|||, so no square under- or overflows."""
    xmax = _safe_max(torch.linalg.vector_norm(x, float("inf"), dim=1))
    thresh = _scaled_threshold(tau, xmax)  # tau / max|x|
    xs = x / xmax.unsqueeze(1)
    p = d * xs
    pmax = _safe_max(torch.linalg.vector_norm(p, float("inf"), dim=1))
    weighted = p.div_(pmax.unsqueeze(1)).square_().sum(1).sqrt_()  # ||d x|| / (max|x| max|d x|)
    keep = tau <= 0  # no penalty: the prox is the identity, whatever d
    zero = (weighted <= _scaled_threshold(thresh, pmax)) & ~keep
    result = torch.zeros_like(weighted)
    if bool(keep.any()):
        result[keep] = xmax[keep] * torch.linalg.vector_norm(xs[keep], dim=1)
    active = (~(zero | keep)).nonzero().squeeze(1)
    if active.numel() == 0:
        x.masked_fill_(zero.unsqueeze(1), 0.0)
        return zero, result
    full = active.numel() == x.shape[0]
    xa = xs if full else xs.index_select(0, active)
    c = d if full else d.index_select(0, active)
    ta = thresh if full else thresh.index_select(0, active)
    pm = pmax if full else pmax.index_select(0, active)
    # ||d x'|| - tau' = pm * (weighted - tau' / pm), and the bounds divide it by max d, min d
    excess = (weighted if full else weighted.index_select(0, active)) - ta / pm
    lower = excess * (pm / c.amax(1))
    upper = excess * (pm / c.amin(1))
    scale = xmax if full else xmax.index_select(0, active)
    theta = _row_start(start, active, lower, upper, scale)
    # c_i = tau' / d_i as a division (1 / d_i overflows for subnormal d_i); d_i = 0 with tau > 0
    # (even where tau' underflows) gives inf: that entry is set to 0
    c = torch.where(c > 0, ta.unsqueeze(1) / c, math.inf)
    theta = _row_newton(xa, c, theta, lower, upper, rtol, max_iter)
    result[active] = theta * scale
    th = theta.unsqueeze(1)
    factor = c.add_(th).reciprocal_().mul_(th)  # theta / (theta + c)
    if full:
        x.mul_(factor)
    else:
        shrunk = x.index_select(0, active).mul_(factor)
        x.masked_fill_(zero.unsqueeze(1), 0.0)
        x.index_copy_(0, active, shrunk)
    return zero, result


def _row_start(
    start: torch.Tensor | None,
    active: torch.Tensor,
    lower: torch.Tensor,
    upper: torch.Tensor,
    scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """Newton's first iterate per active row: the warm start (divided by ``scale`` for a scaled
    solve) clamped into [lower, upper]; an overflowed (inf) or missing one falls back to ``lower``."""
    if start is None:
        return lower
    theta = start[active].to(lower.dtype)
    theta = torch.clamp(theta if scale is None else theta / scale, lower, upper)
    return torch.where(theta.isfinite(), theta, lower)


def _row_newton(
    x: torch.Tensor,
    c: torch.Tensor,
    theta: torch.Tensor,
    lower: torch.Tensor,
    upper: torch.Tensor,
    rtol: float | None,
    max_iter: int,
) -> torch.Tensor:
    """Root theta = ||z|| of each row's secular equation by Newton on S(theta)^(-1/2), with
    S = sum_i (x_i u_i)^2 and u_i = 1 / (theta + c_i) (c_i = tau / d_i); ``theta`` climbs
    from below and is kept in [lower, upper]. (x u)^2 is formed, not u^2 x^2: u^2 alone can
    overflow, (x u)^2 is bounded by (||d x|| / tau)^2."""
    step_tol = 0.1 * math.sqrt(_default_rtol(theta.dtype) if rtol is None else rtol)
    tiny = _tiny(theta)
    for _ in range(max_iter):
        u = (c + theta.unsqueeze(1)).reciprocal_()
        w = u.mul(x).square_()
        s = w.sum(1)
        t = w.mul_(u).sum(1)
        new_theta = torch.minimum(torch.maximum(theta + (s * s.sqrt() - s) / t.clamp_min(tiny), lower), upper)
        converged = bool(((new_theta - theta).abs() <= step_tol * new_theta).all())
        theta = new_theta
        if converged:
            break
    return theta


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
    if any(t.dtype in _LOW_PRECISION for t in sl.tensors):
        return _in_float32(lambda s, t, d, n: group_mcp_prox_(s, t, concavity, d, rtol, max_iter), sl, tau, precond)
    d = [torch.ones_like(t) for t in sl.tensors] if precond is None else precond
    # Solved for x / max|x| with tau / max|x| (the concavity is scale-free), so that y below,
    # up to 2 |x|, cannot overflow; the knee scales alike.
    xmax = _safe_max(sl.group_amax([t.abs() for t in sl.tensors]))
    thresh = _scaled_threshold(tau, xmax)
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
