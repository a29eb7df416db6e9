"""ProxAdamW's two prox metrics against a float64 re-derivation of one optimiser step.

The re-derivation is written from the formulas (AdamW update with decoupled weight decay, then
per group the prox of tau_g * P(||z||) in metric d, tau_g = lr * lam * w_g), not from any code:
``corrected`` uses d = sqrt(v_t / (1 - beta2^t)) + eps, ``reference`` (the seed paper's)
d = sqrt(v_t) + eps. The Adam state is filled in directly so that late steps (t = 20,000) cost
nothing.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.optimize import brentq
from torch import nn

import sparsemtl
from sparsemtl.sparsity import ProxAdamW, build_grouping, regularized_param_groups

LR, BETAS, EPS, WD = 1e-4, (0.9, 0.999), 1e-6, 0.1  # the paper's optimiser
STEPS = (1, 4, 1000, 20000)
PATTERNS = ["conv1", "conv2"]
CONFIGS = Path(__file__).resolve().parents[2] / "configs"


class TinyNet(nn.Module):
    """conv (no bias) -> BN -> ReLU -> conv (bias) -> BN: output-channel groups span 3-4 tensors."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.conv2, self.bn2 = nn.Conv2d(16, 24, 3, padding=1), nn.BatchNorm2d(24)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))


def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return TinyNet()


class Case:
    """A tiny model, a grouping, and a realistic Adam state about to take step ``t``."""

    def __init__(self, grouping: str, t: int, seed: int = 0) -> None:
        self.net, self.t = tiny_net(), t
        self.structure = build_grouping(grouping, self.net, PATTERNS)
        gen = torch.Generator().manual_seed(seed)
        b1, b2 = BETAS
        with torch.no_grad():  # groups of very different sizes, so one lambda zeroes some of them
            scale = 10 ** (2 * torch.rand(self.structure.num_groups, generator=gen) - 1)
            sl = self.structure.slices()
            for k, p in enumerate(sl.tensors):
                p.mul_(sl.expand(k, scale))
        # Gradient RMS s per weight: a level per sparsity group in [1e-5, 1e-2] (so eps = 1e-6
        # matters early) times a factor in [0.5, 2]; stationary statistics
        # v_{t-1} ~ (1 - beta2^(t-1)) s^2 and m_{t-1} ~ (1 - beta1^(t-1)) * a fraction of s.
        level = 10 ** (-5 + 3 * torch.rand(self.structure.num_groups, generator=gen))
        rms = {p: 10 ** (-5 + 3 * torch.rand(p.shape, generator=gen)) for p in self.net.parameters()}
        sl = self.structure.slices([rms[p] for p in self.structure.params])
        for k, p in enumerate(self.structure.params):
            rms[p] = sl.expand(k, level) * 2 ** (2 * torch.rand(p.shape, generator=gen) - 1)
        self.grads, self.state = {}, {}
        for p, s in rms.items():
            self.grads[p] = s * torch.randn(p.shape, generator=gen)
            v = (1 - b2 ** (t - 1)) * s.square() * (0.5 + torch.rand(p.shape, generator=gen))
            m = (1 - b1 ** (t - 1)) * 0.3 * s * torch.randn(p.shape, generator=gen)
            self.state[p] = {"step": torch.tensor(float(t - 1)), "exp_avg": m, "exp_avg_sq": v}

    def optimizer(self, lam: float, metric: str, penalty: str = "group_lasso", gamma: float | None = None):
        groups = regularized_param_groups(self.net, self.structure, lam, penalty=penalty, gamma=gamma)
        opt = ProxAdamW(groups, lr=LR, betas=BETAS, eps=EPS, weight_decay=WD, prox_metric=metric)
        for p in self.net.parameters():
            p.grad = self.grads[p].clone()
            opt.state[p] = {k: v.clone() for k, v in self.state[p].items()}
        return opt

    def rows64(self, tensors: list[torch.Tensor]) -> list[np.ndarray]:
        return [t.detach().double().movedim(d, 0).reshape(t.shape[d], -1).numpy() for t, d in zip(tensors, self.dims)]

    @property
    def dims(self) -> list[int]:
        return list(self.structure.dims)

    def adamw64(self, metric: str) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Rows of (x after the AdamW update, prox metric d) of every regularised tensor, float64."""
        b1, b2 = BETAS
        t = self.t
        params = self.structure.params
        x0 = self.rows64(params)
        g = self.rows64([self.grads[p] for p in params])
        m0 = self.rows64([self.state[p]["exp_avg"] for p in params])
        v0 = self.rows64([self.state[p]["exp_avg_sq"] for p in params])
        xs, ds = [], []
        for x, gk, m, v in zip(x0, g, m0, v0):
            m = b1 * m + (1 - b1) * gk
            v = b2 * v + (1 - b2) * gk * gk
            x = x * (1 - LR * WD)
            x = x - LR / (1 - b1**t) * m / (np.sqrt(v / (1 - b2**t)) + EPS)
            xs.append(x)
            ds.append(np.sqrt(v) + EPS if metric == "reference" else np.sqrt(v / (1 - b2**t)) + EPS)
        return xs, ds

    def group_vectors(self, rows: list[np.ndarray]) -> list[np.ndarray]:
        """Per group, the concatenation of its rows (in tensor order)."""
        parts: list[list[np.ndarray]] = [[] for _ in range(self.structure.num_groups)]
        for r, ids in zip(rows, self.structure.ids):
            for i, gid in enumerate(ids.tolist()):
                parts[gid].append(r[i])
        return [np.concatenate(p) for p in parts]

    def weights(self) -> np.ndarray:
        return np.sqrt(self.structure.group_sizes().numpy())


def prox64(x: np.ndarray, d: np.ndarray, tau: float, kappa: float = 0.0) -> np.ndarray:
    """argmin_z 1/2 sum_i d_i (z_i - x_i)^2 + P(||z||), P with slope tau - kappa r, flat beyond the
    knee tau/kappa (kappa = 0: group lasso). Zero iff ||d x|| <= tau; otherwise stationarity gives
    z_i = d_i x_i / (d_i - kappa + tau/r) with r = ||z|| the root of
    h(r) = ||d x / (r (d - kappa) + tau)|| - 1 (decreasing, h(0) > 0); if that root is beyond the
    knee the penalty is flat there and z = x."""
    if np.linalg.norm(d * x) <= tau:
        return np.zeros_like(x)
    shifted = d - kappa
    h = lambda r: np.linalg.norm(d * x / (r * shifted + tau)) - 1.0  # noqa: E731
    knee = tau / kappa if kappa > 0 else np.inf
    hi = min(knee, np.linalg.norm(d * x) / shifted.min())  # h(hi) <= 0
    if h(hi) >= 0:  # root at or beyond the knee
        return x.copy()
    r = brentq(h, 0.0, hi, xtol=1e-300, rtol=4 * np.finfo(float).eps, maxiter=1000)
    return d * x / (shifted + tau / r)


def split_lambda(case: Case, metric: str, quantiles: tuple[float, float] = (0.25, 0.75)) -> float:
    """A lambda whose zero threshold falls in the widest gap between groups in the given
    quantile range of the zero-test ratio, so a fair share of the groups are zeroed and none is
    within float32 rounding of the threshold."""
    xs, ds = case.adamw64(metric)
    ratios = [np.linalg.norm(d * x) for x, d in zip(case.group_vectors(xs), case.group_vectors(ds))]
    ratios = np.sort(np.asarray(ratios) / (LR * case.weights()))
    n = len(ratios)
    k = max(range(int(quantiles[0] * n), int(quantiles[1] * n)), key=lambda i: ratios[i + 1] / ratios[i])
    assert ratios[k + 1] / ratios[k] > 1.01
    return float(np.sqrt(ratios[k] * ratios[k + 1]))


def mcp_gamma(case: Case, metric: str, lam: float) -> float:
    """A gamma whose concavity lr/gamma is twice what every surviving group that can reach the
    flat part needs (tau_g/||x_g||, below the cap of half the group's smallest d): those groups
    are left as they are, the others are shrunk, so all three branches of the MCP prox occur."""
    xs, ds = case.adamw64(metric)
    needed = []
    for x, d, w in zip(case.group_vectors(xs), case.group_vectors(ds), case.weights()):
        tau = LR * lam * w
        if np.linalg.norm(d * x) > tau and tau / np.linalg.norm(x) < 0.5 * d.min():
            needed.append(tau / np.linalg.norm(x))
    assert needed
    return float(LR / (2 * max(needed)))


def expected_step(case: Case, metric: str, lam: float, gamma: float | None) -> tuple[list[np.ndarray], set[str]]:
    """Float64 group vectors after one step, and which prox branches occurred."""
    xs, ds = case.adamw64(metric)
    kinds = set()
    out = []
    for x, d, w in zip(case.group_vectors(xs), case.group_vectors(ds), case.weights()):
        tau = LR * lam * w
        kappa = 0.0 if gamma is None else min(LR / gamma, 0.5 * d.min())
        z = prox64(x, d, tau, kappa)
        kinds.add("zero" if not z.any() else "identity" if np.array_equal(z, x) else "shrunk")
        out.append(z)
    return out, kinds


@pytest.mark.parametrize("t", STEPS)
@pytest.mark.parametrize("grouping", ["input_channels", "output_channels"])
@pytest.mark.parametrize("penalty", ["group_lasso", "group_mcp"])
@pytest.mark.parametrize("metric", ["reference", "corrected"])
def test_one_step_matches_float64_rederivation(metric, penalty, grouping, t):
    case = Case(grouping, t, seed=t)
    # MCP: zero fewer groups, so that some survivors are large enough to reach the flat part
    lam = split_lambda(case, metric, (0.25, 0.75) if penalty == "group_lasso" else (0.05, 0.3))
    gamma = None if penalty == "group_lasso" else mcp_gamma(case, metric, lam)
    expected, kinds = expected_step(case, metric, lam, gamma)
    case.optimizer(lam, metric, penalty, gamma).step()

    got = case.group_vectors(case.rows64(case.structure.params))
    zero_got = {g for g, z in enumerate(got) if not z.any()}
    zero_expected = {g for g, z in enumerate(expected) if not z.any()}
    assert zero_got == zero_expected
    assert 0 < len(zero_got) < case.structure.num_groups
    assert kinds == ({"zero", "shrunk"} if penalty == "group_lasso" else {"zero", "shrunk", "identity"})
    for g, (z, ref) in enumerate(zip(got, expected)):
        if g not in zero_got:
            assert np.linalg.norm(z - ref) <= 2e-6 * np.linalg.norm(ref), (g, np.linalg.norm(z - ref))
            assert np.all(z != 0)


def zero_set(case: Case) -> set[int]:
    return set(torch.nonzero(case.structure.group_max_abs() == 0).flatten().tolist())


def step_both(grouping: str, t: int) -> tuple[Case, Case]:
    """The same model and Adam state stepped with each metric at the corrected metric's lambda."""
    ref, cor = Case(grouping, t, seed=7), Case(grouping, t, seed=7)
    lam = split_lambda(cor, "corrected")
    ref.optimizer(lam, "reference").step()
    cor.optimizer(lam, "corrected").step()
    return ref, cor


@pytest.mark.parametrize("grouping", ["input_channels", "output_channels"])
def test_reference_metric_is_stronger_early_and_the_same_late(grouping):
    ref, cor = step_both(grouping, 4)
    assert zero_set(cor) < zero_set(ref)  # every group the corrected prox zeroes, and more
    ref, cor = step_both(grouping, 20000)
    assert zero_set(cor) == zero_set(ref)
    for a, b in zip(ref.net.parameters(), cor.net.parameters()):
        assert torch.allclose(a, b, rtol=2e-6, atol=0)


@pytest.mark.parametrize("metric", ["corrected", "reference"])
def test_groups_without_gradient_are_left_alone_under_both_metrics(metric):
    """An input channel that is always 0 gets exactly zero gradient (v = 0): only weight decay
    touches its group, while the penalty, strong enough to delete a group, acts on the others."""
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3)
    before = conv.weight.detach().clone()
    groups = regularized_param_groups(conv, build_grouping("input_channels", conv, ["*"]), lam=10.0)
    opt = ProxAdamW(groups, lr=1e-3, prox_metric=metric)
    x = torch.randn(2, 3, 8, 8)
    x[:, 1] = 0.0
    for _ in range(3):
        opt.zero_grad()
        conv(x).square().mean().backward()
        opt.step()
    assert torch.equal(opt.state[conv.weight]["exp_avg_sq"][:, 1], torch.zeros_like(conv.weight[:, 1]))
    assert torch.allclose(conv.weight[:, 1], before[:, 1] * (1 - 1e-3 * 0.01) ** 3)
    assert (conv.weight[:, [0, 2]].abs().amax(dim=(0, 2, 3)) == 0).any()


@pytest.mark.parametrize("metric", ["corrected", "reference"])
@pytest.mark.parametrize("start", [0.3, 3.0])
def test_warm_start_from_previous_norms_gives_the_same_step(metric, start):
    cold = Case("input_channels", 4, seed=3)
    lam = split_lambda(cold, metric)
    cold.optimizer(lam, metric).step()
    norms = [r.norm(dim=1) for r in (p.detach().movedim(1, 0).flatten(1) for p in cold.structure.params)]

    warm = Case("input_channels", 4, seed=3)
    opt = warm.optimizer(lam, metric)
    for p, n in zip(warm.structure.params, norms):
        opt.state[p]["prox_norm"] = n * start
    opt.step()
    for p, q, n in zip(warm.structure.params, cold.structure.params, norms):
        assert torch.allclose(p, q, rtol=1e-6, atol=1e-12)
        assert torch.allclose(opt.state[p]["prox_norm"], n, rtol=1e-6)


def test_prox_metric_is_a_param_group_setting_that_round_trips():
    net = tiny_net()
    structure = build_grouping("input_channels", net, PATTERNS)
    groups = regularized_param_groups(net, structure, 1e-3)
    groups[0]["prox_metric"] = "reference"
    opt = ProxAdamW(groups, lr=LR)
    assert opt.defaults["prox_metric"] == "corrected"
    assert [g["prox_metric"] for g in opt.param_groups] == ["reference", "corrected"]
    opt.add_param_group({"params": [nn.Parameter(torch.zeros(2))]})
    assert opt.param_groups[-1]["prox_metric"] == "corrected"

    saved = copy.deepcopy(opt.state_dict())
    other = ProxAdamW(regularized_param_groups(net, structure, 1e-3), lr=LR, prox_metric="reference")
    other.add_param_group({"params": [nn.Parameter(torch.zeros(2))]})
    other.load_state_dict(saved)
    assert [g["prox_metric"] for g in other.param_groups] == ["reference", "corrected", "corrected"]

    for g in saved["param_groups"]:  # state saved before the key existed: corrected
        del g["prox_metric"]
    other.load_state_dict(saved)
    assert {g["prox_metric"] for g in other.param_groups} == {"corrected"}


def test_deep_copied_optimiser_keeps_stepping():
    case = Case("input_channels", 4)
    opt = case.optimizer(1e-3, "reference")
    clone = copy.deepcopy(opt)
    assert clone.param_groups[0]["prox_metric"] == "reference"
    clone.step()


def test_unknown_prox_metric_is_rejected_naming_the_allowed_ones():
    net = tiny_net()
    groups = regularized_param_groups(net, build_grouping("input_channels", net, ["conv1"]), 1e-3)
    with pytest.raises(ValueError, match="'paper'; allowed: corrected, reference"):
        ProxAdamW(groups, prox_metric="paper")
    groups[0]["prox_metric"] = "uncorrected"
    with pytest.raises(ValueError, match="'uncorrected'; allowed: corrected, reference"):
        ProxAdamW(groups)
    opt = ProxAdamW(regularized_param_groups(net, build_grouping("input_channels", net, ["conv1"]), 1e-3))
    state = opt.state_dict()
    state["param_groups"][0]["prox_metric"] = "seed"
    with pytest.raises(ValueError, match="'seed'"):
        opt.load_state_dict(state)


@pytest.mark.parametrize("path", sorted((CONFIGS / "paper").glob("*.yaml")), ids=lambda p: p.name)
def test_paper_configs_use_the_reference_metric(path):
    assert sparsemtl.load_config(path).sparsity.prox_metric == "reference"


def test_default_config_uses_the_corrected_metric():
    assert sparsemtl.load_config(None).sparsity.prox_metric == "corrected"
