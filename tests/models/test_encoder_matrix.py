"""Any timm CNN end to end: one sparse training step under each grouping, the sparsity report,
exact pruning, and the pruned model's outputs equal to the original's on fresh inputs (checked
element-wise in float64).

One member per family, the smallest timm variant at 32-64 px; the heavier ones are ``slow``
(``make test-slow``). Families without dilation support run at output stride 32.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from sparsemtl.config import ModelConfig
from sparsemtl.models import build_model
from sparsemtl.models.widths import apply_widths, changed_widths
from sparsemtl.pruning import PruneResult, prune_model, verify_pruned
from sparsemtl.sparsity import (
    ProxAdamW,
    build_grouping,
    channel_sets,
    model_sparsity_report,
    regularized_param_groups,
    removable_channels,
)
from sparsemtl.sparsity.channels import ChannelRemovability, is_grouped_conv
from sparsemtl.sparsity.report import SparsityReport
from sparsemtl.tasks.spec import TaskSpec

SPECS = {
    "segmentation": TaskSpec("segmentation", "segmentation", num_classes=3),
    "smiling": TaskSpec("smiling", "attribute"),
}
GROUPINGS = ("input_channels", "output_channels", "coupled")
#: fraction of the groups the training step drives to exactly 0
ZERO_FRACTION = 0.4


@pytest.fixture(autouse=True)
def _threads():
    """One thread (overrides the conftest's two): these tiny convs gain nothing from a second
    thread, and on a shared CPU two threads make them many times slower."""
    torch.set_num_threads(1)


@dataclass(frozen=True)
class Member:
    family: str
    encoder: str
    output_stride: int = 8
    size: int = 32


FAMILIES = [
    Member("resnet", "resnet10t"),
    Member("resnet-d", "resnet18d"),
    Member("resnext", "resnext26ts"),
    Member("regnetx", "regnetx_002"),
    Member("regnety", "regnety_002"),
    Member("mobilenetv2", "mobilenetv2_035"),
    Member("mobilenetv3", "mobilenetv3_small_050"),
    Member("efficientnet", "tinynet_e"),
    Member("convnext", "convnext_atto"),
    Member("ghostnet", "ghostnet_050", 32, 64),
    Member("repvgg", "repvgg_a0"),
    Member("dla", "dla46_c", 32, 64),
]
SLOW_FAMILIES = [
    Member("hrnet", "hrnet_w18_small", 32, 64),
    Member("densenet", "densenet121", 32, 64),
]


@dataclass
class Outcome:
    """One family under one grouping, after the step, the report and the pruning."""

    model: nn.Module
    chosen: torch.Tensor
    zero_before: torch.Tensor
    report: SparsityReport
    found: list[ChannelRemovability]
    result: PruneResult
    fresh: torch.Tensor


def build(member: Member) -> nn.Module:
    torch.manual_seed(0)
    cfg = ModelConfig(
        encoder=member.encoder,
        output_stride=member.output_stride,
        head_channels=8,
        aspp_rates=(1, 2),
        classifier_channels=(8, 4),
    )
    return build_model(cfg, SPECS)


def images(member: Member, n: int, seed: int, grow: int = 0) -> torch.Tensor:
    size = member.size + grow
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def train_step(model: nn.Module, grouping: str, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One ProxAdamW step on the encoder whose group weights are huge for a random
    ``ZERO_FRACTION`` of the groups (driven to exactly 0) and 0 for the rest (a plain Adam
    step); returns the chosen groups and the groups that were zero before the step."""
    structure = build_grouping(grouping, model, ["encoder.*"])
    before = structure.group_max_abs() == 0
    chosen = torch.rand(structure.num_groups, generator=torch.Generator().manual_seed(1)) < ZERO_FRACTION
    groups = regularized_param_groups(model, structure, 1.0, reweight=lambda sizes: chosen.double() * 1e9)
    opt = ProxAdamW(groups, lr=1e-3)
    model.train()
    out = model(x)
    loss = sum(o.float().square().mean() for o in out.values())
    loss.backward()
    for p in model.parameters():  # layers no output uses (hrnet): ProxAdamW waits for all of a group
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    opt.step()
    model.eval()
    return chosen, before


def run_member(member: Member, grouping: str, base: nn.Module) -> Outcome:
    model = copy.deepcopy(base)
    chosen, before = train_step(model, grouping, images(member, 2, seed=2))
    report = model_sparsity_report(model, grouping, ["encoder.*"])
    x = images(member, 1, seed=3)
    found = removable_channels(model, channel_sets(model, ["*"], x))
    result = prune_model(model, x)
    return Outcome(model, chosen, before, report, found, result, images(member, 3, seed=4, grow=member.size // 2))


def check(member: Member, outcome: Outcome, grouping: str) -> None:
    model, report, found, result = outcome.model, outcome.report, outcome.found, outcome.result
    # the step zeroed chosen groups only (ProxAdamW leaves groups whose gradient was exactly 0)
    zero = build_grouping(grouping, model, ["encoder.*"]).group_max_abs() == 0
    assert not (zero & ~outcome.chosen & ~outcome.zero_before).any()
    assert (zero & outcome.chosen).sum() >= outcome.chosen.sum() // 2
    assert report.zero_groups == int(zero.sum())
    # every removable channel is cut (one kept per dead set); every zero channel kept has a reason
    assert result.removable_channels == sum(r.removable for r in found)
    assert result.removed_channels == sum(r.removable - r.all_removable for r in found)
    for r in found:
        assert r.removable <= r.zero_channels
        assert bool(r.kept_zero) == bool(r.reasons), r.name
    assert set(result.kept_zero) == {r.name for r in found if r.kept_zero}
    # grouped convs stay valid: equally wide groups on both sides
    for name, conv in result.model.named_modules():
        if is_grouped_conv(conv):
            assert conv.weight.shape == (conv.out_channels, conv.in_channels // conv.groups, *conv.kernel_size), name
    # outputs equal to the unpruned model on fresh inputs of another size, element-wise in float64
    errors = verify_pruned(model, result.model, [outcome.fresh], dtype=torch.float64)
    assert set(errors) == set(SPECS)
    # a pruned model file rebuilds the same model from the architecture and the changed widths
    rebuilt = apply_widths(build(member), changed_widths(result.model, build(member))).eval()
    rebuilt.load_state_dict(result.model.state_dict())
    with torch.no_grad():
        expected, actual = result.model(outcome.fresh), rebuilt(outcome.fresh)
    assert all(torch.equal(expected[k], actual[k]) for k in SPECS)


@pytest.fixture(scope="module", params=FAMILIES, ids=lambda m: m.family)
def family(request) -> tuple[Member, nn.Module]:
    """A family's member and its freshly built model, shared by the three groupings."""
    return request.param, build(request.param)


@pytest.mark.parametrize("grouping", GROUPINGS)
def test_family_trains_reports_and_prunes_exactly(family, grouping):
    member, base = family
    outcome = run_member(member, grouping, base)
    check(member, outcome, grouping)
    assert outcome.result.removed_channels > 0


@pytest.mark.slow
@pytest.mark.parametrize("member", SLOW_FAMILIES, ids=lambda m: m.family)
@pytest.mark.parametrize("grouping", GROUPINGS)
def test_heavy_family_trains_reports_and_prunes_exactly(member, grouping):
    check(member, run_member(member, grouping, build(member)), grouping)


def test_convnext_cuts_inner_mlp_channels_and_keeps_layernorm_streams():
    """Channels a LayerNorm normalises are zero but not removable (with the reason); the inner
    MLP channels between the pointwise layers are cut."""
    member = next(m for m in FAMILIES if m.family == "convnext")
    outcome = run_member(member, "coupled", build(member))
    kept = {r.name: r for r in outcome.found if r.kept_zero}
    assert kept and all(any("LayerNorm normalises over channels" in why for why in r.reasons) for r in kept.values())
    changed = outcome.result.changed_widths()
    assert any(".mlp.fc1" in name for name in changed)
    assert not any(name.endswith((".conv_dw", ".norm")) for name in changed)  # stream layers keep their width


def test_grouped_convs_lose_equal_numbers_per_group():
    """ResNeXt: grouped 3x3 convs are cut to equally wide groups, the group count unchanged."""
    member = next(m for m in FAMILIES if m.family == "resnext")
    outcome = run_member(member, "output_channels", build(member))
    before, after = outcome.result.widths_before, outcome.result.widths_after
    grouped = [n for n, w in before.items() if w.get("groups", 1) > 1 and w["groups"] != w["out"]]
    assert grouped and any(after[n] != before[n] for n in grouped)
    for n in grouped:
        assert after[n]["groups"] == before[n]["groups"]
        assert after[n]["in"] % after[n]["groups"] == 0 and after[n]["out"] % after[n]["groups"] == 0
