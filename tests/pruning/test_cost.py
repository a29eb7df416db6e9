"""The would-be-pruned model's cost equals the cost of the model pruning really produces."""

from __future__ import annotations

import pytest
import torch

from sparsemtl.models.complexity import count_macs, count_parameters
from sparsemtl.pruning import layer_widths, prune_model
from sparsemtl.pruning.cost import PrunedCostModel
from sparsemtl.sparsity import channel_sets

from .test_prune import example, tiny_model, zero_coupled, zero_groups

SIZE = (32, 40)


def assert_matches_pruning(model, size=SIZE) -> None:
    predicted = PrunedCostModel(model, size).cost()
    pruned = prune_model(model, torch.rand(1, 3, *size), input_size=size)
    assert predicted.macs == count_macs(pruned.model, size)
    assert predicted.params == count_parameters(pruned.model)
    after = layer_widths(pruned.model)
    for w in predicted.widths:
        assert (w.in_channels, w.out_channels) == (after[w.name]["in"], after[w.name]["out"]), w.name


def test_dense_model_costs_what_it_counts() -> None:
    model = tiny_model()
    cost = PrunedCostModel(model, SIZE)
    assert cost.dense.macs == count_macs(model, SIZE)
    assert cost.dense.params == count_parameters(model)
    assert cost.cost() == cost.dense  # nothing is zero yet


@pytest.mark.parametrize("grouping", ["coupled", "input_channels", "output_channels"])
@pytest.mark.parametrize("fraction", [0.3, 0.7])
def test_random_zero_groups_cost_what_pruning_gives(grouping: str, fraction: float) -> None:
    model = tiny_model(seed=3)
    zero_groups(model, grouping, fraction, seed=int(fraction * 10))
    assert_matches_pruning(model)


def test_whole_sets_dead_keep_one_channel_like_pruning() -> None:
    model = tiny_model(seed=1)
    zero_coupled(model, example(), 1.0)  # every channel not reaching an output
    assert_matches_pruning(model)


@pytest.mark.parametrize("encoder", ["resnext26ts", "mobilenetv2_035"])
def test_grouped_and_depthwise_convs(encoder: str) -> None:
    model = tiny_model(encoder, seed=2)
    zero_coupled(model, torch.rand(1, 3, 64, 64), 0.5, seed=4)
    assert_matches_pruning(model, (64, 64))


def test_cost_follows_weight_changes_without_retracing() -> None:
    model = tiny_model(seed=5)
    cost = PrunedCostModel(model, SIZE)
    sets_before = channel_sets(model, ["*"])
    zero_groups(model, "coupled", 0.5)
    assert cost.cost().macs < cost.dense.macs
    assert channel_sets(model, ["*"]) == sets_before  # the same cached sets
    assert_matches_pruning(model)


@pytest.mark.parametrize("round_to", [4, 8])
def test_rounded_widths_cost_what_rounded_pruning_gives(round_to: int) -> None:
    model = tiny_model(seed=6)
    zero_groups(model, "coupled", 0.6, seed=2)
    predicted = PrunedCostModel(model, SIZE).cost(round_to=round_to)
    pruned = prune_model(model, torch.rand(1, 3, *SIZE), input_size=SIZE, round_to=round_to)
    assert predicted.macs == count_macs(pruned.model, SIZE)
    assert predicted.params == count_parameters(pruned.model)
