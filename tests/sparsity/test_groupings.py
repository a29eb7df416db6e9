import pytest
import torch
from torch import nn

from sparsemtl.sparsity import build_grouping, group_weights, input_channels, sparsity_report


def net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3),  # 0
        nn.Conv2d(8, 8, 3, groups=8),  # 1 depthwise
        nn.Conv2d(8, 4, 1),  # 2
    )


def test_input_channel_groups_cover_every_weight_once():
    model = net()
    s = input_channels(model, ["*"])
    assert s.num_groups == 3 + 8 + 8
    assert s.dims == [1, 0, 1]
    sizes = s.group_sizes()
    assert sizes[:3].tolist() == [8 * 9] * 3
    assert sizes[3:11].tolist() == [9] * 8
    assert sizes[11:].tolist() == [4] * 8
    assert sizes.sum() == sum(p.weight.numel() for p in model)
    assert torch.allclose(group_weights(s, "sqrt_size"), sizes.sqrt())
    assert torch.equal(group_weights(s, "none"), torch.ones(19, dtype=torch.float64))
    assert torch.allclose(group_weights(s, lambda n: 2 * n), 2 * sizes)


def test_report_counts_hand_zeroed_groups():
    model = net()
    with torch.no_grad():
        model[0].weight[:, 1] = 0.0  # one input-channel group of conv 0: 8*3*3 weights
        model[2].weight[:, 5] = 0.0  # one of conv 2: 4 weights
        model[2].weight[0, 6] = 0.0  # a partially zero group does not count
    report = sparsity_report(input_channels(model, ["*"]), "input_channels")
    assert report.zero_groups == 2
    assert report.zero_weights == 72 + 4
    assert report.weights == sum(p.weight.numel() for p in model)
    assert report.zero_group_pct == pytest.approx(100 * 2 / 19)
    by_layer = {row.layer: row for row in report.layers}
    assert by_layer["0"].zero_groups == 1 and by_layer["1"].zero_groups == 0 and by_layer["2"].zero_weights == 4
    assert report.to_dict()["layers"][0]["groups"] == 3


def test_patterns_select_modules_and_typos_are_errors():
    model = net()
    assert input_channels(model, ["2"]).names == ["2.weight"]
    with pytest.raises(ValueError, match="pattern 'encoder.*' matches no conv layer"):
        input_channels(model, ["encoder.*"])
    with pytest.raises(KeyError, match="unknown grouping 'nope'"):
        build_grouping("nope", model, ["*"])


def test_grouped_convs_group_one_input_of_every_conv_group():
    """A grouped conv's input channel is not a slice of its weight: group p holds column p of
    every conv group (one input per conv group, so zero groups keep the groups equally wide);
    with one input per conv group (a depthwise multiplier) a group is that conv group's filters."""
    grouped, multiplier = nn.Conv2d(4, 8, 3, groups=2), nn.Conv2d(4, 8, 3, groups=4)
    s = input_channels(nn.Sequential(grouped, multiplier), ["*"])
    assert s.dims == [1, 0] and s.num_groups == 2 + 4
    assert s.ids[1].tolist() == [2, 2, 3, 3, 4, 4, 5, 5]
    assert s.group_sizes().tolist() == [8 * 9] * 2 + [2 * 9] * 4
    with torch.no_grad():
        grouped.weight[:, 1] = 0.0  # input 1 of both conv groups: channels 1 and 3
        multiplier.weight[4:6] = 0.0  # the filters reading input channel 2
    assert (s.group_max_abs() == 0).nonzero().flatten().tolist() == [1, 4]


def test_zero_groups_sets_exactly_the_selected_groups_to_zero():
    model = net()
    s = input_channels(model, ["*"])
    mask = torch.zeros(s.num_groups, dtype=torch.bool)
    mask[[0, 4, 12]] = True
    s.zero_groups_(mask)
    assert torch.equal(s.group_max_abs() == 0, mask)
    with pytest.raises(ValueError, match="mask must have shape"):
        s.zero_groups_(torch.zeros(3, dtype=torch.bool))
