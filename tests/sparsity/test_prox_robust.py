"""Prox operators on extreme but finite inputs: never NaN/inf, exact zeros where due, and agreement
with float64 references.

Every case is one group (a row); all the rows of one dtype go through one prox call, so extreme
groups also sit next to ordinary ones. Groups have entries of magnitude 0, 1e-40 (float32
subnormal), 1e-30, 1e-20, 1, 1e30, 3e38 (near float32's max) or a mix of these; metrics d of 0,
1e-40, 1, 1e30 or a mix; thresholds tau of 0, 1e-45, a fraction or a multiple of the zero
threshold ||d x||, or 3e38. Inputs are rounded to the tested dtype first (the reference starts
from the rounded values; rows that round to inf are dropped), and the references are computed
in float64 from the scaled problem, prox(x; d, tau) = m prox(x / m; d / s, tau / (m s)) with
m = max|x|, s = max d, so that they cannot under- or overflow themselves.

Tolerance, max |z - ref| / max |x| per group: float64 1e-10, float32 2e-5 (the solver stops at
about 4 float32 epsilons; the rest is the rounding of x / m and of the result), float16 4e-3 and
bfloat16 3e-2 (the prox runs in float32; this is about 2-4 epsilons of the result's rounding).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy.optimize import brentq

from sparsemtl.sparsity import GroupSlices, block_soft_threshold, group_lasso_prox_, group_mcp_prox

N = 4  # group length
MAGNITUDES = [0.0, 1e-40, 1e-30, 1e-20, 1.0, 1e30, 3e38]
MIXED_X = [3e38, -1e-40, 1.0, -1e-20]
METRICS = [0.0, 1e-40, 1.0, 1e30]
MIXED_D = [1e30, 1e-40, 1.0, 0.0]
TOL = {torch.float64: 1e-10, torch.float32: 2e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}
DTYPES = list(TOL)
KAPPA = 0.25  # group MCP concavity
# results are rounded to the dtype: allow for its smallest subnormal step
SUBNORMAL = {t: torch.finfo(t).smallest_normal * torch.finfo(t).eps for t in DTYPES}


def _x_rows() -> list[np.ndarray]:
    signs = np.array([1.0, -1.0, 0.7, -0.9])
    return [a * signs for a in MAGNITUDES] + [np.array(MIXED_X)]


def _d_rows(weighted: bool) -> list[np.ndarray]:
    if not weighted:
        return [np.ones(N)]
    factors = np.array([1.0, 0.6, 0.8, 0.9])
    return [v * factors for v in METRICS] + [np.array(MIXED_D)]


def _scaled(x: np.ndarray, d: np.ndarray, tau: float) -> tuple[float, np.ndarray, np.ndarray, float, float]:
    m = np.abs(x).max()
    s = d.max()
    m1, s1 = (m if m > 0 else 1.0), (s if s > 0 else 1.0)
    return m1, x / m1, d / s1, tau / m1 / s1, np.linalg.norm(d / s1 * (x / m1))


def reference_weighted(x: np.ndarray, d: np.ndarray, tau: float) -> np.ndarray:
    """argmin 1/2 sum d (z - x)^2 + tau ||z|| in float64, solved on the scaled problem."""
    if tau <= 0:
        return x.copy()
    m, xs, ds, ts, norm = _scaled(x, d, tau)
    if norm <= ts:
        return np.zeros_like(x)
    f = lambda th: np.sum((ds * xs) ** 2 / (th * ds + ts) ** 2) - 1.0  # noqa: E731
    hi = 1.0
    while f(hi) > 0:
        hi *= 2.0
    theta = brentq(f, 0.0, hi, xtol=1e-300, rtol=1e-15, maxiter=1000)
    return m * (theta * ds / (theta * ds + ts) * xs)


def reference_mcp(x: np.ndarray, d: np.ndarray, tau: float, concavity: float) -> np.ndarray:
    """Group MCP prox (concavity capped at half the smallest d, as documented) in float64:
    scaled by m = max|x| (tau -> tau / m, the concavity is scale-free) and by s = max d (d, tau
    and the concavity all divided by s)."""
    if tau <= 0:
        return x.copy()
    kappa = min(concavity, 0.5 * d.min())
    m, xs, ds, ts, norm = _scaled(x, d, tau)
    if norm <= ts:
        return np.zeros_like(x)
    s = d.max() if d.max() > 0 else 1.0
    ks = kappa / s
    if ks <= 0:  # no concavity left: the group lasso
        return reference_weighted(x, d, tau)
    knee = ts / ks
    y = ds * xs / (ds - ks)  # ks <= min(ds) / 2, so ds - ks > 0
    shrunk = reference_weighted(y, ds - ks, ts)
    if np.linalg.norm(shrunk) > knee:
        return x.copy()
    return m * shrunk


def _cases(weighted: bool, dtype: torch.dtype):
    """(x, d, tau) rows, rounded to ``dtype``, with tau relative to each row's zero threshold."""
    rows = []
    for x, d in itertools.product(_x_rows(), _d_rows(weighted)):
        x = torch.tensor(x).to(dtype).double().numpy()
        d = torch.tensor(d).to(dtype).double().numpy()
        if not (np.isfinite(x).all() and np.isfinite(d).all()):
            continue
        m, xs, ds, _, norm = _scaled(x, d, 1.0)
        zero_at = m * (d.max() if d.max() > 0 else 1.0) * norm  # ||d x||, computed without overflow
        for tau in [0.0, 1e-45, 0.5 * zero_at, 0.999 * zero_at, 1.001 * zero_at, 2.0 * zero_at, 1.0, 3e38]:
            t = float(torch.tensor(tau, dtype=torch.float64).to(dtype))
            if np.isfinite(t):
                rows.append((x, d, t))
    return rows


def _check(z: torch.Tensor, cases, reference, dtype: torch.dtype) -> None:
    assert z.dtype == dtype
    assert torch.isfinite(z).all(), [cases[i] for i in (~torch.isfinite(z)).any(1).nonzero()[:, 0].tolist()]
    zd = z.double().numpy()
    failures = []
    for g, (x, d, tau) in enumerate(cases):
        ref = reference(x, d, tau)
        if not ref.any():
            ok = not zd[g].any()  # exact zero
        else:
            ok = np.abs(zd[g] - ref).max() <= TOL[dtype] * np.abs(x).max() + SUBNORMAL[dtype]
        if not ok:
            failures.append((x.tolist(), d.tolist(), tau, zd[g].tolist(), ref.tolist()))
    assert not failures, f"{len(failures)} of {len(cases)} groups wrong, e.g. {failures[:3]}"


def _stack(cases, dtype):
    x = torch.tensor(np.array([c[0] for c in cases])).to(dtype)
    d = torch.tensor(np.array([c[1] for c in cases])).to(dtype)
    tau = torch.tensor([c[2] for c in cases], dtype=torch.float64).to(dtype)
    return x, d, tau


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_block_soft_threshold_on_extreme_groups(dtype):
    cases = _cases(False, dtype)
    x, _, tau = _stack(cases, dtype)
    _check(block_soft_threshold(x, tau), cases, lambda x, d, t: reference_weighted(x, np.ones_like(x), t), dtype)


@pytest.mark.parametrize("warm", [None, 0.0, 1.0, 3.0])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_weighted_prox_on_extreme_groups(dtype, warm):
    """Rows path (every group in one tensor), cold and warm started from multiples of the true
    group norms (computed in float64, rounded to the dtype: huge ones may round to inf)."""
    cases = _cases(True, dtype)
    x, d, tau = _stack(cases, dtype)
    z = x.clone()
    norms = None
    if warm is not None:
        ref_norms = [warm * np.linalg.norm(reference_weighted(*c) / max(np.abs(c[0]).max(), 1e-300)) for c in cases]
        scale = [max(np.abs(c[0]).max(), 1e-300) for c in cases]
        norms = [(torch.tensor(ref_norms, dtype=torch.float64) * torch.tensor(scale, dtype=torch.float64)).to(dtype)]
    group_lasso_prox_(GroupSlices([z], [0], [torch.arange(len(cases))], len(cases)), tau, [d.clone()], norms=norms)
    _check(z, cases, reference_weighted, dtype)
    if norms is not None:
        assert not torch.isnan(norms[0]).any()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_weighted_prox_of_groups_spread_over_two_tensors_on_extreme_groups(dtype):
    """General path: each group owns two columns of one tensor and two of another."""
    cases = _cases(True, dtype)
    x, d, tau = _stack(cases, dtype)
    a, b = x[:, :2].clone(), x[:, 2:].clone()
    ids = torch.arange(len(cases))
    group_lasso_prox_(GroupSlices([a, b], [0, 0], [ids, ids], len(cases)), tau, [d[:, :2].clone(), d[:, 2:].clone()])
    _check(torch.cat([a, b], 1), cases, reference_weighted, dtype)


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_group_mcp_on_extreme_groups(dtype, weighted):
    cases = _cases(weighted, dtype)
    x, d, tau = _stack(cases, dtype)
    z = group_mcp_prox(x, tau, KAPPA, d if weighted else None)
    _check(z, cases, lambda x, d, t: reference_mcp(x, d, t, KAPPA), dtype)


def test_weighted_prox_of_underflowing_group_is_not_nan():
    """The reported bug: every entry 1e-20 in float32, so the squared norm underflows to 0."""
    x = torch.full((3, 64), 1e-20)
    d = torch.full((3, 64), 1e-3)
    tau = torch.tensor([0.0, 1e-30, 1.0])
    z = x.clone()
    norms = [torch.zeros(3)]
    group_lasso_prox_(GroupSlices([z], [0], [torch.arange(3)], 3), tau, [d.clone()], norms=norms)
    assert torch.isfinite(z).all() and torch.isfinite(norms[0]).all()
    assert torch.equal(z[0], x[0])  # tau = 0: the identity
    assert torch.equal(z[2], torch.zeros(64))
    ref = reference_weighted(x[1].double().numpy(), d[1].double().numpy(), 1e-30)
    assert np.allclose(z[1].double().numpy(), ref, rtol=1e-5, atol=0)
