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
from ..sparsity.channels import ChannelRemovability, ChannelSet, graph_channel_sets, removable_channels
from ..sparsity.groupings import matching_convs
from ..tables import format_table
from .export import export_onnx


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
            "zero_groups": dict(self.zero_groups),
            "max_relative_error": dict(self.max_relative_error),
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
        return f"{totals}\n{note}{found}\n\n{layers}"


def _ratio(before: int, after: int) -> float:
    return before / after if after else float("inf")


def relative_errors(original: nn.Module, pruned: nn.Module, inputs: Sequence[torch.Tensor]) -> dict[str, float]:
    """Per output, the largest max|a - b| / max|a| over ``inputs`` (eval mode, flags restored)."""
    errors: dict[str, float] = {}
    modes = [(m, m.training) for m in (*original.modules(), *pruned.modules())]
    original.eval()
    pruned.eval()
    try:
        with torch.no_grad():
            for x in inputs:
                expected, actual = original(x), pruned(x)
                for name, a in expected.items():
                    tiny = torch.finfo(a.dtype).tiny
                    err = float((a - actual[name]).abs().max() / max(float(a.abs().max()), tiny))
                    errors[name] = max(errors.get(name, 0.0), err)
    finally:
        for module, training in modes:
            module.training = training
    return errors


def verify_pruned(
    original: nn.Module, pruned: nn.Module, inputs: Sequence[torch.Tensor], rtol: float = 1e-5
) -> dict[str, float]:
    """Raise :class:`PruningVerificationError` when any output moved by more than ``rtol``
    (relative to its largest magnitude); return the relative errors otherwise."""
    errors = relative_errors(original, pruned, inputs)
    for name, err in errors.items():
        if not err <= rtol:  # also catches NaN
            raise PruningVerificationError(f"pruned output {name!r} differs by {err:.3e} relative (> rtol {rtol:g})")
    return errors


def channels_to_cut(removability: ChannelRemovability) -> torch.Tensor:
    """Set channels to remove; of an all-dead set the first channel stays, so shapes stay valid."""
    cut = removability.mask.nonzero().squeeze(1)
    return cut[1:] if removability.all_removable else cut


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
    group.prune()
    return len(idxs)


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
) -> PruneResult:
    """Cut every exactly removable channel of a copy of ``model``, then verify the copy.

    ``example_inputs`` fixes the tracing shape (default 1x3x64x64 random); ``input_size`` the
    MAC count (default: the example's). Verification runs on two random batches plus
    ``check_inputs``; a mismatch raises :class:`PruningVerificationError`.
    """
    x = _example_input(model, example_inputs)
    size = tuple(input_size or x.shape[-2:])
    original = model
    pruned = copy.deepcopy(model).eval()
    matching_convs(pruned, patterns)  # a typo fails before the trace
    graph = ModelGraph(pruned, x)
    sets = graph_channel_sets(graph, patterns)
    found = removable_channels(pruned, sets)
    survivors: dict[nn.Module, list[int]] = {}
    removed = 0
    for cset, removability in zip(sets, found):
        cut = channels_to_cut(removability)
        if cut.numel():
            removed += _cut_set(graph.dependency, cset.name, root_indices(cset, cut), survivors)
    randoms = [torch.rand(2, *x.shape[1:], dtype=x.dtype, device=x.device) for _ in range(2)]
    errors = verify_pruned(original, pruned, [*randoms, *check_inputs], rtol)
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
) -> PruneResult:
    """Prune a trained run (or a saved pruned model) and write ``out_path``, its JSON report
    (``.json`` next to it) and, with ``onnx``, an ``.onnx`` export.

    Verified on random inputs and on a batch of the run's own validation images; ``input_size``
    (default: the configured image size) is used for tracing, MACs and the export.
    """
    source = open_model(run_dir_or_checkpoint)
    model, config, specs = source.model, source.config, source.specs
    size = tuple(input_size or config.data.image_size)
    result = prune_model(model, torch.rand(1, 3, *size), input_size=size, check_inputs=[validation_images(config)])
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
