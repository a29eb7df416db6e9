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
fails to climb, which only rounding can cause (see :func:`_settled`). At most ``max_iter``
passes.

Cost: when every group lies inside one tensor (input- or output-channel groups of a layer), the
weighted prox takes about 20 elementwise passes over the weights in all (:class:`_Solver`),
most groups converging in a single Newton step from the warm start. Groups spread over several
tensors take the general path, which iterates until every group has converged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple, Union

import torch

from .slices import GroupSlices, block_reduce


@dataclass(frozen=True)
class AdamMetric:
    """Adam's metric d = sqrt(v / correction) + eps of each tensor, formed when the prox needs it.

    The prox needs one tensor's d at a time: forming it then, instead of a list of fresh
    full-size tensors up front, keeps it in cache for the prox's passes over that tensor and
    holds one tensor's worth of memory, not all of them."""

    moments: list[torch.Tensor]  # v per tensor
    corrections: list[float]  # 1 - beta2^t per tensor, or 1.0: no bias correction
    eps: float

    def tensor(self, k: int) -> torch.Tensor:
        """d of tensor ``k``, as a new tensor."""
        return _adam_d(self.moments[k], self.corrections[k], self.eps)

    def tensors(self) -> list[torch.Tensor]:
        return [self.tensor(k) for k in range(len(self.moments))]


#: A metric d: one tensor per slice tensor (used as scratch space and overwritten), or Adam's.
Precond = Union[list[torch.Tensor], AdamMetric]


def _metric_tensors(precond: Precond) -> list[torch.Tensor]:
    """``precond`` as a list of tensors (formed now for an :class:`AdamMetric`)."""
    return precond.tensors() if isinstance(precond, AdamMetric) else precond


def _default_rtol(dtype: torch.dtype) -> float:
    return 4.0 * torch.finfo(dtype).eps


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
        return _separable_weighted_prox_(sl, tau, precond, rtol, max_iter, norms)
    if precond is not None:
        precond = _metric_tensors(precond)
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
    # sums are safe (the same checks as _Solver's) both scales are 1 and skipped.
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
    d32 = None if precond is None else [d.float() for d in _metric_tensors(precond)]
    n32 = None if norms is None else [n.float() for n in norms]
    zero = fn(GroupSlices(work, sl.dims, sl.ids, sl.num_groups), tau.float(), d32, n32)
    for t, w in zip(sl.tensors, work):
        t.copy_(w)
    for n, m in zip(norms or [], n32 or []):
        n.copy_(m)
    return zero


def _separable_weighted_prox_(
    sl: GroupSlices,
    tau: torch.Tensor,
    precond: Precond,
    rtol: float | None,
    max_iter: int,
    norms: list[torch.Tensor] | None,
) -> torch.Tensor:
    """Weighted prox when every group lies in one tensor (e.g. input-channel groups), by
    :class:`_Solver`, in one of two ways.

    On CPU (:data:`PER_TENSOR_DEVICES`) a tensor at a time, as views without copies, in chunks of
    about :data:`CHUNK_ELEMENTS` weights (small tensors together, large ones in pieces of whole
    groups): a chunk's x, d and temporaries stay in cache over the passes of the zero test, the
    Newton steps and the shrinking (measured on the resnet50d encoder, 2^20 was fastest: about
    30% faster than one chunk for everything, and chunks of 2^16 took twice as long). Elsewhere
    (GPU) on all tensors concatenated, one copy of x and d, so that each pass is one kernel for
    all tensors instead of one per tensor: a per-tensor loop of small kernels is bound by the
    kernel launches there. A group that needs the scaled solve (never seen in training) sends
    the call to the per-tensor way, which has it."""
    step_tol = 0.1 * math.sqrt(_default_rtol(tau.dtype) if rtol is None else rtol)
    if tau.device.type not in PER_TENSOR_DEVICES:
        zero = _flat_prox_(sl, tau, precond, step_tol, max_iter, norms)
        if zero is not None:
            return zero
    zero = torch.zeros(sl.num_groups, dtype=torch.bool, device=tau.device)
    for k, t in enumerate(sl.tensors):
        if t.numel() == 0:  # groups of no weights: their norm, 0, is below any tau > 0
            zero[sl.ids[k]] = tau[sl.ids[k]] > 0
    chunks = _chunks(_pieces(sl, CHUNK_ELEMENTS), CHUNK_ELEMENTS)
    largest = max((piece.size for chunk in chunks for piece in chunk), default=0)
    metric = max((sum(piece.size for piece in chunk) for chunk in chunks), default=0)
    space = _Workspace(tau, largest, metric if isinstance(precond, AdamMetric) else 0)
    for chunk in chunks:
        space.next_chunk()
        solvers = [_piece_solver(sl, piece, tau, precond, norms, space) for piece in chunk]
        _fetch_flags(solvers)
        for solver in solvers:
            solver.prepare_newton(rtol, max_iter)
        _newton(solvers, step_tol, max_iter)
        for (k, first, last, _), solver in zip(chunk, solvers):
            zero[sl.ids[k][first:last]] = solver.finish(None if norms is None else norms[k][first:last])
            t = sl.tensors[k]
            if not t.is_contiguous():  # the solver worked on a contiguous copy
                t.copy_(solver.x.view(t.shape))
    return zero


#: Devices where the separable weighted prox goes one tensor at a time (see
#: :func:`_separable_weighted_prox_`); on the others it works on all tensors at once.
PER_TENSOR_DEVICES = ("cpu",)

#: Weights per chunk of the per-tensor prox (x, d and two temporaries of this many float32
#: numbers, 16 MiB, mostly stay in cache); larger tensors go in pieces of whole groups.
CHUNK_ELEMENTS = 1 << 20


class _Piece(NamedTuple):
    """Groups [first, last) of tensor ``k``, ``size`` weights."""

    k: int
    first: int
    last: int
    size: int


def _pieces(sl: GroupSlices, budget: int) -> list[_Piece]:
    """The groups of every nonempty tensor, in pieces of at most about ``budget`` weights (a
    tensor that is not contiguous, or whose groups are larger, in one piece)."""
    pieces = []
    for k, t in enumerate(sl.tensors):
        if t.numel() == 0:
            continue
        groups = t.shape[sl.dims[k]]
        step = max(1, budget * groups // t.numel()) if t.is_contiguous() else groups
        for first in range(0, groups, step):
            last = min(first + step, groups)
            pieces.append(_Piece(k, first, last, t.numel() // groups * (last - first)))
    return pieces


def _chunks(pieces: list[_Piece], budget: int) -> list[list[_Piece]]:
    """Consecutive pieces grouped into chunks of at most ``budget`` weights (a larger piece
    makes a chunk of its own)."""
    chunks: list[list[_Piece]] = []
    total = math.inf
    for piece in pieces:
        if total + piece.size > budget:
            chunks.append([])
            total = 0
        chunks[-1].append(piece)
        total += piece.size
    return chunks


def _piece_solver(
    sl: GroupSlices,
    piece: _Piece,
    tau: torch.Tensor,
    precond: Precond,
    norms: list[torch.Tensor] | None,
    space: _Workspace,
) -> _Solver:
    """The solver of a piece of a tensor's groups: the tensor as (A, R * B) (A: product of the
    sizes before the group dimension, R groups, B: product of the sizes after) and the piece
    its columns [first B, last B), a view when the tensor is contiguous. For a conv weight
    (O, I, kh, kw) with input-channel groups that is (O, I kh kw): no transposed copy."""
    k, first, last, size = piece
    t, dim = sl.tensors[k], sl.dims[k]
    width = math.prod(t.shape[dim + 1 :])
    columns = slice(first * width, last * width)
    x = t.contiguous().view(-1, t.shape[dim] * width)[:, columns]
    if isinstance(precond, AdamMetric):
        v = precond.moments[k].reshape(x.shape[0], -1)[:, columns]
        d = _adam_d(v, precond.corrections[k], precond.eps, out=space.metric(size).view(x.shape))
    else:
        d = precond[k].reshape(x.shape[0], -1)[:, columns]  # the caller's scratch space (or a copy)
    start = None if norms is None else norms[k][first:last]
    return _Solver(x, d, tau[sl.ids[k][first:last]], start, _Columns(width, x.shape[0]), space)


def _flat_prox_(
    sl: GroupSlices,
    tau: torch.Tensor,
    precond: Precond,
    step_tol: float,
    max_iter: int,
    norms: list[torch.Tensor] | None,
) -> torch.Tensor | None:
    """The prox of all tensors at once, on their concatenation reordered group by group (so that
    per-group sums are segment reductions, several times faster on a GPU than atomic index
    additions); None (and nothing changed) when a group needs the scaled solve."""
    flat = sl.flat

    def grouped(tensors: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat([t.reshape(-1) for t in tensors])[flat.order]

    x = grouped(sl.tensors).view(1, -1)
    if isinstance(precond, AdamMetric):
        v = grouped(precond.moments)
        corrections = set(precond.corrections)
        if len(corrections) == 1:
            d = _adam_d(v, corrections.pop(), precond.eps)
        else:
            per_tensor = torch.tensor(precond.corrections, dtype=v.dtype, device=v.device)
            d = _adam_d(v, flat.per_element(per_tensor)[flat.order], precond.eps)
    else:
        d = grouped(precond)
    start = None
    if norms is not None:
        start = torch.zeros_like(tau).index_copy_(0, flat.ids, torch.cat(norms).to(tau.dtype))
    space = _Workspace(tau, x.numel(), 0)
    solver = _Solver(x, d.view(1, -1), tau, start, _Segments(flat.group_sizes, flat.index[flat.order]), space)
    _fetch_flags([solver])
    if solver.flags[0]:
        return None
    solver.prepare_newton(None, max_iter)
    _newton([solver], step_tol, max_iter)
    result = torch.zeros_like(tau)
    zero = solver.finish(result) & flat.covered
    x = torch.empty_like(x.view(-1)).index_copy_(0, flat.order, x.view(-1))  # back in tensor order
    torch._foreach_copy_(sl.tensors, [y.view(t.shape) for y, t in zip(x.split(flat.numels), sl.tensors)])
    if norms is not None:
        torch._foreach_copy_(norms, list(result[flat.ids].split(flat.rows)))
    return zero


class _Workspace:
    """Buffers reused by all tensors of one prox call: two temporaries the size of the largest
    piece and room for one chunk's metric d. A fresh large CPU tensor costs page faults on every
    allocation, as much time as the arithmetic on it (measured: the Newton sums of a 2.4M-weight
    tensor took 11 ms with fresh temporaries, 3 ms with reused ones)."""

    def __init__(self, like: torch.Tensor, largest: int, metric: int) -> None:
        self._u, self._w, self._d = (like.new_empty(n) for n in (largest, largest, metric))
        self._used = 0

    def next_chunk(self) -> None:
        self._used = 0

    def metric(self, n: int) -> torch.Tensor:
        """Room for ``n`` numbers of metric, kept until the next chunk."""
        self._used += n
        return self._d[self._used - n : self._used]

    def temporaries(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Two temporaries shaped like ``like`` (overwritten by the next caller)."""
        n = like.numel()
        return self._u[:n].view(like.shape), self._w[:n].view(like.shape)


class _Columns:
    """Groups of a (A, R * width) matrix: group r is the block of columns [r width, (r + 1) width).
    Per-group reductions run along contiguous rows (vectorised); per-group values broadcast over
    the rows."""

    def __init__(self, width: int, rows: int) -> None:
        self.width, self.sizes = width, rows * width  # elements per group

    def reduce(self, m: torch.Tensor, op: str) -> torch.Tensor:
        return block_reduce(m, self.width, op)

    def spread(self, per_group: torch.Tensor) -> torch.Tensor:
        return per_group if self.width == 1 else per_group.repeat_interleave(self.width)

    def rows(self, m: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Groups ``index`` of ``m`` as rows of a new (len(index), group size) matrix."""
        return m.view(m.shape[0], -1, self.width).index_select(1, index).transpose(0, 1).reshape(len(index), -1)

    def put_rows(self, m: torch.Tensor, index: torch.Tensor, rows: torch.Tensor) -> None:
        """Write the rows of :meth:`rows` back into ``m``."""
        m.view(m.shape[0], -1, self.width).index_copy_(1, index, rows.view(len(index), -1, self.width).transpose(0, 1))


class _Segments:
    """Groups of a (1, N) row as consecutive segments: ``sizes[g]`` elements of group g, the
    group of each element in ``index``."""

    _OPS = {"sum": "sum", "amax": "max", "amin": "min"}

    def __init__(self, sizes: torch.Tensor, index: torch.Tensor) -> None:
        self.sizes, self.index = sizes, index

    def reduce(self, m: torch.Tensor, op: str) -> torch.Tensor:
        return torch.segment_reduce(m.view(-1), self._OPS[op], lengths=self.sizes)

    def spread(self, per_group: torch.Tensor) -> torch.Tensor:
        return per_group[self.index]


class _Solver:
    """The weighted prox of the groups of a matrix ``x`` (updated in place) in metric ``d``,
    groups laid out as ``layout`` (:class:`_Columns` or :class:`_Segments`) says; per-group values
    (``tau``, warm start ``start``) are indexed by the layout's groups."""

    def __init__(
        self,
        x: torch.Tensor,
        d: torch.Tensor,
        tau: torch.Tensor,
        start: torch.Tensor | None,
        layout: _Columns | _Segments,
        space: _Workspace,
    ) -> None:
        self.x, self.d, self.tau, self.start, self.layout, self.space = x, d, tau, start, layout, space
        fi = torch.finfo(x.dtype)
        sumsq, dmax, dmin = _zero_test(x, d, layout, space.temporaries(x)[1])
        weighted = sumsq.sqrt()
        # The direct solve is safe where ||d x||^2 neither under- nor overflows, and (u = 1/(theta + tau/d)
        # <= min(1/theta, d/tau)) the Newton terms (x u)^2 <= (||d x|| / tau)^2 and u <= 1/lower stay
        # far below the largest float; theta and tau / d_i <= ||d x|| / min d stay finite in
        # theta + tau / d_i. tau <= 0 (identity) and clear zeros are always safe. Unsafe groups
        # (in practice none) are solved on scaled copies by _scaled_rows_prox_.
        limit = math.sqrt(fi.max) / 16
        solve = (weighted > tau) & (tau > 0)
        self.lower = (weighted - tau) / dmax
        self.upper = (weighted - tau) / dmin
        safe = sumsq.isfinite() & ((sumsq >= fi.tiny / fi.eps) | _clear_zero(sumsq, tau, layout.sizes))
        safe &= ~solve | ((weighted <= limit * tau) & (self.lower * limit >= 1.0) & (weighted <= limit * dmin))
        self.keep = tau <= 0  # no penalty: the prox is the identity, whatever d
        self.risky = ~(safe | self.keep)
        self.zero = (weighted <= tau) & (tau > 0) & ~self.risky
        self.active = solve & ~self.risky
        self.theta = _row_start(start, self.lower, self.upper)
        self.flags: list[bool] = []  # any unsafe, any tau <= 0, any zero, all solved: _fetch_flags
        self.risky_solution: tuple[torch.Tensor, ...] = ()  # index, rows, zero, norms
        self.steps = 0  # Newton steps taken

    def prepare_newton(self, rtol: float | None, max_iter: int) -> None:
        """Solve the unsafe groups (if any) by _scaled_rows_prox_ on copies of their rows, then
        turn d into c = tau / d in place (d = 0 gives inf), the only form the Newton steps and
        the shrinking need."""
        if self.flags[0]:
            index = self.risky.nonzero().squeeze(1)
            rows, d_rows = self.layout.rows(self.x, index), self.layout.rows(self.d, index)
            start = None if self.start is None else self.start.index_select(0, index)
            zero, result = _scaled_rows_prox_(rows, d_rows, self.tau.index_select(0, index), rtol, max_iter, start)
            self.risky_solution = (index, rows, zero, result)
        torch.div(self.layout.spread(self.tau), self.d, out=self.d)

    def newton_step(self, step_tol: float) -> None:
        """One Newton step of every unconverged group (the others keep their theta)."""
        s, t = _newton_sums(self.x, self.d, self.theta, self.layout, *self.space.temporaries(self.x))
        new = _newton_update(self.theta, s, t, self.lower, self.upper)
        done = _settled(self.theta, new, step_tol, self.steps == 0)
        self.theta = torch.where(self.active, new, self.theta)
        self.active &= ~done
        self.steps += 1

    def finish(self, norms: torch.Tensor | None) -> torch.Tensor:
        """Write the prox into x (and the group norms into ``norms``); returns the zero-group mask."""
        any_risky, any_keep, any_zero, all_solved = self.flags
        result = torch.where(self.zero | self.keep, torch.zeros_like(self.theta), self.theta)
        if any_keep:
            norm = self.layout.reduce(self.x.square(), "sum").sqrt_()
            result = torch.where(self.keep, norm, result)
        u, _ = self.space.temporaries(self.x)
        if all_solved:
            _shrink_(self.x, self.d, self.theta, self.layout, u)
        else:  # unsafe groups are written below; keep them as they are until then
            keep = self.keep | self.risky
            _shrink_(self.x, self.d, self.theta, self.layout, u, keep, self.zero if any_zero else None)
        zero = self.zero
        if any_risky:
            index, rows, zero_r, result_r = self.risky_solution
            self.layout.put_rows(self.x, index, rows)
            zero = zero.index_fill(0, index[zero_r], True)
            result = result.index_copy(0, index, result_r)
        if norms is not None:
            norms.copy_(result)
        return zero


def _fetch_flags(solvers: list[_Solver]) -> None:
    """Every solver's case flags, with one host sync for all of them."""
    flags = torch.stack(
        [torch.stack([s.risky.any(), s.keep.any(), s.zero.any(), s.active.all()]) for s in solvers]
    ).tolist()
    for s, f in zip(solvers, flags):
        s.flags = f


def _newton(solvers: list[_Solver], step_tol: float, max_iter: int) -> None:
    """Newton steps until every group of every solver has converged (one host sync per step)."""
    live = solvers
    for _ in range(max_iter):
        busy = torch.stack([s.active.any() for s in live]).tolist()
        live = [s for s, unconverged in zip(live, busy) if unconverged]
        if not live:
            return
        for s in live:
            s.newton_step(step_tol)


# The passes over the weights. Large temporaries go into the reused buffers ``u`` and ``w``
# (shaped like x).


def _adam_d(
    v: torch.Tensor, correction: float | torch.Tensor, eps: float, out: torch.Tensor | None = None
) -> torch.Tensor:
    """Adam's metric sqrt(v / correction) + eps (see :class:`AdamMetric`)."""
    return torch.div(v, correction, out=out).sqrt_().add_(eps)


def _zero_test(x: torch.Tensor, d: torch.Tensor, layout, w: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Per group ||d x||^2, max d and min d."""
    sumsq = layout.reduce(torch.mul(d, x, out=w).square_(), "sum")
    return sumsq, layout.reduce(d, "amax"), layout.reduce(d, "amin")


def _newton_sums(
    x: torch.Tensor, c: torch.Tensor, theta: torch.Tensor, layout, u: torch.Tensor, w: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per group S = sum (x u)^2 and T = sum (x u)^2 u with u = 1 / (theta + c), c = tau / d:
    the secular function and, up to the factor -2, its derivative at theta. (x u)^2 is formed,
    not u^2 x^2: u^2 alone can overflow."""
    torch.add(c, layout.spread(theta), out=u).reciprocal_()
    torch.mul(u, x, out=w).square_()
    return layout.reduce(w, "sum"), layout.reduce(w.mul_(u), "sum")


def _shrink_(
    x: torch.Tensor,
    c: torch.Tensor,
    theta: torch.Tensor,
    layout,
    u: torch.Tensor,
    keep: torch.Tensor | None = None,
    zero: torch.Tensor | None = None,
) -> None:
    """x <- x / (1 + c / theta) = x theta / (theta + tau / d), the prox of a solved group of norm
    theta; groups in ``keep`` stay as they are and groups in ``zero`` become +0 (None: no such
    groups)."""
    torch.addcmul(c.new_ones(()), c, layout.spread(theta.reciprocal()), out=u)
    if keep is not None:
        u.masked_fill_(layout.spread(keep), 1.0)
    x.div_(u)
    if zero is not None:
        x.masked_fill_(layout.spread(zero), 0.0)


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
    theta = _row_start(None if start is None else start[active], lower, upper, scale)
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
    lower: torch.Tensor,
    upper: torch.Tensor,
    scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """Newton's first iterate per group: the warm start (divided by ``scale`` for a scaled solve)
    clamped into [lower, upper]; an overflowed (inf) or missing one falls back to ``lower``."""
    if start is None:
        return lower
    theta = start.to(lower.dtype)
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
    for step in range(max_iter):
        u = (c + theta.unsqueeze(1)).reciprocal_()
        w = u.mul(x).square_()
        s = w.sum(1)
        t = w.mul_(u).sum(1)
        new_theta = _newton_update(theta, s, t, lower, upper)
        converged = bool(_settled(theta, new_theta, step_tol, step == 0).all())
        theta = new_theta
        if converged:
            break
    return theta


def _settled(theta: torch.Tensor, new: torch.Tensor, step_tol: float, first: bool) -> torch.Tensor:
    """Groups whose Newton step from ``theta`` to ``new`` ends their iteration: a relative step
    below ``step_tol`` or, after the first step, one that does not climb. From the second step
    on the iterates climb (see the module docstring), so a step that does not is rounding: in
    float32 a group whose theta lies far below its tau / d_i (S nearly flat) cannot place its
    root closer than about 1e-3 relative, and Newton would wander at that level until
    ``max_iter``."""
    small = (new - theta).abs() <= step_tol * new
    return small if first else small | (new <= theta)


def _newton_update(
    theta: torch.Tensor, s: torch.Tensor, t: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor
) -> torch.Tensor:
    """Newton's step on h = S^(-1/2) - 1 from ``theta`` (S = ``s``, -S'/2 = ``t``), kept in
    [lower, upper]: h / h' = (S^(3/2) - S) / T."""
    return torch.minimum(torch.maximum(theta + (s * s.sqrt() - s) / t.clamp_min(_tiny(theta)), lower), upper)


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
    d = [torch.ones_like(t) for t in sl.tensors] if precond is None else _metric_tensors(precond)
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
