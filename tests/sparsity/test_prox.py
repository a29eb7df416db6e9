"""Prox operators against independent float64 references (closed form, scipy root finding)."""

import numpy as np
import pytest
import torch
from scipy.optimize import brentq

from sparsemtl.sparsity import (
    GroupSlices,
    block_soft_threshold,
    group_lasso_prox_,
    group_mcp_prox,
    weighted_group_lasso_prox,
)


@pytest.fixture(autouse=True)
def _float64():
    """References are float64; restore the default dtype so other test modules are unaffected."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def reference_weighted_prox(x: np.ndarray, d: np.ndarray, tau: float) -> np.ndarray:
    """Independent solve: zero test, then bracketed Brent root of the secular equation."""
    if np.linalg.norm(d * x) <= tau:
        return np.zeros_like(x)
    f = lambda th: np.sum((d * x) ** 2 / (th * d + tau) ** 2) - 1.0  # noqa: E731
    hi = 1.0
    while f(hi) > 0:
        hi *= 2.0
    theta = brentq(f, 0.0, hi, xtol=1e-300, rtol=1e-15, maxiter=1000)
    return theta * d / (theta * d + tau) * x


@pytest.mark.parametrize("n", [1, 3, 64, 2304, 4608])
def test_block_soft_threshold_matches_closed_form(n):
    gen = torch.Generator().manual_seed(n)
    x = torch.randn(20, n, generator=gen)
    tau = x.norm(dim=1) * torch.empty(20).uniform_(0.2, 1.8, generator=gen)
    z = block_soft_threshold(x, tau)
    norms = x.norm(dim=1, keepdim=True)
    expected = torch.clamp(1 - tau[:, None] / norms, min=0) * x
    assert torch.allclose(z, expected, rtol=1e-12, atol=0)
    zero_rows = norms[:, 0] <= tau
    assert zero_rows.any() and (~zero_rows).any()
    assert torch.all(z[zero_rows] == 0.0)
    assert torch.all(z[~zero_rows] != 0.0)


def test_weighted_prox_with_unit_preconditioner_is_block_soft_thresholding():
    x = torch.randn(30, 50)
    tau = torch.rand(30) * 10
    assert torch.allclose(
        weighted_group_lasso_prox(x, torch.ones_like(x), tau), block_soft_threshold(x, tau), rtol=1e-12, atol=1e-15
    )


@pytest.mark.parametrize("n", [1, 2, 9, 576, 4608])
@pytest.mark.parametrize("decades", [0, 3, 8])
def test_weighted_prox_matches_independent_reference(n, decades):
    gen = torch.Generator().manual_seed(1000 * n + decades)
    groups = 12
    x = torch.randn(groups, n, generator=gen)
    d = 10 ** (torch.rand(groups, n, generator=gen) * decades - decades / 2)
    tau = (d * x).norm(dim=1) * torch.empty(groups).uniform_(0.3, 1.5, generator=gen)
    z = weighted_group_lasso_prox(x, d, tau)
    for g in range(groups):
        ref = reference_weighted_prox(x[g].numpy(), d[g].numpy(), float(tau[g]))
        if not ref.any():
            assert torch.all(z[g] == 0.0), "zero condition holds: the group must be exactly zero"
        else:
            err = np.linalg.norm(z[g].numpy() - ref) / np.linalg.norm(ref)
            assert err <= 1e-6, err
            assert torch.all(z[g] != 0.0)


def test_weighted_prox_satisfies_kkt_conditions():
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(40, 100, generator=gen)
    d = 10 ** (torch.rand(40, 100, generator=gen) * 6 - 3)
    tau = (d * x).norm(dim=1) * torch.empty(40).uniform_(0.1, 1.2, generator=gen)
    z = weighted_group_lasso_prox(x, d, tau)
    for g in range(40):
        if torch.all(z[g] == 0):
            # 0 is optimal iff the subgradient condition ||d * x|| <= tau holds
            assert (d[g] * x[g]).norm() <= tau[g]
        else:
            grad = d[g] * (z[g] - x[g]) + tau[g] * z[g] / z[g].norm()
            assert grad.abs().max() <= 1e-9 * (d[g] * x[g]).abs().max()


def test_group_spread_over_two_tensors_equals_the_concatenated_group():
    """A group owning slices of two tensors (e.g. a filter and its BN entry) is one group."""
    a = torch.randn(6, 4, 3, 3)  # groups along dim 0 (output channels)
    b = torch.randn(6)  # a per-channel vector, same groups
    da, db = torch.rand_like(a) + 0.1, torch.rand_like(b) + 0.1
    tau = torch.rand(6) * 3
    za, zb = a.clone(), b.clone()
    ids = [torch.arange(6), torch.arange(6)]
    group_lasso_prox_(GroupSlices([za, zb], [0, 0], ids, 6), tau, [da, db])
    flat = torch.cat([a.reshape(6, -1), b[:, None]], dim=1)
    dflat = torch.cat([da.reshape(6, -1), db[:, None]], dim=1)
    expected = weighted_group_lasso_prox(flat, dflat, tau)
    assert torch.allclose(torch.cat([za.reshape(6, -1), zb[:, None]], 1), expected, rtol=1e-12, atol=1e-15)


def test_input_channel_slices_are_updated_in_place_without_copies():
    w = torch.randn(8, 5, 3, 3)
    expected = block_soft_threshold(w.transpose(0, 1).reshape(5, -1), 2.0).reshape(5, 8, 3, 3).transpose(0, 1)
    group_lasso_prox_(GroupSlices([w], [1], [torch.arange(5)], 5), torch.full((5,), 2.0))
    assert torch.allclose(w, expected, rtol=1e-12)


def reference_weighted_mcp(x: np.ndarray, d: np.ndarray, tau: float, kappa: float) -> np.ndarray:
    """Independent solve of argmin 1/2 sum d (z-x)^2 + MCP(||z||) (slope tau - kappa*r, knee
    tau/kappa), valid in the convex regime min(d) > kappa: below the knee the stationarity
    condition gives z_i = d_i x_i / (d_i - kappa + tau/r), with r = ||z|| found by a bracketed
    root; otherwise the penalty is flat and z = x."""
    if np.linalg.norm(d * x) <= tau:
        return np.zeros_like(x)
    knee = tau / kappa
    f = lambda r: np.linalg.norm(d * x / (d - kappa + tau / r)) - r  # noqa: E731
    if f(knee) < 0:  # the stationary radius lies below the knee
        lower = 0.5 * (np.linalg.norm(d * x) - tau) / d.max()  # f > 0 there
        r = brentq(f, lower, knee, xtol=1e-300, rtol=1e-15, maxiter=1000)
        return d * x / (d - kappa + tau / r)
    return x.copy()


def test_unweighted_group_mcp_is_firm_thresholding():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(300, 7, generator=gen) * torch.empty(300, 1).uniform_(0.1, 4.0, generator=gen)
    tau, kappa = 1.5, 0.25
    z = group_mcp_prox(x, tau, kappa)
    n = x.norm(dim=1, keepdim=True)
    firm = torch.where(n <= tau, torch.zeros_like(x), torch.where(n <= tau / kappa, (1 - tau / n) / (1 - kappa) * x, x))
    assert torch.allclose(z, firm, rtol=1e-12, atol=1e-15)
    assert (n[:, 0] <= tau).any() and (n[:, 0] > tau / kappa).any()
    assert torch.all(z[n[:, 0] <= tau] == 0.0)


@pytest.mark.parametrize("n", [1, 5, 300, 2304])
def test_weighted_group_mcp_matches_independent_reference(n):
    gen = torch.Generator().manual_seed(n)
    groups, kappa = 16, 0.3
    x = torch.randn(groups, n, generator=gen)
    d = 10 ** (torch.rand(groups, n, generator=gen) * 4)  # [1, 1e4]: convex regime, d > 2*kappa
    tau = (d * x).norm(dim=1) * 10 ** torch.empty(groups).uniform_(-3, 0.2, generator=gen)
    tau[:3] = (d[:3] * x[:3]).norm(dim=1) * 1.01  # zero band
    tau[3:6] = 0.5 * kappa * x[3:6].norm(dim=1)  # beyond the knee: identity band
    z = group_mcp_prox(x, tau, kappa, d)
    kinds = set()
    for g in range(groups):
        ref = reference_weighted_mcp(x[g].numpy(), d[g].numpy(), float(tau[g]), kappa)
        if not ref.any():
            assert torch.all(z[g] == 0.0)
            kinds.add("zero")
        else:
            err = np.linalg.norm(z[g].numpy() - ref) / np.linalg.norm(ref)
            assert err <= 1e-6, err
            kinds.add("identity" if np.array_equal(ref, x[g].numpy()) else "shrunk")
    assert kinds == {"zero", "shrunk", "identity"}


def test_group_mcp_caps_concavity_to_keep_the_step_convex():
    """Where d_i <= concavity the subproblem would be non-convex: the cap (half the group's
    smallest d) must still give a finite result with the same zero test as the group lasso."""
    x = torch.randn(10, 20)
    d = torch.rand(10, 20) * 0.1 + 1e-3
    tau = (d * x).norm(dim=1) * 0.8
    z = group_mcp_prox(x, tau, concavity=5.0, d=d)
    assert torch.isfinite(z).all()
    assert torch.all(z.abs().sum(1) > 0)
    assert torch.all(group_mcp_prox(x, (d * x).norm(dim=1) * 1.01, 5.0, d) == 0)


@pytest.mark.parametrize("start_scale", [0.0, 0.5, 1.0, 3.0])
def test_warm_start_from_below_or_above_gives_the_same_prox_and_returns_group_norms(start_scale):
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(25, 300, generator=gen)
    d = 10 ** (torch.rand(25, 300, generator=gen) * 6 - 3)
    tau = (d * x).norm(dim=1) * torch.empty(25).uniform_(0.2, 1.3, generator=gen)
    cold = weighted_group_lasso_prox(x, d, tau)
    z = x.clone()
    norms = [cold.norm(dim=1) * start_scale]
    group_lasso_prox_(GroupSlices([z], [0], [torch.arange(25)], 25), tau, [d.clone()], norms=norms)
    assert torch.allclose(z, cold, rtol=1e-10, atol=1e-14)
    assert torch.allclose(norms[0], z.norm(dim=1), rtol=1e-10)
