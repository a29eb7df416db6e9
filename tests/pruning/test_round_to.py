"""``round_to``: every cut width becomes a multiple of N (or stays whole) by keeping the fewest
zero channels, and the pruned model stays exact."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from sparsemtl.cli import main
from sparsemtl.errors import ConfigError
from sparsemtl.pruning import prune_model
from sparsemtl.sparsity import channel_sets, removable_channels
from tests.test_cli_errors import one_line_error

from .test_io import make_run
from .test_prune import example, random_outputs_match, tiny_model, zero_coupled


class Net(nn.Module):
    """conv a (3 -> width), BN, ReLU, [grouped 3x3 conv g (width -> width), BN, ReLU,] conv c
    (width -> 2). The set of ``a``'s channels is the one the tests zero."""

    def __init__(self, width: int, groups: int = 0) -> None:
        super().__init__()
        torch.manual_seed(0)
        layers: list[nn.Module] = [nn.Conv2d(3, width, 1), nn.BatchNorm2d(width), nn.ReLU()]
        if groups:
            layers += [nn.Conv2d(width, width, 3, padding=1, groups=groups), nn.BatchNorm2d(width), nn.ReLU()]
        self.body = nn.Sequential(*layers, nn.Conv2d(width, 2, 1))
        with torch.no_grad():
            for bn in (m for m in self.modules() if isinstance(m, nn.BatchNorm2d)):
                bn.running_mean.uniform_(-0.5, 0.5)
                bn.running_var.uniform_(0.5, 2.0)
                bn.bias.uniform_(-0.5, 0.5)
        self.eval()

    @property
    def a(self) -> nn.Conv2d:
        return self.body[0]

    @property
    def bn(self) -> nn.BatchNorm2d:
        return self.body[1]

    @property
    def c(self) -> nn.Conv2d:
        return self.body[-1]

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": self.body(x)}

    def kill(self, channels: list[int]) -> Net:
        """Make ``a``'s ``channels`` exactly 0: filter, bias, BN gamma and beta."""
        with torch.no_grad():
            for param in (self.a.weight, self.a.bias, self.bn.weight, self.bn.bias):
                param[channels] = 0.0
        return self


def image(size: int = 8) -> torch.Tensor:
    return torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(1))


def prune(net: nn.Module, round_to: int):
    return prune_model(net, image(), check_inputs=[torch.rand(3, 3, 12, 12)], round_to=round_to)


ZEROS = [1, 2, 4, 5, 7, 8, 9]  # 7 of 10 channels dead: 0, 3 and 6 carry signal


@pytest.mark.parametrize(
    ("round_to", "width"),
    # 3 live channels; the smallest multiple of N >= 3, or 10 when that exceeds 10
    [(1, 3), (2, 4), (3, 3), (4, 4), (5, 5), (6, 6), (8, 8), (10, 10), (11, 10), (16, 10)],
)
def test_a_set_keeps_the_fewest_zero_channels_that_round_its_width(round_to, width):
    net = Net(10).kill(ZEROS)
    result = prune(net, round_to)
    assert result.model.a.out_channels == result.model.c.in_channels == width
    assert result.removed_channels == 10 - width
    assert result.kept_for_rounding == width - 3 and result.round_to == round_to
    # the lowest-numbered zero channels stay: c reads exactly the original columns 0..
    kept = sorted([0, 3, 6] + ZEROS[: width - 3])
    assert torch.equal(result.model.c.weight, net.c.weight[:, kept])
    x = torch.rand(4, 3, 9, 9)
    with torch.no_grad():
        torch.testing.assert_close(result.model(x)["out"], net(x)["out"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("round_to", "width"), [(1, 1), (3, 3), (4, 4), (16, 10)])
def test_an_all_dead_set_rounds_its_one_kept_channel_too(round_to, width):
    result = prune(Net(10).kill(list(range(10))), round_to)
    assert result.model.a.out_channels == width
    assert result.kept_dead_channels == 1 and result.kept_for_rounding == width - 1


@pytest.mark.parametrize(
    ("round_to", "width"),
    # 3 conv groups of 4, 3 zero per group: 1 live channel per group, widths 3 * m with m <= 4
    [(1, 3), (2, 6), (3, 3), (4, 12), (5, 12), (6, 6), (9, 9), (12, 12)],
)
def test_grouped_convs_keep_equal_numbers_per_group(round_to, width):
    net = Net(12, groups=3).kill([0, 1, 2, 4, 5, 6, 8, 9, 10])
    result = prune(net, round_to)
    grouped = result.model.body[3]
    assert (grouped.in_channels, grouped.groups) == (width, 3)
    assert result.model.a.out_channels == width
    assert result.kept_for_rounding == width - 3
    x = torch.rand(2, 3, 9, 9)
    with torch.no_grad():
        torch.testing.assert_close(result.model(x)["out"], net(x)["out"], rtol=1e-5, atol=1e-6)


def expected_width(channels: int, removable: int, round_to: int) -> int:
    """Hand rule: the live channels (one dead one for an all-dead set) rounded up to a multiple of
    ``round_to``, at most the original width."""
    live = max(channels - removable, 1)
    return min(channels, math.ceil(live / round_to) * round_to)


@pytest.fixture(scope="module")
def resnet():
    """ResNet-18-D with 60% random coupled zeros (streams and encoder output included), pruned at
    round_to 1, 4 and 8."""
    model, x = tiny_model("resnet18d"), example()
    zero_coupled(model, x, 0.6)
    sets = channel_sets(model, ["*"], x)
    found = removable_channels(model, sets)
    results = {n: prune_model(model, x, round_to=n) for n in (1, 4, 8)}
    return model, sets, found, results


@pytest.mark.parametrize("round_to", [1, 4, 8])
def test_every_cut_width_of_a_resnet_is_the_smallest_multiple(resnet, round_to):
    model, sets, found, results = resnet
    result = results[round_to]
    roots = 0
    for cset, r in zip(sets, found):
        before = result.widths_before[cset.name]["out"]
        if cset.channels == before and not cset.conv_groups:  # the set is its root's whole width
            roots += 1
            assert result.widths_after[cset.name]["out"] == expected_width(before, r.removable, round_to), cset.name
    assert roots >= 20
    for name, (b, a) in result.changed_widths().items():
        for side in ("in", "out"):
            assert a[side] == b[side] or a[side] % round_to == 0, (name, side, b, a)
    assert result.kept_for_rounding == sum(r.removable - r.all_removable for r in found) - result.removed_channels
    random_outputs_match(model, result.model, torch.rand(2, 3, 48, 48))


def test_round_to_1_is_the_plain_cut_and_larger_multiples_keep_more(resnet):
    _, _, found, results = resnet
    plain, by4, by8 = results[1], results[4], results[8]
    assert plain.kept_for_rounding == 0 and plain.to_dict()["round_to"] == 1
    assert plain.removed_channels == sum(r.removable - r.all_removable for r in found)
    assert "round_to" not in plain.format_table()
    assert 0 < by4.kept_for_rounding < by8.kept_for_rounding
    for rounded in (by4, by8):
        assert rounded.removed_channels + rounded.kept_for_rounding == plain.removed_channels
        assert plain.macs_after < rounded.macs_after < rounded.macs_before
        assert f"round_to {rounded.round_to}: {rounded.kept_for_rounding:,} more zero" in rounded.format_table()


@pytest.mark.parametrize("bad", [0, -4, 2.0, True, "8"])
def test_prune_model_refuses_a_bad_round_to(bad):
    with pytest.raises(ConfigError, match=r"round_to: expected an integer >= 1"):
        prune_model(Net(4), image(), round_to=bad)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("0", "integer >= 1"), ("-3", "integer >= 1"), ("x", "invalid int value: 'x'"), ("2.5", "'2.5'")],
)
def test_cli_refuses_a_bad_round_to_before_reading_the_model(capsys, tmp_path, value, expected):
    out = tmp_path / "p.pt"
    argv = ["prune", str(tmp_path / "missing"), "--out", str(out), "--round-to", value]
    line = one_line_error(capsys, argv, "argument --round-to", expected)
    assert line.endswith(f"got {value}") or "invalid" in line
    assert not out.exists()


def test_cli_prune_round_to_records_it_and_bench_runs_channels_last(tmp_path, tiny_config, capsys):
    run_dir, _, _ = make_run(tmp_path, tiny_config())
    out = tmp_path / "p8.pt"
    assert main(["prune", str(run_dir), "--out", str(out), "--round-to", "8"]) == 0
    assert "round_to 8:" in capsys.readouterr().out
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["round_to"] == 8 and report["kept_for_rounding"] > 0 and report["removed_channels"] > 0
    for name, after in report["widths_after"].items():
        before = report["widths_before"][name]
        assert all(after[s] == before[s] or after[s] % 8 == 0 for s in ("in", "out")), name
    bench_json = tmp_path / "bench.json"
    cmd = ["bench", str(run_dir), str(out), "--batch", "1", "--min-run-time", "0.02", "--channels-last"]
    assert main([*cmd, "--json", str(bench_json)]) == 0
    assert "channels_last" in capsys.readouterr().out
    results = json.loads(bench_json.read_text())["results"]
    assert [lat["channels_last"] for r in results for lat in r["latencies"]] == [True, True]
    assert results[1]["params"] == report["params_after"]
