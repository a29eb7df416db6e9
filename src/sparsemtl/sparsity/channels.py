"""Coupled channel sets from the dependency graph, and the groupings and removability test on them.

A *channel set* is what Torch-Pruning's dependency graph couples: channels that can only be
removed together, because a residual add, a BatchNorm, a concatenation or a shared encoder output
ties them. Each set lists its *writers* (slices that produce a channel: conv filters, conv biases,
BatchNorm weight and bias, depthwise filters) and its *readers* (input slices of the dense convs
and linear layers that consume it), each index tagged with its channel so writers and readers line
up (concatenations, e.g. the ASPP branches read by the projection conv, come out offset).

Design decision for the ``coupled`` grouping: a group holds every *writer* slice of one channel,
but no reader slice. A reader slice of one channel is part of a writer slice of another
(``W2[i, j]`` reads channel ``j`` and writes channel ``i``), so groups containing both would
overlap, and overlapping group lasso has no exact proximal operator. Writer-only groups are
*zero-invariant* instead: when every writer slice of a channel is 0, the channel is exactly 0
everywhere (BN(0) = beta = 0 in train and eval mode because gamma = 0, ReLU/SiLU/GELU(0) = 0, a
residual sum of zeros is 0, pooling and resampling of zeros are 0), so removing it together with
all its reader slices leaves every output unchanged: every zero ``coupled`` group is removable.
This relies on the activations between writers and readers mapping 0 to 0.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Sequence

import torch
import torch_pruning as tp
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

from ..models.graph import ModelGraph, model_graph
from .groupings import GROUPINGS, GroupStructure, matching_convs

OPTYPE = tp.ops.OPTYPE
#: graph nodes that carry channels through unchanged or re-indexed, without parameters
_PASS_THROUGH = {
    OPTYPE.ELEMENTWISE,
    OPTYPE.CONCAT,
    OPTYPE.SPLIT,
    OPTYPE.RESHAPE,
    OPTYPE.SLICE,
    OPTYPE.EXPAND,
    OPTYPE.UNBIND,
}


@dataclass(frozen=True, eq=False)
class ChannelSlice:
    """Slices ``index`` of ``param`` along ``dim``; slice ``index[i]`` belongs to set channel
    ``channel[i]``.

    For the usual one-to-one couplings (convs, BN, residual adds, concatenation) there is one
    index per channel and ``channel`` is ``arange(channels)``; a split or flatten can map a
    channel to several indices or cover only some channels.
    """

    name: str
    param: nn.Parameter
    dim: int
    index: torch.Tensor
    channel: torch.Tensor


@dataclass(frozen=True, eq=False)
class ChannelSet:
    """Coupled channels, named after the layer the graph was queried from (a matching conv).

    ``to_output[c]`` marks channels that reach a model output directly: those are never
    removable, whatever their weights. Sets are cached with the model graph and shared by every
    caller, hence frozen with tuples (treat the tensors as read-only too).
    """

    name: str
    channels: int
    writers: tuple[ChannelSlice, ...]
    readers: tuple[ChannelSlice, ...]
    to_output: torch.Tensor


@dataclass(eq=False)
class ChannelRemovability:
    """Which channels of one set can be physically removed with outputs unchanged."""

    name: str
    channels: int
    mask: torch.Tensor

    @property
    def removable(self) -> int:
        return int(self.mask.sum())

    @property
    def all_removable(self) -> bool:
        """Every channel is dead; pruning must keep one (or replace the branch)."""
        return self.removable == self.channels


def channel_sets(
    model: nn.Module, patterns: Sequence[str], example_inputs: torch.Tensor | None = None
) -> list[ChannelSet]:
    """The coupled channel sets written by the convs matching ``patterns``.

    A set always holds all its coupled writers, matching or not (a partial set would not be
    removable). Sets are closed: when a writer is only partly covered (a split or concat can
    couple a layer's channels with different sets), its remaining channels get sets too, so every
    writer parameter in the result is covered entirely and exactly once. Convs that no output
    depends on are not traced and get no set.

    Computed once per model graph (:func:`sparsemtl.models.graph.model_graph`) and patterns: the
    sets depend on the wiring only, not on weight values.
    """
    matching_convs(model, patterns)  # a typo fails before the trace
    return graph_channel_sets(model_graph(model, example_inputs), patterns)


def graph_channel_sets(graph: ModelGraph, patterns: Sequence[str]) -> list[ChannelSet]:
    """:func:`channel_sets` of the model ``graph`` was traced from (memoised on the graph)."""
    sets = graph.derived(("channel_sets", tuple(patterns)), lambda: tuple(_trace_sets(graph, patterns)))
    return list(sets)


def _trace_sets(graph: ModelGraph, patterns: Sequence[str]) -> list[ChannelSet]:
    roots = [conv for _, conv in matching_convs(graph.model, patterns)]
    names = graph.names
    dependency = graph.dependency
    covered: dict[nn.Module, torch.Tensor] = {}
    queue = deque(m for m in roots if m in dependency.module2node)
    sets = []
    while queue:
        root = queue.popleft()
        todo = _uncovered(covered, root)
        if todo.numel() == 0:
            continue
        pruner = dependency.get_pruner_of_module(root)
        group = dependency.get_pruning_group(root, pruner.prune_out_channels, todo.tolist())
        cset, writers = _channel_set(dependency, group, names[root], todo, names)
        for module, index in writers:
            _cover(covered, module, index)
        queue.extend(m for m, _ in writers if not covered[m].all())
        sets.append(cset)
    return sets


def _out_size(module: nn.Module) -> int:
    if isinstance(module, _BatchNorm):
        return module.num_features
    return module.out_channels if isinstance(module, _ConvNd) else module.out_features


def _uncovered(covered: dict[nn.Module, torch.Tensor], module: nn.Module) -> torch.Tensor:
    mask = covered.get(module)
    return torch.arange(_out_size(module)) if mask is None else (~mask).nonzero().squeeze(1)


def _cover(covered: dict[nn.Module, torch.Tensor], module: nn.Module, index: torch.Tensor) -> None:
    mask = covered.setdefault(module, torch.zeros(_out_size(module), dtype=torch.bool))
    if mask[index].any():
        raise RuntimeError(f"dependency graph puts channels of {module} in two coupled sets")
    mask[index] = True


def _channel_set(
    graph: tp.DependencyGraph,
    group: tp.Group,
    name: str,
    todo: torch.Tensor,
    names: dict[nn.Module, str],
) -> tuple[ChannelSet, list[tuple[nn.Module, torch.Tensor]]]:
    """Turn one Torch-Pruning group into a set; also return each writer module's indices.

    ``root_idxs`` of a group item are channel numbers of the root conv, which is how writer and
    reader indices are put in one channel order.
    """
    position = torch.full((int(todo.max()) + 1,), -1, dtype=torch.long)
    position[todo] = torch.arange(todo.numel())
    writers, readers, writer_modules = [], [], []
    to_output = torch.zeros(todo.numel(), dtype=torch.bool)
    for item in group.items:
        role = _role(graph, item.dep)
        if role is None:
            continue
        index = torch.tensor(item.idxs, dtype=torch.long)
        channel = position[torch.tensor(item.root_idxs, dtype=torch.long)]
        module = item.dep.target.module
        if role == "output":
            to_output[channel] = True
        elif role == "writer":
            writers.extend(_writer_slices(names[module], module, index, channel))
            writer_modules.append((module, index))
        else:
            readers.extend(_reader_slices(names[module], module, index, channel))
    return ChannelSet(name, todo.numel(), tuple(writers), tuple(readers), to_output), writer_modules


def _role(graph: tp.DependencyGraph, dep: tp.Dependency) -> str | None:
    """``writer``, ``reader``, ``output`` or None (a parameter-free op in between).

    BatchNorm and depthwise convs pass channel ``c`` to channel ``c``; they count as writers,
    because zeroing their entries (with the producer's) is what makes the channel exactly 0.
    """
    node = dep.target
    if node.type == OPTYPE.OUTPUT:
        return "output"
    if node.type in _PASS_THROUGH:
        return None
    if node.type in (OPTYPE.BN, OPTYPE.DEPTHWISE_CONV):
        return "writer"
    if node.type in (OPTYPE.CONV, OPTYPE.LINEAR):
        return "writer" if graph.is_out_channel_pruning_fn(dep.handler) else "reader"
    raise ValueError(f"channel sets support convs, linear and BatchNorm layers only; found {node.name}")


def _writer_slices(name: str, module: nn.Module, index: torch.Tensor, channel: torch.Tensor) -> list[ChannelSlice]:
    if isinstance(module, _BatchNorm):
        if not module.affine:
            raise ValueError(f"BatchNorm {name!r} is not affine: a zero input would not give 0")
        dims = {"weight": 0, "bias": 0}
    elif isinstance(module, _ConvNd):
        if module.transposed and module.groups > 1:
            raise ValueError(f"grouped transposed conv {name!r} is not supported")
        if module.groups == module.out_channels > 1 and module.in_channels != module.out_channels:
            # Torch-Pruning couples input c with output c, wrong when a filter reads k > 1 inputs
            raise ValueError(f"conv {name!r}: a filter reading several inputs is not supported")
        dims = {"weight": 1 if module.transposed else 0, "bias": 0}
    else:
        dims = {"weight": 0, "bias": 0}
    return [
        ChannelSlice(f"{name}.{attr}", getattr(module, attr), dim, index, channel)
        for attr, dim in dims.items()
        if getattr(module, attr) is not None
    ]


def _reader_slices(name: str, module: nn.Module, index: torch.Tensor, channel: torch.Tensor) -> list[ChannelSlice]:
    if isinstance(module, _ConvNd):
        if module.groups > 1:
            raise ValueError(
                f"conv {name!r} has groups={module.groups}: a grouped conv's input channel is not a slice of its weight"
            )
        dim = 0 if module.transposed else 1
    else:
        dim = 1
    return [ChannelSlice(f"{name}.weight", module.weight, dim, index, channel)]


def _channel_amax(model: nn.Module, slices: Sequence[ChannelSlice], channels: int) -> torch.Tensor:
    """Largest |w| over all slices of each channel (0 for a channel without slices).

    Parameters are looked up by name, so sets computed once stay valid for a copy of the model
    or after parameters were replaced.
    """
    out = torch.zeros(channels, dtype=torch.float64)
    for s in slices:
        w = model.get_parameter(s.name).detach()
        rows = w.abs().movedim(s.dim, 0).reshape(w.shape[s.dim], -1).amax(1).cpu()
        out.scatter_reduce_(0, s.channel, rows[s.index].double(), "amax")
    return out


def removable_channels(model: nn.Module, sets: list[ChannelSet]) -> list[ChannelRemovability]:
    """Per set, the channels that can be cut exactly.

    Channel ``c`` is removable iff it does not reach a model output and either every reader
    slice at ``c`` is 0 (nothing reads it) or every writer slice at ``c`` is 0 (it is exactly 0
    everywhere, see the module docstring). Holds for any grouping that produced the zeros.
    """
    result = []
    for s in sets:
        unread = _channel_amax(model, s.readers, s.channels) == 0
        silent = _channel_amax(model, s.writers, s.channels) == 0
        result.append(ChannelRemovability(s.name, s.channels, (unread | silent) & ~s.to_output))
    return result


def _structure(rows: dict[str, tuple[nn.Parameter, int, torch.Tensor]], owners: list[str]) -> GroupStructure:
    names = list(rows)
    return GroupStructure(
        names,
        [rows[n][0] for n in names],
        [rows[n][1] for n in names],
        [rows[n][2] for n in names],
        owners,
    )


def _following_batchnorm(graph: ModelGraph, conv: nn.Conv2d) -> _BatchNorm | None:
    """The affine BatchNorm whose only input is ``conv``'s output, if any."""
    node = graph.dependency.module2node.get(conv)
    for out in [] if node is None else node.outputs:
        if out.type == OPTYPE.BN and len(out.inputs) == 1 and out.module.affine:
            return out.module
    return None


@GROUPINGS.register("output_channels")
def output_channels(model: nn.Module, patterns: Sequence[str]) -> GroupStructure:
    """Group ``i`` of a conv: its filter ``W[i]``, bias ``b[i]`` and the entries ``i`` of the
    BatchNorm that directly follows it. Per layer only: not coupled across residual adds, so a
    zero group is removable only where nothing else writes the channel."""
    graph = model_graph(model)
    names = graph.names
    rows: dict[str, tuple[nn.Parameter, int, torch.Tensor]] = {}
    owners: list[str] = []
    for name, conv in matching_convs(model, patterns):
        ids = torch.arange(len(owners), len(owners) + conv.out_channels)
        bn = _following_batchnorm(graph, conv)
        params = [(f"{name}.weight", conv.weight), (f"{name}.bias", conv.bias)]
        if bn is not None:
            params += [(f"{names[bn]}.weight", bn.weight), (f"{names[bn]}.bias", bn.bias)]
        rows.update({n: (p, 0, ids) for n, p in params if p is not None})
        owners.extend([name] * conv.out_channels)
    return _structure(rows, owners)


def coupled_structure(sets: list[ChannelSet]) -> GroupStructure:
    """One group per channel of every set: all writer slices of that channel."""
    rows: dict[str, tuple[nn.Parameter, int, torch.Tensor]] = {}
    owners: list[str] = []
    for s in sets:
        for w in s.writers:
            size = w.param.shape[w.dim]
            _, _, ids = rows.setdefault(w.name, (w.param, w.dim, torch.full((size,), -1)))
            ids[w.index] = len(owners) + w.channel
        owners.extend([s.name] * s.channels)
    return _structure(rows, owners)


@GROUPINGS.register("coupled")
def coupled(model: nn.Module, patterns: Sequence[str]) -> GroupStructure:
    """Zero-invariant groups over the coupled channel sets of the matching convs (module
    docstring): every zero group is a channel that can be removed exactly."""
    return coupled_structure(channel_sets(model, patterns))
