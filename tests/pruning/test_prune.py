"""Pruning removes exactly the removable channels and leaves every output unchanged."""

from __future__ import annotations

import copy

import pytest
import torch

from sparsemtl.cli import main
from sparsemtl.config import ModelConfig
from sparsemtl.models import build_model
from sparsemtl.models.complexity import count_macs, count_parameters
from sparsemtl.pruning import PruningVerificationError, layer_widths, prune_model, verify_pruned
from sparsemtl.pruning.prune import NOISE_ULPS, output_errors
from sparsemtl.sparsity import build_grouping, channel_sets, removable_channels
from sparsemtl.tasks.spec import TaskSpec

SPECS = {
    "segmentation": TaskSpec("segmentation", "segmentation", num_classes=4),
    "depth": TaskSpec("depth", "depth"),
    "smiling": TaskSpec("smiling", "attribute"),
}


def tiny_model(encoder: str = "resnet10t", seed: int = 0):
    torch.manual_seed(seed)
    cfg = ModelConfig(encoder=encoder, head_channels=8, aspp_rates=(1, 2), classifier_channels=(8, 4))
    return build_model(cfg, SPECS).eval()


def example(size: int = 32) -> torch.Tensor:
    return torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(1))


def zero_groups(model, grouping: str, fraction: float, seed: int = 0) -> None:
    """Zero a random ``fraction`` of the groups of ``grouping`` (whole groups, via the structure)."""
    structure = build_grouping(grouping, model, ["encoder.*", "heads.*.0*"])  # not the output layers
    chosen = torch.rand(structure.num_groups, generator=torch.Generator().manual_seed(seed)) < fraction
    with torch.no_grad():
        for param, dim, ids in zip(structure.params, structure.dims, structure.ids):
            rows = (chosen[ids.clamp(min=0)] & (ids >= 0)).nonzero().squeeze(1)
            param.index_fill_(dim, rows, 0.0)


def zero_channels(model, cset, channels: torch.Tensor) -> None:
    """Zero every writer slice of ``channels`` of one channel set."""
    with torch.no_grad():
        for w in cset.writers:
            model.get_parameter(w.name).index_fill_(w.dim, w.index[torch.isin(w.channel, channels)], 0.0)


def zero_coupled(model, x: torch.Tensor, fraction: float, seed: int = 0) -> None:
    """Zero random channels of every set (residual streams and encoder output included),
    but none that reaches an output, so the outputs stay informative."""
    gen = torch.Generator().manual_seed(seed)
    for cset in channel_sets(model, ["*"], x):
        pick = (torch.rand(cset.channels, generator=gen) < fraction) & ~cset.to_output
        zero_channels(model, cset, pick.nonzero().squeeze(1))


def expected_cut(model, x: torch.Tensor) -> int:
    """Removable channels, minus the one kept in every all-dead set."""
    found = removable_channels(model, channel_sets(model, ["*"], x))
    return sum(r.removable - r.all_removable for r in found)


def random_outputs_match(original, pruned, x: torch.Tensor) -> None:
    with torch.no_grad():
        a, b = original(x), pruned(x)
    for name in a:
        scale = a[name].abs().max()
        assert scale > 0, name
        assert ((a[name] - b[name]).abs().max() / scale) <= 1e-5, name


@pytest.mark.parametrize(("encoder", "grouping"), [("resnet10t", "input_channels"), ("resnet18d", "output_channels")])
def test_per_layer_groupings_prune_exactly(encoder, grouping):
    model, x = tiny_model(encoder), example()
    zero_groups(model, grouping, 0.5)
    result = prune_model(model, x)
    assert result.removed_channels == expected_cut(model, x) > 0
    random_outputs_match(model, result.model, torch.rand(3, 3, 48, 48))


BLOCK = "encoder.backbone.layer2.0"


@pytest.fixture(scope="module")
def bottleneck():
    """ResNet-26D with random coupled zeros (streams and encoder output included) and one
    entirely dead bottleneck, pruned once for all tests below."""
    model, x = tiny_model("resnet26d"), example()
    sets = channel_sets(model, ["*"], x)
    gen = torch.Generator().manual_seed(0)
    for cset in sets:
        dead = cset.name in (f"{BLOCK}.conv1", f"{BLOCK}.conv2")
        pick = torch.ones(cset.channels, dtype=torch.bool) if dead else torch.rand(cset.channels, generator=gen) < 0.4
        zero_channels(model, cset, (pick & ~cset.to_output).nonzero().squeeze(1))
    found = removable_channels(model, sets)
    return model, sets, found, prune_model(model, x)


def test_coupled_zeros_are_all_cut_and_outputs_match(bottleneck):
    model, _, found, result = bottleneck
    assert result.removable_channels == sum(r.removable for r in found)
    assert result.removed_channels == sum(r.removable - r.all_removable for r in found) > 0
    random_outputs_match(model, result.model, torch.rand(2, 3, 64, 64))


def test_streams_and_the_encoder_to_heads_interface_shrink(bottleneck):
    model, _, _, result = bottleneck
    before, after = result.widths_before, result.widths_after
    encoder_out = model.encoder.out_channels
    # the ASPP branches and the classifier read the encoder output: their inputs shrank
    assert after["heads.segmentation.0.convs.0.0"]["in"] < encoder_out
    assert after["heads.smiling.0"]["in"] == after["heads.depth.0.convs.1.0"]["in"] < encoder_out
    # a residual stream: its downsample writer and every block's last conv shrink together
    stream = after[f"{BLOCK}.downsample.1"]["out"]
    assert stream < before[f"{BLOCK}.downsample.1"]["out"]
    assert all(
        after[f"encoder.backbone.layer2.{i}.conv3"]["out"] == stream for i in range(len(model.encoder.backbone.layer2))
    )
    # the ASPP concatenation: the projection reads exactly what the branches still write
    branches = sum(after[n]["out"] for n in after if n.startswith("heads.segmentation.0.convs.") and n.endswith(".1"))
    assert after["heads.segmentation.0.project.0"]["in"] == branches


def test_removed_count_matches_the_root_width_drops(bottleneck):
    _, sets, _, result = bottleneck
    drops = sum(result.widths_before[s.name]["out"] - result.widths_after[s.name]["out"] for s in sets)
    assert drops == result.removed_channels


def test_dead_bottleneck_keeps_one_channel_per_set(bottleneck):
    _, _, found, result = bottleneck
    assert result.kept_dead_channels == sum(r.all_removable for r in found) >= 2
    assert result.widths_after[f"{BLOCK}.conv1"]["out"] == 1
    assert result.widths_after[f"{BLOCK}.conv2"] == {"type": "Conv2d", "in": 1, "out": 1, "groups": 1}
    assert result.widths_after[f"{BLOCK}.conv3"]["in"] == 1


def test_no_zero_channels_means_no_change():
    model, x = tiny_model(), example()
    result = prune_model(model, x)
    assert result.removed_channels == result.removable_channels == 0
    assert result.params_after == result.params_before
    assert not result.changed_widths()


def test_sizes_totals_and_widths_are_consistent_and_the_input_is_untouched():
    model, x = tiny_model(), example()
    zero_coupled(model, x, 0.5)
    state = copy.deepcopy(model.state_dict())
    result = prune_model(model, x, input_size=(48, 48))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert result.widths_before == layer_widths(model)
    assert result.widths_after == layer_widths(result.model)
    assert result.params_before == count_parameters(model) > result.params_after == count_parameters(result.model)
    assert result.macs_before == count_macs(model, (48, 48)) > result.macs_after == count_macs(result.model, (48, 48))
    assert result.macs_after < 0.8 * result.macs_before
    for name, w in result.widths_after.items():
        module = result.model.get_submodule(name)
        assert module.weight.shape[0] == w["out"]
    data = result.to_dict()
    assert data["removed_channels"] == result.removed_channels and set(data["max_relative_error"]) == set(SPECS)
    table = result.format_table()
    assert "parameters" in table and "encoder.backbone.conv1.0" in table


def test_verify_pruned_names_the_corrupted_output():
    model, x = tiny_model(), example()
    zero_coupled(model, x, 0.3)
    pruned = prune_model(model, x).model
    with torch.no_grad():
        pruned.heads.depth[-1].bias.add_(0.5)
    with pytest.raises(PruningVerificationError, match="'depth' differs in its values"):
        verify_pruned(model, pruned, [torch.rand(2, 3, 32, 32)])
    assert issubclass(PruningVerificationError, ValueError)


def test_check_inputs_are_verified_too():
    model, x = tiny_model(), example()
    result = prune_model(model, x, check_inputs=[torch.rand(2, 3, 40, 40)])
    assert set(result.max_relative_error) == set(SPECS)


class Offset(torch.nn.Module):
    """``{"out": offset + scale * f(x)}``: a nearly constant output when offset >> scale."""

    def __init__(self, offset: float, scale: float, flip: bool = False) -> None:
        super().__init__()
        self.offset, self.scale, self.flip = offset, scale, flip

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        f = x[:, :1]
        return {"out": self.offset + self.scale * ((1 - f) if self.flip else f)}


def test_a_wrong_input_dependent_part_under_a_large_constant_is_caught():
    """The pruned model answers 1 - f instead of f, but 1e-5 of the constant hides it from any
    per-value check; the difference check on f(x1) - f(x2) sees it."""
    x = [torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))]
    original, wrong = Offset(10.0, 5e-5), Offset(10.0, 5e-5, flip=True)
    errors = output_errors(original, wrong, x)["out"]
    assert errors.relative < 1e-5 and errors.values <= 1.0 < errors.differences
    with pytest.raises(PruningVerificationError, match="'out' differs in its input-dependent part"):
        verify_pruned(original, wrong, x)
    assert verify_pruned(original, Offset(10.0, 5e-5), x) == {"out": 0.0}


def test_float64_verification_sees_what_float32_rounding_hides():
    """At offset 1000 the float32 rounding floor (NOISE_ULPS ulps of 1000) exceeds the wrong
    part; in float64 it is 10^9 times finer."""
    x = [torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))]
    original, wrong = Offset(1000.0, 5e-4), Offset(1000.0, 5e-4, flip=True)
    assert 2 * 5e-4 < NOISE_ULPS * torch.finfo(torch.float32).eps * 1000
    assert verify_pruned(original, wrong, x)["out"] < 1e-5  # fooled in float32
    with pytest.raises(PruningVerificationError, match="input-dependent part"):
        verify_pruned(original, wrong, x, dtype=torch.float64)
    assert x[0].dtype == torch.float32  # the caller's inputs are not converted in place


def test_float64_verification_of_a_real_pruning_runs_on_copies():
    model, x = tiny_model(), example()
    zero_coupled(model, x, 0.3)
    result = prune_model(model, x, verify_dtype=torch.float64)
    assert result.verify_dtype == "float64" and max(result.max_relative_error.values()) < 1e-12
    assert next(model.parameters()).dtype == next(result.model.parameters()).dtype == torch.float32
    assert prune_model(model, x).verify_dtype == "float32"


def test_cli_passes_the_verify_dtype_and_rejects_others(monkeypatch, tmp_path, capsys):
    import sparsemtl.pruning

    seen = {}

    class Result:
        def format_table(self) -> str:
            return "table"

    def fake_prune_run(source, out, input_size=None, onnx=False, verify_dtype=None, round_to=1):
        seen["dtype"] = verify_dtype
        return Result()

    monkeypatch.setattr(sparsemtl.pruning, "prune_run", fake_prune_run)
    out = str(tmp_path / "p.pt")
    assert main(["prune", "run", "--out", out, "--verify-dtype", "float64"]) == 0 and seen["dtype"] is torch.float64
    assert main(["prune", "run", "--out", out]) == 0 and seen["dtype"] is None
    assert main(["prune", "run", "--out", out, "--verify-dtype", "float16"]) == 2
    assert "--verify-dtype" in capsys.readouterr().err
