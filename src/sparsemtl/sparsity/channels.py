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

What the analysis cannot prove removable is kept and reported, never an error. A set is *blocked*
(zero channels reported, none removable) when a layer in it normalises across channels (LayerNorm,
GroupNorm, InstanceNorm: dropping a zero channel changes the statistics of the others), when a
split or slice with sizes fixed in the model's code cuts it (those sizes would not follow a cut),
when the graph ties several channels of one layer together (a ghost module's conv and its
depthwise copy) or couples a layer with two sets, or when it gives an unsupported layer or
out-of-range indices. A set whose channels reach a split or slice is not expanded at all (its
root's channels only, never removable): Torch-Pruning's index mapping through some of those does
not terminate. A grouped convolution
(groups > 1, not depthwise) keeps valid groups by losing *equal numbers of channels per conv group*
on each side (any positions; at least one channel stays in each group): of the zero channels of a
group, only as many as the group with the fewest can go.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch_pruning as tp
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

from ..models.graph import ModelGraph, model_graph
from .groupings import GROUPINGS, GroupStructure, matching_convs

OPTYPE = tp.ops.OPTYPE
#: graph nodes that carry channels through unchanged or re-indexed (PReLU maps 0 to 0 per channel)
_PASS_THROUGH = {OPTYPE.ELEMENTWISE, OPTYPE.CONCAT, OPTYPE.RESHAPE, OPTYPE.EXPAND, OPTYPE.UNBIND, OPTYPE.PRELU}
#: graph nodes whose channels cannot be cut exactly, and why
_BLOCKING = {
    OPTYPE.LN: "LayerNorm normalises over channels: removing a zero channel changes the others' statistics",
    OPTYPE.GN: "GroupNorm normalises over channels: removing a zero channel changes the others' statistics",
    OPTYPE.IN: "InstanceNorm is not supported by the channel analysis",
    OPTYPE.SPLIT: "a split has sizes fixed in the model code, which a cut would not update",
    OPTYPE.SLICE: "a channel slice has bounds fixed in the model code, which a cut would not update",
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
    groups: int = 1

    def rows(self, weight: torch.Tensor) -> torch.Tensor:
        """Largest |w| of every slice along ``dim`` (one row per index value).

        For a grouped conv reader (``groups > 1``) index ``j`` is input channel ``j``: column
        ``j % (in / groups)`` of the filters of conv group ``j // (in / groups)`` only.
        """
        w = weight.detach().abs().movedim(self.dim, 0)
        if self.groups == 1:
            return w.reshape(w.shape[0], -1).amax(1)
        per_group = w.reshape(w.shape[0], self.groups, -1).amax(2)  # (in / groups, groups)
        return per_group.t().reshape(-1)

    @torch.no_grad()
    def zero_(self, weight: torch.Tensor, index: torch.Tensor) -> None:
        """Set the slices at ``index`` (values of ``self.index``) of ``weight`` to 0."""
        if self.groups == 1:
            weight.index_fill_(self.dim, index, 0.0)
            return
        w = weight.movedim(self.dim, 0)
        size = w.shape[0]
        for j in index.tolist():
            w[j % size].unflatten(0, (self.groups, -1))[j // size] = 0.0


@dataclass(frozen=True, eq=False)
class ConvGroups:
    """How one grouped conv splits a set's channels into its conv groups (one side of the conv).

    ``group[c]`` is the conv group of set channel ``c`` (-1 where the conv does not touch it);
    ``size`` the conv's channels per group on that side. A cut must take equally many channels
    from every group and leave at least one in each.
    """

    name: str
    group: torch.Tensor
    size: int


@dataclass(frozen=True, eq=False)
class ChannelSet:
    """Coupled channels, named after the layer the graph was queried from (a matching conv).

    ``to_output[c]`` marks channels that reach a model output directly: those are never
    removable, whatever their weights. ``blocked`` says why none of the set's channels can be
    cut (empty when they can), ``conv_groups`` which grouped convs constrain the cut. Sets are
    cached with the model graph and shared by every caller, hence frozen with tuples (treat the
    tensors as read-only too).
    """

    name: str
    channels: int
    writers: tuple[ChannelSlice, ...]
    readers: tuple[ChannelSlice, ...]
    to_output: torch.Tensor
    blocked: tuple[str, ...] = ()
    conv_groups: tuple[ConvGroups, ...] = ()


@dataclass(eq=False)
class ChannelRemovability:
    """Which channels of one set can be physically removed with outputs unchanged.

    ``zero`` marks the channels that are dead or unread (and reach no output); ``mask`` those
    of them that can be cut; ``reasons`` why the others are kept.
    """

    name: str
    channels: int
    mask: torch.Tensor
    zero: torch.Tensor
    reasons: tuple[str, ...] = ()

    @property
    def removable(self) -> int:
        return int(self.mask.sum())

    @property
    def zero_channels(self) -> int:
        return int(self.zero.sum())

    @property
    def kept_zero(self) -> int:
        """Zero channels that cannot be cut (see ``reasons``)."""
        return self.zero_channels - self.removable

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
    names: dict[object, str] = {**graph.names, **{p: n for n, p in graph.model.named_parameters()}}
    dependency = graph.dependency
    covered: dict[nn.Module, torch.Tensor] = {}
    queue = deque(m for m in roots if m in dependency.module2node)
    sets = []
    clashing: set[str] = set()
    while queue:
        root = queue.popleft()
        todo = _uncovered(covered, root)
        if todo.numel() == 0:
            continue
        pruner = dependency.get_pruner_of_module(root)
        cut = _reached_cut(dependency, root, pruner.prune_out_channels)
        if cut is None:
            group = dependency.get_pruning_group(root, pruner.prune_out_channels, todo.tolist())
            cset, writers = _channel_set(dependency, group, names[root], todo, names)
        else:
            cset, writers = _opaque_set(root, todo, names[root], cut)
        merged: dict[nn.Module, torch.Tensor] = {}  # a layer may come in several items of one group
        for module, index in writers:
            merged[module] = torch.cat([merged.get(module, index[:0]), index]).unique()
        for module, index in merged.items():
            taken = _cover(covered, module, index)
            if taken.any():
                clashing.add(names[module])
                cset = _without(cset, names[module], index[taken])
        queue.extend(m for m in merged if not covered[m].all())
        sets.append(cset)
    return [_clash_blocked(s, clashing) for s in sets] if clashing else sets


def _reached_cut(graph: tp.DependencyGraph, root: nn.Module, fn: Callable) -> str | None:
    """Why the set of ``root`` would pass a split or slice of channels, or None.

    Follows Torch-Pruning's propagation rules without its index mapping (so it may find a cut
    the indices would not reach). Such sets are blocked anyway, and the index mapping through
    some of them (e.g. ``cat([x[:, :c] + y, x[:, c:]])``) does not terminate.
    """
    start = graph.module2node[root]
    seen = {(start, fn)}
    stack = [(start, fn)]
    while stack:
        node, trigger = stack.pop()
        for dep in node.dependencies:
            if not dep.is_triggered_by(trigger):
                continue
            if _cuts_channels(dep.target):
                return _BLOCKING[dep.target.type]
            if (dep.target, dep.handler) not in seen:
                seen.add((dep.target, dep.handler))
                stack.append((dep.target, dep.handler))
    return None


def _cuts_channels(node: tp.Node) -> bool:
    """A split, or a slice along dim 1 (slices of spatial dims pass channels through)."""
    return node.type == OPTYPE.SPLIT or (node.type == OPTYPE.SLICE and node.module.dim == 1)


def _opaque_set(
    root: nn.Module, todo: torch.Tensor, name: str, reason: str
) -> tuple[ChannelSet, list[tuple[nn.Module, torch.Tensor]]]:
    """A blocked set of ``root``'s own channels only; its consumers are not known, so every
    channel is treated as reaching an output (never zero, never removable)."""
    writers = _writer_slices(name, root, todo, torch.arange(todo.numel()))
    to_output = torch.ones(todo.numel(), dtype=torch.bool)
    return ChannelSet(name, todo.numel(), tuple(writers), (), to_output, (reason,)), [(root, todo)]


def _without(cset: ChannelSet, module: str, index: torch.Tensor) -> ChannelSet:
    """``cset`` without the writer slices of ``module`` at ``index`` (another set has them)."""
    writers = []
    for w in cset.writers:
        if w.name.rpartition(".")[0] == module:
            keep = ~torch.isin(w.index, index)
            w = dataclasses.replace(w, index=w.index[keep], channel=w.channel[keep])
        writers.append(w)
    return dataclasses.replace(cset, writers=tuple(writers))


def _clash_blocked(cset: ChannelSet, clashing: set[str]) -> ChannelSet:
    """Block a set whose writers the graph also put in another set (e.g. through a split or
    slice it maps inconsistently): the coupling is not known, so nothing of it is cut."""
    where = sorted({w.name.rpartition(".")[0] for w in cset.writers} & clashing)
    if not where:
        return cset
    reason = f"the graph couples channels of {where[0]!r} with two channel sets"
    return dataclasses.replace(cset, blocked=cset.blocked + (reason,))


def _out_size(module: nn.Module) -> int:
    if isinstance(module, _BatchNorm):
        return module.num_features
    return module.out_channels if isinstance(module, _ConvNd) else module.out_features


def _in_size(module: nn.Module) -> int:
    return module.in_channels if isinstance(module, _ConvNd) else module.in_features


def _uncovered(covered: dict[nn.Module, torch.Tensor], module: nn.Module) -> torch.Tensor:
    mask = covered.get(module)
    return torch.arange(_out_size(module)) if mask is None else (~mask).nonzero().squeeze(1)


def _cover(covered: dict[nn.Module, torch.Tensor], module: nn.Module, index: torch.Tensor) -> torch.Tensor:
    """Mark ``index`` of ``module`` covered; return which of them an earlier set had covered."""
    mask = covered.setdefault(module, torch.zeros(_out_size(module), dtype=torch.bool))
    taken = mask[index].clone()
    mask[index] = True
    return taken


def is_grouped_conv(module: nn.Module) -> bool:
    """A conv with groups > 1 that Torch-Pruning does not treat as depthwise (in c -> out c)."""
    return isinstance(module, _ConvNd) and module.groups > 1 and module.groups != module.out_channels


def _channel_set(
    graph: tp.DependencyGraph,
    group: tp.Group,
    name: str,
    todo: torch.Tensor,
    names: dict[object, str],
) -> tuple[ChannelSet, list[tuple[nn.Module, torch.Tensor]]]:
    """Turn one Torch-Pruning group into a set; also return each writer module's indices.

    ``root_idxs`` of a group item are channel numbers of the root conv, which is how writer and
    reader indices are put in one channel order.
    """
    position = torch.full((int(todo.max()) + 1,), -1, dtype=torch.long)
    position[todo] = torch.arange(todo.numel())
    writers: list[ChannelSlice] = []
    readers: list[ChannelSlice] = []
    writer_modules: list[tuple[nn.Module, torch.Tensor]] = []
    blocked: list[str] = []
    conv_groups: list[ConvGroups] = []
    to_output = torch.zeros(todo.numel(), dtype=torch.bool)
    for item in group.items:
        module = item.dep.target.module
        role, reason = _role(graph, item.dep, names)
        if reason is not None:
            blocked.append(reason)
        if role is None:
            continue
        index = torch.tensor(item.idxs, dtype=torch.long)
        channel = position[torch.tensor(item.root_idxs, dtype=torch.long)]
        if role == "output":
            to_output[channel] = True
            continue
        if role == "scale":  # a bare parameter (e.g. a layer scale): written like a BN weight
            dim = item.dep.target.pruning_dim % module.dim()
            if index.numel() and int(index.max()) >= module.shape[dim]:
                blocked.append(f"the graph maps parameter {names[module]!r} to channels beyond its size")
                continue
            writers.append(ChannelSlice(names[module], module, dim, index, channel))
            continue
        size = _out_size(module) if role == "writer" else _in_size(module)
        if index.numel() and int(index.max()) >= size:
            blocked.append(f"the graph maps {names[module]!r} to channels beyond its {size}")
            continue
        if role == "writer":
            writers.extend(_writer_slices(names[module], module, index, channel))
            writer_modules.append((module, index))
            if not item.dep.target.outputs:  # the layer's own output is a model output
                to_output[channel] = True
        else:
            readers.extend(_reader_slices(names[module], module, index, channel))
        if is_grouped_conv(module):
            per_group = size // module.groups
            if index.numel() != size:
                blocked.append(f"grouped conv {names[module]!r} has its channels in several sets")
            group_of = torch.full((todo.numel(),), -1, dtype=torch.long)
            group_of[channel] = index // per_group
            conv_groups.append(ConvGroups(names[module], group_of, per_group))
    blocked.extend(_self_coupled(writers, readers))
    blocked.extend(_crossed_pass_through(graph, group, position, names))
    cset = ChannelSet(
        name, todo.numel(), tuple(writers), tuple(readers), to_output, _merged(blocked), tuple(conv_groups)
    )
    return cset, writer_modules


def _self_coupled(writers: list[ChannelSlice], readers: list[ChannelSlice]) -> list[str]:
    """Reasons for layers whose slices do not map one to one onto the set's channels.

    E.g. a ghost module concatenates a conv's output with a depthwise copy of it, so the graph
    ties two channels of one stream layer together; a set channel is then not one slice per
    layer, and neither its zero test nor its cut would be right.
    """
    pairs: dict[tuple[str, int], list[torch.Tensor]] = {}
    for sl in (*writers, *readers):
        pairs.setdefault((sl.name, sl.dim), []).append(torch.stack([sl.index, sl.channel], 1))
    reasons = []
    for (param, _), found in pairs.items():
        unique = torch.cat(found).unique(dim=0)
        if unique[:, 0].unique().numel() < len(unique) or unique[:, 1].unique().numel() < len(unique):
            reasons.append(f"the graph ties several channels of one layer together (at {param.rpartition('.')[0]!r})")
    return reasons


def _crossed_pass_through(
    graph: tp.DependencyGraph, group: tp.Group, position: torch.Tensor, names: dict[object, str]
) -> list[str]:
    """Reasons for BatchNorms and depthwise convs whose channel ``i`` is not the set channel of
    channel ``i`` of the layer that feeds them.

    They pass channel ``i`` to channel ``i``; when the graph puts their input and output
    channel ``i`` in different set channels (a ghost module concatenates a conv's output with
    a depthwise copy of it: both halves come from one channel), two set channels are really one,
    which neither the zero test nor the cut would respect.
    """
    channel_of: dict[nn.Module, dict[int, int]] = {}
    passing = []
    for item in group.items:
        node = item.dep.target
        passes = node.type in (OPTYPE.BN, OPTYPE.DEPTHWISE_CONV)
        if passes or (node.type in (OPTYPE.CONV, OPTYPE.LINEAR) and graph.is_out_channel_pruning_fn(item.dep.handler)):
            mapping = channel_of.setdefault(node.module, {})
            mapping.update(zip(item.idxs, position[torch.tensor(item.root_idxs, dtype=torch.long)].tolist()))
            if passes:
                passing.append(node)
    reasons = []
    for node in passing:
        source = node.inputs[0] if len(node.inputs) == 1 else None
        while source is not None and source.type == OPTYPE.ELEMENTWISE and len(source.inputs) == 1:
            source = source.inputs[0]
        feeding = channel_of.get(source.module) if source is not None else None
        mine = channel_of[node.module]
        if feeding is not None and any(feeding.get(i, c) != c for i, c in mine.items()):
            reasons.append(f"the graph ties several channels of one layer together (at {names[node.module]!r})")
    return reasons


def _merged(reasons: list[str]) -> tuple[str, ...]:
    """One line per kind of reason: ``"why (at 'a', 'b' and 3 more)"``."""
    places: dict[str, list[str]] = {}
    for reason in reasons:
        why, _, where = reason.partition(" (at ")
        places.setdefault(why, [])
        if where and where[:-1] not in places[why]:
            places[why].append(where[:-1])
    lines = []
    for why, where in places.items():
        more = f" and {len(where) - 2} more" if len(where) > 2 else ""
        lines.append(f"{why} (at {', '.join(where[:2])}{more})" if where else why)
    return tuple(lines)


def _role(graph: tp.DependencyGraph, dep: tp.Dependency, names: dict[object, str]) -> tuple[str | None, str | None]:
    """The role of a group item and, when it keeps the set's channels, why.

    Roles: ``writer``, ``reader``, ``output``, ``scale`` (a bare parameter) or None (a
    parameter-free op in between, or a layer that blocks the set). BatchNorm and depthwise convs
    pass channel ``c`` to channel ``c``; they count as writers, because zeroing their entries
    (with the producer's) is what makes the channel exactly 0.
    """
    node = dep.target
    module = node.module
    label = repr(names.get(module) or node.name or str(module))
    if node.type == OPTYPE.OUTPUT:
        return "output", None
    if node.type in _PASS_THROUGH or (node.type == OPTYPE.SLICE and not _cuts_channels(node)):
        return None, None
    if node.type in _BLOCKING:
        return None, f"{_BLOCKING[node.type]} (at {label})"
    if node.type == OPTYPE.PARAMETER:
        return "scale", None
    if node.type == OPTYPE.BN:
        if not module.affine:
            return None, f"BatchNorm {label} is not affine: a zero input would not give 0"
        return "writer", None
    if node.type == OPTYPE.DEPTHWISE_CONV:
        if module.in_channels != module.out_channels:
            return None, f"conv {label}: a filter reading several input channels is not supported"
        return "writer", None
    if node.type in (OPTYPE.CONV, OPTYPE.LINEAR):
        if isinstance(module, _ConvNd) and module.transposed and module.groups > 1:
            return None, f"grouped transposed conv {label} is not supported"
        return ("writer" if graph.is_out_channel_pruning_fn(dep.handler) else "reader"), None
    return None, f"{label} ({node.type.name}) is not supported by the channel analysis"


def _writer_slices(name: str, module: nn.Module, index: torch.Tensor, channel: torch.Tensor) -> list[ChannelSlice]:
    if isinstance(module, _ConvNd) and module.transposed:
        dims = {"weight": 1, "bias": 0}
    else:
        dims = {"weight": 0, "bias": 0}
    return [
        ChannelSlice(f"{name}.{attr}", getattr(module, attr), dim, index, channel)
        for attr, dim in dims.items()
        if getattr(module, attr) is not None
    ]


def _reader_slices(name: str, module: nn.Module, index: torch.Tensor, channel: torch.Tensor) -> list[ChannelSlice]:
    if isinstance(module, _ConvNd):
        dim, groups = (0 if module.transposed else 1), module.groups
    else:
        dim, groups = 1, 1
    return [ChannelSlice(f"{name}.weight", module.weight, dim, index, channel, groups)]


def _channel_amax(model: nn.Module, slices: Sequence[ChannelSlice], channels: int) -> torch.Tensor:
    """Largest |w| over all slices of each channel (0 for a channel without slices).

    Parameters are looked up by name, so sets computed once stay valid for a copy of the model
    or after parameters were replaced.
    """
    out = torch.zeros(channels, dtype=torch.float64)
    for s in slices:
        rows = s.rows(model.get_parameter(s.name)).cpu()
        out.scatter_reduce_(0, s.channel, rows[s.index].double(), "amax")
    return out


def removable_channels(model: nn.Module, sets: list[ChannelSet]) -> list[ChannelRemovability]:
    """Per set, the zero channels and those of them that can be cut exactly.

    Channel ``c`` is zero iff it does not reach a model output and either every reader slice at
    ``c`` is 0 (nothing reads it) or every writer slice at ``c`` is 0 (it is exactly 0
    everywhere, see the module docstring). Holds for any grouping that produced the zeros. A zero
    channel is removable unless its set is blocked or a grouped conv's balance keeps it.
    """
    result = []
    for s in sets:
        unread = _channel_amax(model, s.readers, s.channels) == 0
        silent = _channel_amax(model, s.writers, s.channels) == 0
        zero = (unread | silent) & ~s.to_output
        if s.blocked:
            mask, reasons = torch.zeros_like(zero), s.blocked
        else:
            mask, reasons = balanced_mask(zero, s.conv_groups)
        kept = reasons if bool((zero & ~mask).any()) else ()
        result.append(ChannelRemovability(s.name, s.channels, mask, zero, kept))
    return result


def balanced_mask(mask: torch.Tensor, conv_groups: Sequence[ConvGroups]) -> tuple[torch.Tensor, tuple[str, ...]]:
    """``mask`` reduced until every grouped conv loses equally many channels per conv group and
    keeps at least one in each (the lowest-numbered zero channels of a group go first); also the
    convs that kept channels. Repeated until stable, since a set may feed several grouped convs."""
    mask = mask.clone()
    reasons: dict[str, None] = {}
    changed = True
    while changed:
        changed = False
        for cg in conv_groups:
            inside = cg.group >= 0
            num = int(cg.group.max()) + 1
            counts = torch.bincount(cg.group[mask & inside], minlength=num)
            cut = min(int(counts.min()), cg.size - 1)
            for g in (counts > cut).nonzero().flatten().tolist():
                mask[(mask & (cg.group == g)).nonzero().flatten()[cut:]] = False
                changed = True
                reasons[
                    f"grouped conv {cg.name!r} ({num} groups of {cg.size}) loses equally many channels per group "
                    "and keeps at least one in each"
                ] = None
    return mask, tuple(reasons)


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
    """The affine BatchNorm whose only input is ``conv``'s output, if any.

    Single-input, single-output parameter-free ops in between are skipped: a BatchNorm with a
    fused activation (timm's ``BatchNormAct2d``) is traced as its batch-norm op followed by the
    module's node.
    """
    node = graph.dependency.module2node.get(conv)
    outs = [] if node is None else node.outputs
    while len(outs) == 1 and outs[0].type == OPTYPE.ELEMENTWISE and len(outs[0].inputs) == 1:
        outs = outs[0].outputs
    for out in outs:
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
