"""ProxAdamW(native_prox=True): the native CPU step (AdamW update and group-lasso prox in three
vectorised passes) against torch's AdamW followed by the eager prox, which stays the reference."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from sparsemtl.sparsity import ProxAdamW, input_channels, native_step, regularized_param_groups
from tests.conftest import TINY
from tests.test_cli_errors import one_line_error

pytestmark = pytest.mark.skipif(not native_step.build_tools(), reason="no C++ compiler or ninja to build with")


def net() -> nn.ModuleDict:
    """Convs of mixed shapes (3x3 and 1x1, input-channel groups); b joins the forward pass at
    step 2 and c never does."""
    torch.manual_seed(0)
    convs = {"a": (3, 16, 3), "b": (16, 24, 1), "c": (24, 8, 3), "d": (16, 8, 3)}
    return nn.ModuleDict({name: nn.Conv2d(i, o, k, padding=k // 2) for name, (i, o, k) in convs.items()})


def run(model: nn.ModuleDict, opt: torch.optim.Optimizer, steps: int) -> None:
    gen = torch.Generator().manual_seed(1)
    for step in range(steps):
        opt.zero_grad()
        out = torch.relu(model["a"](torch.randn(4, 3, 10, 10, generator=gen)))
        if step >= 2:
            out = out + model["b"](out)[:, :16]
        model["d"](out).square().mean().backward()
        opt.step()


def build(native: bool, **options) -> tuple[nn.ModuleDict, ProxAdamW]:
    model = net()
    lam, penalty = options.pop("lam", 0.3), options.pop("penalty", "group_lasso")
    groups = regularized_param_groups(model, input_channels(model, ["*"]), lam=lam, penalty=penalty, gamma=3.0)
    return model, ProxAdamW(groups, lr=0.02, weight_decay=0.01, native_prox=native, **options)


@pytest.mark.parametrize("metric", ["corrected", "reference"])
def test_native_step_is_adamw_then_the_eager_prox_to_float32_rounding(monkeypatch, metric):
    calls = []
    original = native_step.native_prox_step_

    def counted(*args, **kwargs):
        calls.append(original(*args, **kwargs))
        return calls[-1]

    monkeypatch.setattr(native_step, "native_prox_step_", counted)
    native_model, native_opt = build(True, prox_metric=metric)
    eager_model, eager_opt = build(False, prox_metric=metric)
    run(native_model, native_opt, 6)
    run(eager_model, eager_opt, 6)
    assert len(calls) == 6 and all(all(done) for done in calls[1:])  # step 1 starts cold: any tensor may fall back
    zero_groups = 0
    for (name, a), b in zip(native_model.named_parameters(), eager_model.parameters()):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7), name
        if a.dim() == 4:
            zeros_a, zeros_b = a.abs().sum(dim=(0, 2, 3)) == 0, b.abs().sum(dim=(0, 2, 3)) == 0
            assert torch.equal(zeros_a, zeros_b), name
            zero_groups += int(zeros_a.sum())
        state_a, state_b = native_opt.state[a], eager_opt.state[b]
        assert state_a.keys() == state_b.keys(), name
        for key in state_b:
            assert torch.allclose(state_a[key], state_b[key], rtol=1e-4, atol=1e-9), (name, key)
    assert zero_groups > 0
    assert not native_opt.state[native_model["c"].weight]  # never had a gradient: no state


def test_state_dict_of_the_native_step_continues_in_the_eager_step():
    model, opt = build(True)
    run(model, opt, 4)
    eager_model, eager_opt = build(False)
    eager_model.load_state_dict(model.state_dict())
    eager_opt.load_state_dict(copy.deepcopy(opt.state_dict()))  # torch's loading shares the tensors
    run(model, opt, 2)
    run(eager_model, eager_opt, 2)
    for a, b in zip(model.parameters(), eager_model.parameters()):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)


def test_groups_the_native_step_does_not_take_get_the_eager_step_exactly():
    native_model, native_opt = build(True, penalty="group_mcp")
    eager_model, eager_opt = build(False, penalty="group_mcp")
    run(native_model, native_opt, 4)
    run(eager_model, eager_opt, 4)
    for a, b in zip(native_model.parameters(), eager_model.parameters()):
        assert torch.equal(a, b)


def test_a_native_step_that_cannot_be_built_is_one_line_naming_the_key(capsys, monkeypatch, tmp_path):
    import torch.utils.cpp_extension as cpp_extension

    def fail(*args, **kwargs):
        raise RuntimeError("Ninja is required to load C++ extensions\nmore detail")

    monkeypatch.setattr(cpp_extension, "load", fail)
    native_step.extension.cache_clear()
    try:
        argv = ["train", *TINY, f"train.out_dir={tmp_path}", "sparsity.penalty=group_lasso", "sparsity.lam=0.05"]
        one_line_error(capsys, [*argv, "optim.native_prox=true"], "'optim.native_prox'", "C++ compiler", "Ninja")
    finally:
        native_step.extension.cache_clear()
