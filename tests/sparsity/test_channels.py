import copy

import pytest
import torch
from torch import nn

from sparsemtl.config import ModelConfig
from sparsemtl.models import build_model
from sparsemtl.sparsity import GroupStructure, build_grouping, input_channels, sparsity_report
from sparsemtl.sparsity.channels import (
    ChannelRemovability,
    ChannelSet,
    ChannelSlice,
    channel_sets,
    coupled,
    coupled_structure,
    output_channels,
    removable_channels,
)
from sparsemtl.tasks.spec import TaskSpec

SPECS = {
    "segmentation": TaskSpec("segmentation", "segmentation", num_classes=4),
    "depth": TaskSpec("depth", "depth"),
    "smiling": TaskSpec("smiling", "attribute"),
}
#: the convs of every head that read the encoder output (4 ASPP branches per dense head)
HEAD_READERS = {
    f"heads.{task}.0.{conv}.weight"
    for task in ("segmentation", "depth")
    for conv in ("convs.0.0", "convs.1.0", "convs.2.0", "convs.3.1")
} | {"heads.smiling.0.weight"}
B = "encoder.backbone."


def small_model(encoder: str) -> nn.Module:
    torch.manual_seed(0)
    cfg = ModelConfig(encoder=encoder, head_channels=8, aspp_rates=(1, 2), classifier_channels=(8, 4))
    return build_model(cfg, SPECS)


def image(size: int = 32) -> torch.Tensor:
    return torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def r10() -> nn.Module:
    return small_model("resnet10t")


@pytest.fixture(scope="module")
def r10_encoder_sets(r10) -> list[ChannelSet]:
    return channel_sets(r10, ["encoder.*"], image())


@pytest.fixture(scope="module")
def r10_all_sets(r10) -> list[ChannelSet]:
    return channel_sets(r10, ["*"], image())


@pytest.fixture(scope="module")
def r26() -> nn.Module:
    return small_model("resnet26d")


@pytest.fixture(scope="module")
def r26_sets(r26) -> list[ChannelSet]:
    return channel_sets(r26, ["encoder.*"], image())


def by_name(sets: list[ChannelSet], name: str) -> ChannelSet:
    return next(s for s in sets if s.name == name)


def writing(sets: list[ChannelSet], param: str) -> ChannelSet:
    return next(s for s in sets if param in weights(s.writers))


def removability(model: nn.Module, cset: ChannelSet) -> ChannelRemovability:
    (result,) = removable_channels(model, [cset])
    return result


def weights(slices: list[ChannelSlice]) -> set[str]:
    return {s.name for s in slices if s.name.endswith("weight")}


def assert_valid(s: GroupStructure) -> None:
    assert len(set(s.names)) == len(s.names)
    assert len({id(p) for p in s.params}) == len(s.params)
    for p, dim, ids in zip(s.params, s.dims, s.ids):
        assert ids.dtype == torch.long and ids.shape == (p.shape[dim],)
    all_ids = torch.cat(s.ids)
    assert all_ids.min() >= 0 and all_ids.max() < s.num_groups
    assert torch.bincount(all_ids, minlength=s.num_groups).ne(0).all()  # no empty group
    assert s.group_sizes().sum() == sum(p.numel() for p in s.params)
    assert len(s.owners) == s.num_groups


def zero(model: nn.Module, slices: list[ChannelSlice], chosen: torch.Tensor) -> None:
    """Zero the slices of the chosen channels in ``model`` (parameters looked up by name)."""
    for s in slices:
        s.zero_(model.get_parameter(s.name), s.index[chosen[s.channel]])


def pick(sets: list[ChannelSet], gen: torch.Generator) -> list[torch.Tensor]:
    """About an eighth (at least one) of every set's channels, never ones that are outputs."""
    picks = []
    for s in sets:
        mask = torch.zeros(s.channels, dtype=torch.bool)
        free = (~s.to_output).nonzero().squeeze(1)
        if free.numel():
            chosen = torch.randperm(free.numel(), generator=gen)[: max(1, free.numel() // 8)]
            mask[free[chosen]] = True
        picks.append(mask)
    return picks


def run_watching_readers(model, sets, picks, x) -> tuple[list[str], object]:
    """Run ``model`` on ``x``; return the readers whose input is not exactly 0 on the picked
    channels, and the outputs."""
    watched: dict[str, list[torch.Tensor]] = {}
    for s, chosen in zip(sets, picks):
        for r in s.readers:
            watched.setdefault(r.name.rsplit(".", 1)[0], []).append(r.index[chosen[r.channel]])
    bad, hooks = [], []
    for name, index in watched.items():

        def check(module, args, name=name, index=torch.cat(index)):
            if args[0][:, index].count_nonzero():
                bad.append(name)

        hooks.append(model.get_submodule(name).register_forward_pre_hook(check))
    with torch.no_grad():
        outputs = model(x)
    for hook in hooks:
        hook.remove()
    return bad, outputs


def assert_zero_groups_removable(model: nn.Module, sets: list[ChannelSet], x: torch.Tensor) -> None:
    """Zero random ``coupled`` groups of every set and check they are exactly removable."""
    model.eval()
    structure = coupled_structure(sets)
    structure.params = [model.get_parameter(n) for n in structure.names]  # sets may be a fixture's
    before = torch.cat([r.mask for r in removable_channels(model, sets)])
    picks = pick(sets, torch.Generator().manual_seed(2))
    for s, chosen in zip(sets, picks):
        zero(model, s.writers, chosen)
    chosen = torch.cat(picks)
    assert chosen.sum() >= len(sets)
    # the zeroed channels are exactly the zero groups of the coupled grouping
    assert torch.equal(structure.group_max_abs() == 0, chosen)
    # (a) they are reported removable, nothing else changes
    after = torch.cat([r.mask for r in removable_channels(model, sets)])
    assert torch.equal(after, before | chosen)
    # (b) every reader sees exactly 0 on them (eval mode, random input)
    bad, reference = run_watching_readers(model, sets, picks, x)
    assert bad == []
    # (c) cutting them out of every reader too leaves all outputs unchanged
    for s, chosen in zip(sets, picks):
        zero(model, s.readers, chosen)
    with torch.no_grad():
        outputs = model(x)
    if isinstance(outputs, torch.Tensor):
        outputs, reference = {"out": outputs}, {"out": reference}
    for task, ref in reference.items():
        assert (outputs[task] - ref).abs().max() <= 1e-6 * ref.abs().max()


def test_all_groupings_are_valid_structures(r10, r10_all_sets, r26_sets):
    convs = [m for m in r10.modules() if isinstance(m, nn.Conv2d)]
    inp, out, cpl = (build_grouping(g, r10, ["*"]) for g in ("input_channels", "output_channels", "coupled"))
    for s in (inp, out, cpl, coupled_structure(r26_sets)):
        assert_valid(s)
    assert out.num_groups == sum(c.out_channels for c in convs)
    assert cpl.owners == [s.name for s in r10_all_sets for _ in range(s.channels)]
    # in resnet10t + heads every BN follows a conv: the same weights, in fewer (coupled) groups
    assert set(out.names) == set(cpl.names)
    assert out.group_sizes().sum() == cpl.group_sizes().sum()
    assert cpl.num_groups < out.num_groups
    assert inp.group_sizes().sum() == sum(c.weight.numel() for c in convs)


def test_bottleneck_sets_follow_residual_streams_and_heads(r26, r26_sets):
    sets = r26_sets
    # stem (3 convs) + 2 inner sets per bottleneck (4 stages x 2 blocks) + one stream per stage
    assert len(sets) == 3 + 2 * 8 + 4
    widths = (64, 128, 256, 512)
    assert sum(s.channels for s in sets) == 32 + 32 + 64 + 4 * sum(widths) + 4 * sum(widths)
    stream = writing(sets, f"{B}layer2.0.downsample.1.weight")
    assert stream.channels == 512
    assert weights(stream.writers) == {
        f"{B}layer2.0.downsample.1.weight",
        f"{B}layer2.0.downsample.2.weight",
        f"{B}layer2.0.conv3.weight",
        f"{B}layer2.0.bn3.weight",
        f"{B}layer2.1.conv3.weight",
        f"{B}layer2.1.bn3.weight",
    }
    assert weights(stream.readers) == {
        f"{B}layer2.1.conv1.weight",
        f"{B}layer3.0.conv1.weight",
        f"{B}layer3.0.downsample.1.weight",
    }
    inner = by_name(sets, f"{B}layer2.1.conv1")
    assert inner.channels == 128
    assert weights(inner.writers) == {f"{B}layer2.1.conv1.weight", f"{B}layer2.1.bn1.weight"}
    assert weights(inner.readers) == {f"{B}layer2.1.conv2.weight"}
    # the encoder output (last stage's stream) is read by every head's first convs, unshifted
    out = writing(sets, f"{B}layer4.0.downsample.1.weight")
    assert out.channels == 2048 and HEAD_READERS <= weights(out.readers)
    assert not out.to_output.any()
    for r in out.readers:
        assert torch.equal(r.index, torch.arange(2048))
        assert torch.equal(r.channel, torch.arange(2048))
    # every encoder conv writes into exactly one set
    written = [w.name for s in sets for w in s.writers]
    assert len(written) == len(set(written))
    convs = r26.encoder.named_modules(prefix="encoder")
    assert {f"{n}.weight" for n, m in convs if isinstance(m, nn.Conv2d)} <= set(written)


def test_concat_readers_are_offset_and_outputs_never_removable(r10, r10_all_sets):
    model, sets = copy.deepcopy(r10), r10_all_sets
    for branch, offset in (("convs.2.0", 16), ("convs.3.1", 24)):  # 4 ASPP branches x 8 channels
        cset = by_name(sets, f"heads.segmentation.0.{branch}")
        (project,) = [r for r in cset.readers if r.name == "heads.segmentation.0.project.0.weight"]
        assert torch.equal(project.index, torch.arange(offset, offset + 8))
        assert torch.equal(project.channel, torch.arange(8))
    logits = by_name(sets, "heads.segmentation.4")
    assert logits.to_output.all() and not logits.readers
    zero(model, logits.writers, torch.ones(logits.channels, dtype=torch.bool))
    assert removability(model, logits).removable == 0


@pytest.mark.parametrize("encoder", ["resnet10t", "resnet18d", "resnet26d"])
def test_zero_coupled_groups_are_exactly_removable(encoder, request):
    """resnet10t: every conv incl. the heads (ASPP concat); resnet18d: basic blocks; resnet26d:
    bottlenecks; the last two on the encoder, whose output set all heads read."""
    if encoder == "resnet18d":
        model = small_model(encoder)
        sets = channel_sets(model, ["encoder.*"], image())
    else:
        fixtures = {"resnet10t": ("r10", "r10_all_sets"), "resnet26d": ("r26", "r26_sets")}
        model, sets = (request.getfixturevalue(f) for f in fixtures[encoder])
        model = copy.deepcopy(model)
    assert_zero_groups_removable(model, sets, image())


def test_rule1_all_readers_zero_means_removable(r10, r10_encoder_sets):
    model = copy.deepcopy(r10)
    out = next(s for s in r10_encoder_sets if HEAD_READERS <= weights(s.readers))
    chosen = torch.zeros(out.channels, dtype=torch.bool)
    chosen[[3, 100]] = True
    zero(model, [r for r in out.readers if not r.name.startswith("heads.smiling")], chosen)
    assert removability(model, out).removable == 0  # the attribute head still reads them
    zero(model, out.readers, chosen)
    result = removability(model, out)
    assert torch.equal(result.mask, chosen) and not result.all_removable
    inner = by_name(r10_encoder_sets, f"{B}layer1.0.conv1")
    zero(model, inner.writers, torch.ones(inner.channels, dtype=torch.bool))
    assert removability(model, inner).all_removable


def test_output_channel_groups_include_the_following_batchnorm(r10):
    model = copy.deepcopy(r10)
    s = output_channels(model, ["encoder.*", "heads.smiling.0"])
    ids = dict(zip(s.names, s.ids))
    conv1 = ids[f"{B}layer1.0.conv1.weight"]
    assert torch.equal(conv1, ids[f"{B}layer1.0.bn1.weight"])
    assert torch.equal(conv1, ids[f"{B}layer1.0.bn1.bias"])
    # not coupled across the residual add: the downsample BN is in the downsample conv's groups
    downsample = ids[f"{B}layer2.0.downsample.1.weight"]
    assert torch.equal(downsample, ids[f"{B}layer2.0.downsample.2.weight"])
    assert not torch.equal(ids[f"{B}layer2.0.conv2.weight"], downsample)
    assert "heads.smiling.0.bias" in ids  # a conv without BN keeps its bias
    block = model.encoder.backbone.layer1[0]
    with torch.no_grad():
        block.conv1.weight[5] = 0.0  # the filter alone: not a zero group
        block.conv1.weight[6] = 0.0
        block.bn1.weight[6] = 0.0
        block.bn1.bias[6] = 0.0
    assert (s.group_max_abs() == 0).nonzero().squeeze(1).tolist() == [int(conv1[6])]
    report = sparsity_report(s, "output_channels")
    assert report.zero_groups == 1 and report.zero_weights == 64 * 3 * 3 + 2


class SplitNet(nn.Module):
    """``a``'s channels split in two halves, each added to another conv, concatenated swapped."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(3, 8, 1), nn.Conv2d(3, 4, 1), nn.Conv2d(3, 4, 1)
        self.d = nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a1, a2 = self.a(x).split(4, dim=1)
        return self.d(torch.cat([torch.relu(a2 + self.c(x)), torch.relu(a1 + self.b(x))], 1))


def test_a_split_blocks_its_sets_instead_of_failing():
    """``split(4)`` keeps its size after a cut, so channels reaching it are never removable;
    the set says why, and its root's own writers still form valid groups."""
    torch.manual_seed(0)
    net = SplitNet()
    sets = channel_sets(net, ["b", "c"], image(8))
    assert [(s.name, s.channels) for s in sets] == [("b", 4), ("c", 4)]
    for s in sets:
        assert s.blocked and "split" in s.blocked[0]
        assert weights(s.writers) == {f"{s.name}.weight"} and not s.readers
    zero(net, sets[0].writers, torch.ones(4, dtype=torch.bool))
    found = removable_channels(net, sets)
    assert [r.removable for r in found] == [0, 0]
    assert_valid(coupled_structure(sets))


def test_depthwise_conv_passes_channels_through_and_modes_are_restored():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 4, 1),
    )
    net[1].eval()
    sets = channel_sets(net, ["0"], image(8))
    assert net.training and not net[1].training  # each module's own mode
    (s,) = sets
    assert weights(s.writers) == {"0.weight", "1.weight", "3.weight", "4.weight"}
    assert [(r.name, r.dim) for r in s.readers] == [("6.weight", 1)]
    assert_zero_groups_removable(net, sets, image(8))


def test_bad_patterns_are_errors():
    net = nn.Sequential(nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 3, groups=2))
    with pytest.raises(ValueError, match="matches no conv layer"):
        coupled(net, ["encoder.*"])
    assert input_channels(net, ["0"]).num_groups == 3


class GroupedNet(nn.Module):
    """conv (3 -> 8), BN, ReLU, grouped conv (8 -> 8, 2 groups of 4), BN, ReLU, conv (8 -> 2)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1, groups=2),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Conv2d(8, 2, 1),
        )

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": self.body(x)}


def test_grouped_conv_channels_go_in_equal_numbers_per_group():
    """Zero inputs 0, 1 (group 0) and 5 (group 1) of the grouped conv: one per group can go (0 and
    5, different positions); 1 is zero but kept, with the grouped conv named as the reason. The
    reader slice of input channel j is column j % 4 of its own group's filters only."""
    torch.manual_seed(0)
    net = GroupedNet().eval()
    inner, outer = channel_sets(net, ["body.0", "body.3"], image(8))
    (grouped,) = [r for r in inner.readers if r.name == "body.3.weight"]
    assert grouped.groups == 2 and [c.name for c in inner.conv_groups] == ["body.3"]
    assert inner.conv_groups[0].group.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    chosen = torch.zeros(8, dtype=torch.bool)
    chosen[[0, 1, 5]] = True
    zero(net, inner.writers, chosen)
    (found,) = removable_channels(net, [inner])
    assert found.zero.tolist() == chosen.tolist()
    assert found.mask.nonzero().flatten().tolist() == [0, 5]
    assert found.kept_zero == 1 and "grouped conv 'body.3' (2 groups of 4)" in found.reasons[0]
    # unread instead of dead: zeroing the grouped conv's column of channel 6 (group 1) only
    net2 = GroupedNet().eval()
    zero(net2, [grouped], torch.tensor([False] * 6 + [True, False]))
    assert net2.body[3].weight[4:, 2].abs().sum() == 0 and net2.body[3].weight[:4, 2].abs().sum() > 0
    (found2,) = removable_channels(net2, [inner])
    assert found2.zero.nonzero().flatten().tolist() == [6] and found2.removable == 0
    # all four outputs of one group dead: at most three of a group go, and the other group none
    all_out = torch.tensor([True] * 4 + [False] * 4)
    zero(net2, outer.writers, all_out)
    (found3,) = removable_channels(net2, [outer])
    assert found3.zero_channels == 4 and found3.removable == 0


def test_grouped_conv_prunes_exactly_with_different_positions_per_group():
    from sparsemtl.pruning import prune_model

    torch.manual_seed(0)
    net = GroupedNet().eval()
    inner, outer = channel_sets(net, ["body.0", "body.3"], image(8))
    zero(net, inner.writers, torch.tensor([True, True, False, False, False, True, False, False]))
    zero(net, outer.writers, torch.tensor([False, False, True, False, True, False, False, False]))
    result = prune_model(net, image(8), check_inputs=[torch.rand(3, 3, 12, 12)])
    conv = result.model.body[3]
    assert (conv.in_channels, conv.out_channels, conv.groups) == (6, 6, 2)
    assert result.removed_channels == 4 and result.kept_zero == {
        "body.0": {"channels": 1, "reasons": [next(iter(removable_channels(net, [inner])[0].reasons))]}
    }
    x = torch.rand(2, 3, 10, 10)
    with torch.no_grad():
        assert torch.allclose(net(x)["out"], result.model(x)["out"], rtol=1e-5, atol=1e-6)


class LayerNormNet(nn.Module):
    """conv, GroupNorm, ReLU, conv: the GroupNorm couples the first conv's channels."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.norm, self.b = nn.Conv2d(3, 8, 1), nn.GroupNorm(2, 8), nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": self.b(torch.relu(self.norm(self.a(x))))}


def test_channel_normalising_layers_keep_zero_channels_with_the_reason():
    torch.manual_seed(0)
    net = LayerNormNet().eval()
    (cset,) = channel_sets(net, ["a"], image(8))
    assert cset.blocked == (
        "GroupNorm normalises over channels: removing a zero channel changes the others' statistics (at 'norm')",
    )
    chosen = torch.zeros(8, dtype=torch.bool)
    chosen[3] = True
    zero(net, cset.writers, chosen)
    (found,) = removable_channels(net, [cset])
    assert found.zero_channels == 1 and found.removable == 0 and found.reasons == cset.blocked
    assert sparsity_report(coupled(net, ["a"]), "coupled").zero_groups == 1
