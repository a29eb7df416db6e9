"""Physically remove the exactly removable channels of a model with Torch-Pruning.

Which channels go is decided by :func:`sparsemtl.sparsity.removable_channels` (dead or
unread channels that reach no output); Torch-Pruning only does the surgery. The copy is traced
once: its channel sets are computed on that model graph, then cut one set at a time on it
(re-tracing per set costs ~0.5 s each on a ResNet-26D). The graph is private to the pruning
(built directly, not through the shared cache of :func:`sparsemtl.models.graph.model_graph`)
because cutting rewrites it. It stays valid from one cut to the next because Torch-Pruning prunes
modules in place, its concat pruner updates the cached concat sizes and ``get_pruning_group``
recomputes the concat/split index mappings from them. Root indices are kept in the original
numbering and mapped to the current one through the surviving original channels of each layer.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
import torch_pruning as tp
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..config import Config
from ..data import build_dataset
from ..errors import PruningVerificationError
from ..models import build_model
from ..models.complexity import count_macs, count_parameters
from ..models.graph import ModelGraph
from ..models.widths import WIDTH_TYPES, changed_widths, layer_widths
from ..runs import atomic_write_json, open_model, save_pruned
from ..runs.model_file import without_pretrained
from ..sparsity import build_grouping
from ..sparsity.channels import ChannelSet, graph_channel_sets, is_grouped_conv, removable_channels
from ..sparsity.groupings import matching_convs
from ..tables import format_table
from .export import export_onnx
from .rounding import check_round_to, cut_mask


@dataclass
class PruneResult:
    """The pruned model and what pruning changed."""

    model: nn.Module
    widths_before: dict[str, dict[str, Any]]
    widths_after: dict[str, dict[str, Any]]
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    input_size: tuple[int, int]
    removable_channels: int
    removed_channels: int
    kept_dead_channels: int
    zero_groups: dict[str, Any] = field(default_factory=dict)
    max_relative_error: dict[str, float] = field(default_factory=dict)
    kept_zero: dict[str, dict[str, Any]] = field(default_factory=dict)
    verify_dtype: str = "float32"
    round_to: int = 1
    kept_for_rounding: int = 0

    def changed_widths(self) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
        """Layers whose shape changed: name -> (before, after)."""
        return {n: (w, self.widths_after[n]) for n, w in self.widths_before.items() if w != self.widths_after[n]}

    def to_dict(self) -> dict[str, Any]:
        """Plain data for the JSON report (the model itself is left out)."""
        return {
            "input_size": list(self.input_size),
            "params_before": self.params_before,
            "params_after": self.params_after,
            "macs_before": self.macs_before,
            "macs_after": self.macs_after,
            "removable_channels": self.removable_channels,
            "removed_channels": self.removed_channels,
            "kept_dead_channels": self.kept_dead_channels,
            "round_to": self.round_to,
            "kept_for_rounding": self.kept_for_rounding,
            "zero_groups": dict(self.zero_groups),
            "max_relative_error": dict(self.max_relative_error),
            "verify_dtype": self.verify_dtype,
            "kept_zero_channels": dict(self.kept_zero),
            "widths_before": self.widths_before,
            "widths_after": self.widths_after,
        }

    def format_table(self) -> str:
        """Totals, then one row per layer whose width changed."""
        totals = format_table(
            ["quantity", "before", "after", "ratio"],
            [
                ["parameters", self.params_before, self.params_after, _ratio(self.params_before, self.params_after)],
                [
                    f"MACs {self.input_size[0]}x{self.input_size[1]}",
                    self.macs_before,
                    self.macs_after,
                    _ratio(self.macs_before, self.macs_after),
                ],
                ["channels removed", self.removable_channels, self.removed_channels, float(self.kept_dead_channels)],
            ],
        )
        rows = [
            [name, f"{b['in']}->{b['out']}", f"{a['in']}->{a['out']}"] for name, (b, a) in self.changed_widths().items()
        ]
        layers = format_table(["layer", "in->out before", "in->out after"], rows)
        found = ""
        if self.zero_groups:
            z = self.zero_groups
            found = f"\nzero groups found: {z['zero']:,} of {z['groups']:,} ({z['grouping']} grouping)"
        note = "(last column of 'channels removed': dead channels kept, one per dead set)"
        if self.round_to > 1:
            note += (
                f"\nround_to {self.round_to}: {self.kept_for_rounding:,} more zero channels kept "
                f"so every cut width is a multiple of {self.round_to}"
            )
        kept = ""
        if self.kept_zero:
            rows = [[name, k["channels"], "; ".join(k["reasons"])] for name, k in self.kept_zero.items()]
            kept = "\n\n" + format_table(["channel set", "zero channels kept", "why"], rows)
        return f"{totals}\n{note}{found}\n\n{layers}{kept}"


def _ratio(before: int, after: int) -> float:
    return before / after if after else float("inf")


@dataclass(frozen=True)
class OutputError:
    """How far one pruned output is from the original over the checked inputs.

    ``relative``: max|a - b| / max|a|. ``values``: the worst element-wise ratio of |a - b| to
    its tolerance ``atol + rtol * |a|`` with ``atol = rtol * max|a|`` of that output.
    ``differences``: the same for the input-dependent part, ``a(x_i) - a(x_j)`` against
    ``b(x_i) - b(x_j)`` over neighbouring samples of a batch, so a nearly constant output cannot
    hide a wrong response to its input. Its tolerance has a rounding floor of ``NOISE_ULPS``
    units of the output's magnitude in the checked dtype: float64 checks the input-dependent part
    about 10^9 times more finely than float32. A ratio <= 1 passes.
    """

    relative: float
    values: float
    differences: float

    @property
    def ok(self) -> bool:
        return self.values <= 1.0 and self.differences <= 1.0  # False for NaN too


#: rounding floor of the difference check, in units of eps * max|a| of the output
NOISE_ULPS = 16


def output_errors(
    original: nn.Module,
    pruned: nn.Module,
    inputs: Sequence[torch.Tensor],
    rtol: float = 1e-5,
    dtype: torch.dtype | None = None,
) -> dict[str, OutputError]:
    """Compare every output of ``pruned`` with ``original`` on ``inputs`` (eval mode, flags
    restored). With ``dtype`` both models run as copies in that dtype, e.g. float64 so rounding
    cannot mask a small error."""
    if dtype is not None:
        original, pruned = (copy.deepcopy(m).to(dtype) for m in (original, pruned))
        inputs = [x.to(dtype) for x in inputs]
    worst: dict[str, list[float]] = {}
    modes = [(m, m.training) for m in (*original.modules(), *pruned.modules())]
    original.eval()
    pruned.eval()
    try:
        with torch.no_grad():
            for x in inputs:
                expected, actual = original(x), pruned(x)
                for name, a in expected.items():
                    errors = _compare(a.double(), actual[name].double(), rtol, torch.finfo(a.dtype).eps)
                    worst[name] = [max(w, e) for w, e in zip(worst.get(name, errors), errors)]
    finally:
        for module, training in modes:
            module.training = training
    return {name: OutputError(*w) for name, w in worst.items()}


def _compare(a: torch.Tensor, b: torch.Tensor, rtol: float, eps: float) -> list[float]:
    """[relative, values, differences] of one batch (see :class:`OutputError`); NaN wins."""
    scale = float(a.abs().max())
    relative = _worst((a - b).abs() / max(scale, torch.finfo(torch.float64).tiny))
    values = _worst((a - b).abs() / (rtol * scale + rtol * a.abs()).clamp_min(torch.finfo(torch.float64).tiny))
    differences = 0.0
    if a.shape[0] > 1:
        da, db = a[1:] - a[:-1], b[1:] - b[:-1]
        floor = NOISE_ULPS * eps * scale
        tol = rtol * float(da.abs().max()) + rtol * da.abs() + floor
        differences = _worst((da - db).abs() / tol.clamp_min(torch.finfo(torch.float64).tiny))
    return [relative, values, differences]


def _worst(ratio: torch.Tensor) -> float:
    return float("nan") if bool(ratio.isnan().any()) else float(ratio.max())


def relative_errors(
    original: nn.Module, pruned: nn.Module, inputs: Sequence[torch.Tensor], dtype: torch.dtype | None = None
) -> dict[str, float]:
    """Per output, the largest max|a - b| / max|a| over ``inputs``."""
    return {name: e.relative for name, e in output_errors(original, pruned, inputs, dtype=dtype).items()}


def verify_pruned(
    original: nn.Module,
    pruned: nn.Module,
    inputs: Sequence[torch.Tensor],
    rtol: float = 1e-5,
    dtype: torch.dtype | None = None,
) -> dict[str, float]:
    """Raise :class:`PruningVerificationError` when any output, or its input-dependent part,
    fails the element-wise check of :class:`OutputError`; return the relative errors otherwise."""
    errors = output_errors(original, pruned, inputs, rtol, dtype)
    for name, e in errors.items():
        if not e.ok:
            if not e.values <= 1.0:
                what, ratio, hint = "values", e.values, ""
            else:
                what, ratio = "input-dependent part f(x1) - f(x2)", e.differences
                hint = "; a nearly constant output is checked only to its rounding: --verify-dtype float64 checks finer"
            raise PruningVerificationError(
                f"pruned output {name!r} differs in its {what}: {ratio:.3g} times the tolerance "
                f"(rtol {rtol:g}; max relative error {e.relative:.3e}){hint}"
            )
    return {name: e.relative for name, e in errors.items()}


def root_indices(cset: ChannelSet, channels: torch.Tensor) -> list[int]:
    """Output indices of the set's root conv holding ``channels`` (original numbering)."""
    weight = next(w for w in cset.writers if w.name == f"{cset.name}.weight" and w.dim == 0)
    lookup = torch.full((cset.channels,), -1, dtype=torch.long)
    lookup[weight.channel] = weight.index
    index = lookup[channels]
    if (index < 0).any():
        raise RuntimeError(f"channel set {cset.name!r}: some channels are not written by its root conv")
    return index.tolist()


def _out_size(module: nn.Module) -> int:
    if isinstance(module, _BatchNorm):
        return module.num_features
    return module.out_features if isinstance(module, nn.Linear) else module.out_channels


def _cut_set(
    graph: tp.DependencyGraph, root_name: str, original_idxs: list[int], survivors: dict[nn.Module, list[int]]
) -> int:
    """Prune one channel set; return how many channels went."""
    root = graph.model.get_submodule(root_name)
    alive = survivors.setdefault(root, list(range(_out_size(root))))
    position = {orig: i for i, orig in enumerate(alive)}
    idxs = [position[i] for i in original_idxs]
    group = graph.get_pruning_group(root, graph.get_pruner_of_module(root).prune_out_channels, idxs)
    if not graph.check_pruning_group(group):
        raise RuntimeError(f"Torch-Pruning refuses to cut {len(idxs)} channels of {root_name!r}")
    _track_survivors(graph, group, survivors)
    grouped = _grouped_cuts(graph, group)
    group.prune()
    for conv, (weight, inputs, outputs) in grouped.items():
        _repack_grouped(conv, weight, inputs, outputs)
    return len(idxs)


def _grouped_cuts(graph: tp.DependencyGraph, group: tp.Group) -> dict[nn.Module, tuple[torch.Tensor, set, set]]:
    """Weight before the cut, and the input and output indices cut, of every grouped conv whose
    inputs the group cuts."""
    cuts: dict[nn.Module, tuple[torch.Tensor, set, set]] = {}
    for item in group.items:
        module = item.dep.target.module
        if is_grouped_conv(module):
            weight, inputs, outputs = cuts.setdefault(module, (module.weight.detach().clone(), set(), set()))
            out = graph.is_out_channel_pruning_fn(item.dep.handler)
            (outputs if out else inputs).update(int(i) for i in item.idxs)
    return {m: c for m, c in cuts.items() if c[1]}


def _repack_grouped(conv: nn.Module, weight: torch.Tensor, inputs: set, outputs: set) -> None:
    """Rebuild a grouped conv's weight after its inputs were cut.

    Torch-Pruning cuts the same input positions from every conv group (those of the first
    group); the channel analysis only guarantees equally many per group, at any positions, so
    each group's filters keep their own surviving input columns.
    """
    groups, per_group, rows = conv.groups, weight.shape[1], weight.shape[0] // conv.groups
    blocks = []
    for k in range(groups):
        keep = [p for p in range(per_group) if k * per_group + p not in inputs]
        blocks.append(weight[k * rows : (k + 1) * rows, keep])
    if len({b.shape[1] for b in blocks}) != 1:
        raise RuntimeError(f"grouped conv {conv}: unequal input cuts per group")
    kept_rows = [r for r in range(weight.shape[0]) if r not in outputs]
    new = torch.cat(blocks)[kept_rows]
    conv.weight = nn.Parameter(new.to(conv.weight.device), requires_grad=conv.weight.requires_grad)


def _track_survivors(graph: tp.DependencyGraph, group: tp.Group, survivors: dict[nn.Module, list[int]]) -> None:
    """Drop the cut output indices from every written layer's list of original channels."""
    for item in group.items:
        module = item.dep.target.module
        if isinstance(module, WIDTH_TYPES) and graph.is_out_channel_pruning_fn(item.dep.handler):
            alive = survivors.setdefault(module, list(range(_out_size(module))))
            gone = {int(i) for i in item.idxs}
            survivors[module] = [orig for i, orig in enumerate(alive) if i not in gone]


def _example_input(model: nn.Module, example_inputs: torch.Tensor | None) -> torch.Tensor:
    ref = next(model.parameters())
    x = torch.rand(1, 3, 64, 64) if example_inputs is None else example_inputs[:1]
    return x.detach().to(device=ref.device, dtype=ref.dtype)


def prune_model(
    model: nn.Module,
    example_inputs: torch.Tensor | None = None,
    patterns: Sequence[str] = ("*",),
    input_size: tuple[int, int] | None = None,
    check_inputs: Sequence[torch.Tensor] = (),
    rtol: float = 1e-5,
    verify_dtype: torch.dtype | None = None,
    round_to: int = 1,
) -> PruneResult:
    """Cut every exactly removable channel of a copy of ``model``, then verify the copy.

    ``example_inputs`` fixes the tracing shape (default 1x3x64x64 random); ``input_size`` the
    MAC count (default: the example's). With ``round_to > 1`` each channel set keeps just enough
    zero channels that its cut width is a multiple of ``round_to`` (or stays whole, see
    :mod:`sparsemtl.pruning.rounding`). Verification (:func:`verify_pruned`, in
    ``verify_dtype`` when given) runs on two random batches plus ``check_inputs``; a mismatch
    raises :class:`PruningVerificationError`.
    """
    round_to = check_round_to(round_to)
    x = _example_input(model, example_inputs)
    size = tuple(input_size or x.shape[-2:])
    original = model
    pruned = copy.deepcopy(model).eval()
    matching_convs(pruned, patterns)  # a typo fails before the trace
    graph = ModelGraph(pruned, x)
    sets = graph_channel_sets(graph, patterns)
    found = removable_channels(pruned, sets)
    survivors: dict[nn.Module, list[int]] = {}
    removed = rounding = 0
    for cset, removability in zip(sets, found):
        cut = cut_mask(removability, cset.conv_groups, round_to)
        rounding += removability.removable - removability.all_removable - int(cut.sum())
        if cut.any():
            removed += _cut_set(graph.dependency, cset.name, root_indices(cset, cut.nonzero().squeeze(1)), survivors)
    randoms = [torch.rand(2, *x.shape[1:], dtype=x.dtype, device=x.device) for _ in range(2)]
    errors = verify_pruned(original, pruned, [*randoms, *check_inputs], rtol, verify_dtype)
    kept = {r.name: {"channels": r.kept_zero, "reasons": list(r.reasons)} for r in found if r.kept_zero}
    return PruneResult(
        model=pruned,
        widths_before=layer_widths(original),
        widths_after=layer_widths(pruned),
        params_before=count_parameters(original),
        params_after=count_parameters(pruned),
        macs_before=count_macs(original, size),
        macs_after=count_macs(pruned, size),
        input_size=size,
        removable_channels=sum(r.removable for r in found),
        removed_channels=removed,
        kept_dead_channels=sum(r.all_removable for r in found),
        max_relative_error=errors,
        kept_zero=kept,
        verify_dtype=str(verify_dtype or x.dtype).removeprefix("torch."),
        round_to=round_to,
        kept_for_rounding=rounding,
    )


def validation_images(config: Config, count: int = 4) -> torch.Tensor:
    """The first ``count`` images of the run's validation split, as one batch."""
    dataset = build_dataset(config.data, "val", config.tasks)
    return torch.stack([dataset[i]["image"] for i in range(min(count, len(dataset)))])


def prune_run(
    run_dir_or_checkpoint: str | Path,
    out_path: str | Path,
    input_size: tuple[int, int] | None = None,
    onnx: bool = False,
    verify_dtype: torch.dtype | None = None,
    round_to: int = 1,
) -> PruneResult:
    """Prune a trained run (or a saved pruned model) and write ``out_path``, its JSON report
    (``.json`` next to it) and, with ``onnx``, an ``.onnx`` export.

    Verified on random inputs and on a batch of the run's own validation images; ``input_size``
    (default: the configured image size) is used for tracing, MACs and the export;
    ``verify_dtype`` (e.g. float64) is the dtype the verification runs both models in;
    ``round_to`` rounds every cut width to its multiples (see :func:`prune_model`).
    """
    round_to = check_round_to(round_to)  # before the model is read
    source = open_model(run_dir_or_checkpoint)
    model, config, specs = source.model, source.config, source.specs
    size = tuple(input_size or config.data.image_size)
    result = prune_model(
        model,
        torch.rand(1, 3, *size),
        input_size=size,
        check_inputs=[validation_images(config)],
        verify_dtype=verify_dtype,
        round_to=round_to,
    )
    structure = build_grouping(config.sparsity.grouping, model, config.sparsity.modules)
    zero = int((structure.group_max_abs() == 0).sum())
    result.zero_groups = {"grouping": config.sparsity.grouping, "groups": structure.num_groups, "zero": zero}
    out_path = Path(out_path)
    reference = build_model(without_pretrained(config).model, specs)
    save_pruned(out_path, result.model, config, specs, changed_widths(result.model, reference))
    atomic_write_json(out_path.with_suffix(".json"), result.to_dict())
    if onnx:
        export_onnx(result.model, out_path.with_suffix(".onnx"), size)
    return result
