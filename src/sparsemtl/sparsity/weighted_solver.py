"""The weighted group-lasso prox when every group lies inside one tensor (input- or output-channel
groups of a layer): the case training takes, solved with as few passes over the weights as possible.

The problem, the Newton iteration and its stopping rule are described in :mod:`.prox`. Here it is
laid out for speed: on CPU one tensor at a time, as views without copies, in cache-sized chunks
(:func:`separable_weighted_prox_`); on other devices on all tensors concatenated, so that each
pass is one kernel. About 20 elementwise passes over the weights in all (:class:`_Solver`), most
groups converging in a single Newton step from the warm start. Also here: Adam's metric as the
prox forms it (:class:`AdamMetric`) and the guards against under- and overflow both paths share.
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


def metric_tensors(precond: Precond) -> list[torch.Tensor]:
    """``precond`` as a list of tensors (formed now for an :class:`AdamMetric`)."""
    return precond.tensors() if isinstance(precond, AdamMetric) else precond


def default_rtol(dtype: torch.dtype) -> float:
    return 4.0 * torch.finfo(dtype).eps


def smallest_normal(t: torch.Tensor) -> float:
    return torch.finfo(t.dtype).tiny


def clear_zero(sumsq: torch.Tensor, tau: torch.Tensor, size: int) -> torch.Tensor:
    """Groups certainly set to zero even if terms of their sum of squares ``sumsq`` underflowed
    (each by less than the smallest normal number; ``size`` bounds the group size)."""
    return (sumsq + size * torch.finfo(sumsq.dtype).tiny).sqrt() <= tau


def safe_max(m: torch.Tensor) -> torch.Tensor:
    """Per-group scale: the group's largest entry, kept >= the smallest normal number so that
    all-zero groups divide to 0 (not NaN) and subnormal groups are still scaled up to O(1)."""
    return m.clamp_min(smallest_normal(m))


def scaled_threshold(tau: torch.Tensor, *scales: torch.Tensor) -> torch.Tensor:
    """tau / prod(scales), divided one at a time so that an overflow can only go to +inf (which
    then correctly reads "zero group"), never to a NaN."""
    for sc in scales:
        tau = tau / sc
    return tau


def separable_weighted_prox_(
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
    step_tol = 0.1 * math.sqrt(default_rtol(tau.dtype) if rtol is None else rtol)
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
#: :func:`separable_weighted_prox_`); on the others it works on all tensors at once.
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


class GroupTest(NamedTuple):
    """Per group, from ||d x||^2 and the extrema of d: which groups are solved, zeroed, kept as
    they are (tau <= 0) or need the scaled solve, and the bounds of the root."""

    solve: torch.Tensor  # ||d x|| > tau > 0
    zero: torch.Tensor  # ||d x|| <= tau, tau > 0 (and the direct test is safe)
    keep: torch.Tensor  # tau <= 0: no penalty, the prox is the identity whatever d
    risky: torch.Tensor  # the direct solve is not safe: scaled_rows_prox_ solves these
    lower: torch.Tensor  # (||d x|| - tau) / max d
    upper: torch.Tensor  # (||d x|| - tau) / min d


def group_test(
    sumsq: torch.Tensor, dmax: torch.Tensor, dmin: torch.Tensor, tau: torch.Tensor, size: int | torch.Tensor
) -> GroupTest:
    """The zero test, the bounds and the safety checks of every group (``size``: its number of
    weights, or a bound on it).

    The direct solve is safe where ||d x||^2 neither under- nor overflows, and (u = 1/(theta + tau/d)
    <= min(1/theta, d/tau)) the Newton terms (x u)^2 <= (||d x|| / tau)^2 and u <= 1/lower stay
    far below the largest float; theta and tau / d_i <= ||d x|| / min d stay finite in
    theta + tau / d_i. tau <= 0 (identity) and clear zeros are always safe. Unsafe groups (in
    practice none) are solved on scaled copies by scaled_rows_prox_."""
    fi = torch.finfo(sumsq.dtype)
    weighted = sumsq.sqrt()
    limit = math.sqrt(fi.max) / 16
    solve = (weighted > tau) & (tau > 0)
    lower = (weighted - tau) / dmax
    upper = (weighted - tau) / dmin
    safe = sumsq.isfinite() & ((sumsq >= fi.tiny / fi.eps) | clear_zero(sumsq, tau, size))
    safe &= ~solve | ((weighted <= limit * tau) & (lower * limit >= 1.0) & (weighted <= limit * dmin))
    keep = tau <= 0
    risky = ~(safe | keep)
    zero = (weighted <= tau) & (tau > 0) & ~risky
    return GroupTest(solve, zero, keep, risky, lower, upper)


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
        sumsq, dmax, dmin = _zero_test(x, d, layout, space.temporaries(x)[1])
        test = group_test(sumsq, dmax, dmin, tau, layout.sizes)
        self.lower, self.upper, self.keep, self.risky = test.lower, test.upper, test.keep, test.risky
        self.zero = test.zero
        self.active = test.solve & ~self.risky
        self.theta = row_start(start, self.lower, self.upper)
        self.flags: list[bool] = []  # any unsafe, any tau <= 0, any zero, all solved: _fetch_flags
        self.risky_solution: tuple[torch.Tensor, ...] = ()  # index, rows, zero, norms
        self.steps = 0  # Newton steps taken

    def prepare_newton(self, rtol: float | None, max_iter: int) -> None:
        """Solve the unsafe groups (if any) by scaled_rows_prox_ on copies of their rows, then
        turn d into c = tau / d in place (d = 0 gives inf), the only form the Newton steps and
        the shrinking need."""
        if self.flags[0]:
            index = self.risky.nonzero().squeeze(1)
            rows, d_rows = self.layout.rows(self.x, index), self.layout.rows(self.d, index)
            start = None if self.start is None else self.start.index_select(0, index)
            zero, result = scaled_rows_prox_(rows, d_rows, self.tau.index_select(0, index), rtol, max_iter, start)
            self.risky_solution = (index, rows, zero, result)
        torch.div(self.layout.spread(self.tau), self.d, out=self.d)

    def newton_step(self, step_tol: float) -> None:
        """One Newton step of every unconverged group (the others keep their theta)."""
        s, t = _newton_sums(self.x, self.d, self.theta, self.layout, *self.space.temporaries(self.x))
        new = newton_update(self.theta, s, t, self.lower, self.upper)
        done = settled(self.theta, new, step_tol, self.steps == 0)
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


def scaled_rows_prox_(
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
    xmax = safe_max(torch.linalg.vector_norm(x, float("inf"), dim=1))
    thresh = scaled_threshold(tau, xmax)  # tau / max|x|
    xs = x / xmax.unsqueeze(1)
    p = d * xs
    pmax = safe_max(torch.linalg.vector_norm(p, float("inf"), dim=1))
    weighted = p.div_(pmax.unsqueeze(1)).square_().sum(1).sqrt_()  # ||d x|| / (max|x| max|d x|)
    keep = tau <= 0  # no penalty: the prox is the identity, whatever d
    zero = (weighted <= scaled_threshold(thresh, pmax)) & ~keep
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
    theta = row_start(None if start is None else start[active], lower, upper, scale)
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


def row_start(
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
    step_tol = 0.1 * math.sqrt(default_rtol(theta.dtype) if rtol is None else rtol)
    for step in range(max_iter):
        u = (c + theta.unsqueeze(1)).reciprocal_()
        w = u.mul(x).square_()
        s = w.sum(1)
        t = w.mul_(u).sum(1)
        new_theta = newton_update(theta, s, t, lower, upper)
        converged = bool(settled(theta, new_theta, step_tol, step == 0).all())
        theta = new_theta
        if converged:
            break
    return theta


def settled(theta: torch.Tensor, new: torch.Tensor, step_tol: float, first: bool) -> torch.Tensor:
    """Groups whose Newton step from ``theta`` to ``new`` ends their iteration: a relative step
    below ``step_tol`` or, after the first step, one that does not climb. From the second step
    on the iterates climb (see the module docstring), so a step that does not is rounding: in
    float32 a group whose theta lies far below its tau / d_i (S nearly flat) cannot place its
    root closer than about 1e-3 relative, and Newton would wander at that level until
    ``max_iter``."""
    small = (new - theta).abs() <= step_tol * new
    return small if first else small | (new <= theta)


def newton_update(
    theta: torch.Tensor, s: torch.Tensor, t: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor
) -> torch.Tensor:
    """Newton's step on h = S^(-1/2) - 1 from ``theta`` (S = ``s``, -S'/2 = ``t``), kept in
    [lower, upper]: h / h' = (S^(3/2) - S) / T."""
    return torch.minimum(torch.maximum(theta + (s * s.sqrt() - s) / t.clamp_min(smallest_normal(theta)), lower), upper)
