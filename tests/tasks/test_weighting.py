"""Loss-weighting strategies: totals, reported weights, validation, and learning."""

import math

import pytest
import torch

from sparsemtl.tasks import (
    WEIGHTINGS,
    EqualWeighting,
    FixedWeighting,
    UncertaintyWeighting,
    build_weighting,
)


def losses(**values: float) -> dict[str, torch.Tensor]:
    return {name: torch.tensor(value) for name, value in values.items()}


def test_registered_names() -> None:
    assert WEIGHTINGS.names() == ["dwa", "equal", "fixed", "pcgrad", "uncertainty"]


def test_equal_is_the_plain_sum() -> None:
    total, weights = EqualWeighting(["seg", "depth", "normals"])(losses(seg=0.5, depth=1.25, normals=2.0))
    assert total.item() == 3.75
    assert weights == {"seg": 1.0, "depth": 1.0, "normals": 1.0}


def test_fixed_weights() -> None:
    weighting = build_weighting("fixed", ["seg", "depth"], weights={"seg": 2.0, "depth": 0.5})
    total, weights = weighting(losses(seg=1.5, depth=4.0))
    assert total.item() == pytest.approx(2.0 * 1.5 + 0.5 * 4.0)
    assert weights == {"seg": 2.0, "depth": 0.5}


@pytest.mark.parametrize(
    "weights, culprit",
    [({"seg": 1.0}, "depth"), ({"seg": 1.0, "depth": 1.0, "edges": 1.0}, "edges")],
)
def test_fixed_weights_must_name_exactly_the_tasks(weights: dict, culprit: str) -> None:
    with pytest.raises(ValueError, match=culprit):
        FixedWeighting(["seg", "depth"], weights=weights)


def test_fixed_weights_must_be_non_negative() -> None:
    with pytest.raises(ValueError, match="finite"):
        FixedWeighting(["seg"], weights={"seg": -1.0})


def test_duplicate_task_names_are_rejected() -> None:
    with pytest.raises(ValueError, match="unique"):
        EqualWeighting(["seg", "seg"])


@pytest.mark.parametrize("name", ["equal", "uncertainty"])
def test_forward_rejects_a_different_task_set(name: str) -> None:
    weighting = build_weighting(name, ["seg", "depth"])
    with pytest.raises(ValueError, match="depth"):
        weighting(losses(seg=1.0))
    with pytest.raises(ValueError, match="edges"):
        weighting(losses(seg=1.0, depth=1.0, edges=1.0))


def test_forward_rejects_non_scalar_losses() -> None:
    with pytest.raises(ValueError, match="scalar"):
        EqualWeighting(["seg"])({"seg": torch.ones(2)})


def test_unknown_weighting_lists_available() -> None:
    with pytest.raises(KeyError, match="dwa, equal, fixed, pcgrad, uncertainty"):
        build_weighting("gradnorm", ["seg"])


def test_uncertainty_value_and_gradient_at_initialisation() -> None:
    weighting = UncertaintyWeighting(["seg", "depth"])
    assert [name for name, _ in weighting.named_parameters()] == ["log_vars"]
    total, weights = weighting(losses(seg=0.5, depth=3.0))
    assert total.item() == pytest.approx(3.5)  # s = 0: weights 1, penalty 0
    assert weights == {"seg": 1.0, "depth": 1.0}
    total.backward()
    # d/ds [exp(-s) L + s] = 1 - exp(-s) L = 1 - L at s = 0
    assert weighting.log_vars.grad.tolist() == pytest.approx([0.5, -2.0])


def test_uncertainty_log_variances_are_learned() -> None:
    """Two regression tasks whose noise differs by 10x: the noisier task gets down-weighted."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(256, 4, generator=generator)
    truth = torch.randn(4, 2, generator=generator)
    y = x @ truth + torch.randn(256, 2, generator=generator) * torch.tensor([0.1, 1.0])

    model = torch.nn.Linear(4, 2)
    weighting = UncertaintyWeighting(["clean", "noisy"])
    optimiser = torch.optim.Adam([*model.parameters(), *weighting.parameters()], lr=0.05)
    for _ in range(300):
        squared = (model(x) - y).square().mean(dim=0)
        total, weights = weighting({"clean": squared[0], "noisy": squared[1]})
        optimiser.zero_grad()
        total.backward()
        optimiser.step()

    log_vars = weighting.log_vars.detach()
    # optimum s_t = log L_t, with L_t near the noise variances 0.01 and 1.0
    assert log_vars[0].item() == pytest.approx(math.log(0.01), abs=0.5)
    assert log_vars[1].item() == pytest.approx(0.0, abs=0.3)
    assert weights["clean"] > 20 * weights["noisy"]
    assert weights["clean"] == pytest.approx(math.exp(-log_vars[0].item()), rel=0.1)


def test_active_subset_drops_tasks_from_the_total_and_the_uncertainty_penalty() -> None:
    weighting = UncertaintyWeighting(["a", "b", "c"])
    with torch.no_grad():
        weighting.log_vars.copy_(torch.tensor([0.0, 1.0, 2.0]))
    losses = {"a": torch.tensor(2.0), "c": torch.tensor(3.0)}
    total, weights = weighting(losses, active=["c", "a"])
    expected = 2.0 * math.exp(-0.0) + 0.0 + 3.0 * math.exp(-2.0) + 2.0  # b contributes nothing
    assert total.item() == pytest.approx(expected)
    assert set(weights) == {"a", "c"}
    total.backward()
    assert weighting.log_vars.grad[1] == 0.0
    with pytest.raises(ValueError, match="missing"):
        weighting({"a": torch.tensor(1.0)}, active=["a", "c"])
    with pytest.raises(ValueError, match="non-empty subset"):
        weighting({"z": torch.tensor(1.0)}, active=["z"])
