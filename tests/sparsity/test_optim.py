import copy

import pytest
import torch
from torch import nn

from sparsemtl.sparsity import (
    ProxAdamW,
    ProxSGD,
    block_soft_threshold,
    input_channels,
    regularized_param_groups,
    weighted_group_lasso_prox,
)


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 4, 3, padding=1), nn.Flatten(), nn.Linear(4 * 5 * 5, 2)
    )


def loss_fn(net: nn.Module, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(8, 3, 5, 5, generator=gen)
    y = torch.randn(8, 2, generator=gen)
    return ((net(x) - y) ** 2).mean()


def make(net: nn.Module, lam: float, **kwargs) -> ProxAdamW:
    structure = input_channels(net, ["0", "2"])
    return ProxAdamW(regularized_param_groups(net, structure, lam), lr=0.05, weight_decay=0.01, **kwargs)


def run(net: nn.Module, opt: torch.optim.Optimizer, steps: int, start: int = 0) -> None:
    for s in range(start, start + steps):
        opt.zero_grad()
        loss_fn(net, s).backward()
        opt.step()


def test_lambda_zero_is_exactly_adamw():
    a, b = small_net(), small_net()
    run(a, make(a, 0.0), 5)
    run(b, torch.optim.AdamW(b.parameters(), lr=0.05, weight_decay=0.01), 5)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)


def test_step_is_adamw_then_preconditioned_prox_with_bias_correction():
    net = small_net()
    reference = copy.deepcopy(net)
    lam = 0.05
    opt = make(net, lam)
    ref_opt = torch.optim.AdamW(reference.parameters(), lr=0.05, weight_decay=0.01)
    for step in range(3):
        for model, optim in ((net, opt), (reference, ref_opt)):
            optim.zero_grad()
            loss_fn(model, step).backward()
        opt.step()
        ref_opt.step()
        # apply the expected prox to the reference by hand, per conv, input-channel groups
        for idx in (0, 2):
            w = reference[idx].weight
            state = ref_opt.state[w]
            v_hat = state["exp_avg_sq"] / (1 - 0.999 ** float(state["step"]))
            d = v_hat.sqrt() + 1e-8
            rows = w.detach().transpose(0, 1).reshape(w.shape[1], -1)
            drows = d.transpose(0, 1).reshape(w.shape[1], -1)
            tau = 0.05 * lam * rows.shape[1] ** 0.5
            z = weighted_group_lasso_prox(rows.double(), drows.double(), tau).float()
            with torch.no_grad():
                w.copy_(z.reshape(w.shape[1], w.shape[0], *w.shape[2:]).transpose(0, 1))
        for pa, pb in zip(net.parameters(), reference.parameters()):
            assert torch.allclose(pa, pb, rtol=1e-5, atol=1e-7)


def test_strong_penalty_gives_exact_zero_groups_and_heads_stay_dense():
    net = small_net()
    run(net, make(net, 5.0), 20)
    zero_in = (net[0].weight.abs().sum(dim=(0, 2, 3)) == 0).sum() + (net[2].weight.abs().sum(dim=(0, 2, 3)) == 0).sum()
    assert zero_in > 0
    assert torch.count_nonzero(net[4].weight) == net[4].weight.numel()


def test_state_dict_round_trip_continues_identically():
    a = small_net()
    opt_a = make(a, 0.5)
    run(a, opt_a, 4)
    b = copy.deepcopy(a)
    opt_b = make(b, 0.0)  # different lambda: the loaded state must restore it
    opt_b.load_state_dict(copy.deepcopy(opt_a.state_dict()))
    assert opt_b.param_groups[0]["lam"] == 0.5
    run(a, opt_a, 3, start=4)
    run(b, opt_b, 3, start=4)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)


def test_state_dict_is_weights_only_loadable(tmp_path):
    net = small_net()
    opt = make(net, 0.1)
    run(net, opt, 2)
    torch.save(opt.state_dict(), tmp_path / "o.pt")
    loaded = torch.load(tmp_path / "o.pt", weights_only=True)
    assert loaded["param_groups"][0]["prox"]["dims"] == [1, 1]


def test_plain_sgd_metric_reduces_to_block_soft_threshold():
    """With lr-scaled tau and d = 1 the prox is block soft-thresholding (sanity of the helper)."""
    x = torch.randn(4, 10)
    assert torch.allclose(weighted_group_lasso_prox(x, torch.ones_like(x), 0.7), block_soft_threshold(x, 0.7))


def test_bad_prox_spec_is_rejected():
    net = small_net()
    groups = regularized_param_groups(net, input_channels(net, ["0", "2"]), 0.1)
    groups[0]["prox"]["dims"] = [1]
    with pytest.raises(
        ValueError, match="prox spec lists 1 tensors for 4 parameters|prox spec lists 1 tensors for 2 parameters"
    ):
        ProxAdamW(groups)


def test_prox_sgd_is_sgd_then_block_soft_thresholding():
    net, reference = small_net(), small_net()
    structure = input_channels(net, ["0", "2"])
    opt = ProxSGD(regularized_param_groups(net, structure, 0.2), lr=0.1, momentum=0.9)
    ref_opt = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9)
    for step in range(3):
        for model, optim in ((net, opt), (reference, ref_opt)):
            optim.zero_grad()
            loss_fn(model, step).backward()
            optim.step()
        for idx in (0, 2):
            w = reference[idx].weight
            rows = w.detach().transpose(0, 1).reshape(w.shape[1], -1)
            z = block_soft_threshold(rows, 0.1 * 0.2 * rows.shape[1] ** 0.5)
            with torch.no_grad():
                w.copy_(z.reshape(w.shape[1], w.shape[0], *w.shape[2:]).transpose(0, 1))
        for pa, pb in zip(net.parameters(), reference.parameters()):
            assert torch.allclose(pa, pb, rtol=1e-5, atol=1e-7)


def test_group_mcp_in_the_optimisers_needs_gamma_and_sparsifies():
    net = small_net()
    structure = input_channels(net, ["0", "2"])
    with pytest.raises(ValueError, match="gamma"):
        ProxAdamW(regularized_param_groups(net, structure, 0.1, penalty="group_mcp"))
    opt = ProxAdamW(regularized_param_groups(net, structure, 5.0, penalty="group_mcp", gamma=10.0), lr=0.05)
    run(net, opt, 20)
    assert (net[0].weight.abs().sum(dim=(0, 2, 3)) == 0).any() or (net[2].weight.abs().sum(dim=(0, 2, 3)) == 0).any()
    sgd = ProxSGD(
        regularized_param_groups(small_net(), input_channels(small_net(), ["0"]), 0.1, penalty="group_lasso"), lr=0.1
    )
    assert sgd.state_dict()["param_groups"][0]["prox"]["penalty"] == "group_lasso"


def test_groups_without_gradient_information_are_not_deleted():
    """An input channel that is always 0 gives its group exactly zero gradient, hence Adam metric
    d = eps; the prox must leave it alone instead of deleting it for any lambda > 0."""
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3)
    before = conv.weight.detach().clone()
    opt = ProxAdamW(regularized_param_groups(conv, input_channels(conv, ["*"]), lam=1e-9), lr=1e-3)
    x = torch.randn(2, 3, 8, 8)
    x[:, 1] = 0.0
    for _ in range(3):
        opt.zero_grad()
        conv(x).square().mean().backward()
        opt.step()
    assert torch.count_nonzero(conv.weight[:, 1]) == conv.weight[:, 1].numel()
    assert torch.allclose(conv.weight[:, 1], before[:, 1] * (1 - 1e-3 * 0.01) ** 3)  # only weight decay


def test_a_parameter_without_gradients_does_not_switch_off_the_penalty_for_the_others():
    """A regularised layer the forward pass never uses (no gradient, no Adam state) keeps its
    weights, and every other tensor of the param group is still regularised: before, one such
    parameter silently turned the prox off for the whole group."""
    torch.manual_seed(0)
    used, unused = nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 1)
    net = nn.ModuleDict({"used": used, "unused": unused})
    kept = unused.weight.detach().clone()
    opt = ProxAdamW(regularized_param_groups(net, input_channels(net, ["*"]), lam=10.0), lr=0.05)
    x = torch.randn(2, 3, 8, 8)
    for _ in range(3):
        opt.zero_grad()
        used(x).square().mean().backward()
        opt.step()
    assert unused.weight.grad is None and torch.equal(unused.weight, kept)
    assert torch.count_nonzero(used.weight.detach().abs().sum(dim=(0, 2, 3))) == 0  # every input channel zeroed


def branching_net() -> nn.ModuleDict:
    torch.manual_seed(0)
    return nn.ModuleDict({"a": nn.Conv2d(3, 4, 3), "b": nn.Conv2d(4, 4, 1), "c": nn.Conv2d(4, 4, 1)})


def branching_run(net: nn.ModuleDict, opt: torch.optim.Optimizer, steps: int) -> None:
    """Layer b joins the forward pass at step 2 and c never does: parameters whose gradients
    come late or never, beside ones that have them from the start."""
    gen = torch.Generator().manual_seed(1)
    for step in range(steps):
        opt.zero_grad()
        out = net["a"](torch.randn(2, 3, 8, 8, generator=gen))
        if step >= 2:
            out = net["b"](out)
        out.square().mean().backward()
        opt.step()


@pytest.mark.parametrize("foreach", [False, True])
def test_a_layer_that_gets_gradients_only_later_is_updated_and_regularised(foreach):
    """Before, the warm-start entry the prox stored for a not-yet-updated parameter made torch's
    AdamW skip creating its state at its first gradient: KeyError 'exp_avg'."""
    net = branching_net()
    kept = net["c"].weight.detach().clone()
    opt = ProxAdamW(regularized_param_groups(net, input_channels(net, ["*"]), lam=0.2), lr=0.05, foreach=foreach)
    branching_run(net, opt, 5)
    assert float(opt.state[net["b"].weight]["step"]) == 3
    assert torch.count_nonzero(net["b"].weight.abs().sum(dim=(0, 2, 3))) < 4  # regularised: groups zeroed
    assert torch.equal(net["c"].weight, kept)
