"""Groupings: which slices of which parameters form one sparsity group.

Every grouping produces a :class:`GroupStructure`: for each regularised parameter, the dimension
whose index selects a "row" and the id of the group each row belongs to. A group may own rows of
several tensors (e.g. a filter and its BatchNorm entries), so one representation serves
per-layer groupings and groupings coupled across layers alike.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn

from ..registry import Registry
from .slices import GroupSlices


@dataclass
class GroupStructure:
    """Rows of parameters assigned to groups ``0..num_groups-1``.

    ``owners[g]`` names the layer a group is reported under; ``ids[k][r]`` is the group of row
    ``r`` of parameter ``k`` (rows taken along ``dims[k]``).
    """

    names: list[str]
    params: list[nn.Parameter]
    dims: list[int]
    ids: list[torch.Tensor]
    owners: list[str]

    @property
    def num_groups(self) -> int:
        return len(self.owners)

    def slices(self, tensors: list[torch.Tensor] | None = None) -> GroupSlices:
        """The structure applied to ``tensors`` (default: the parameters themselves)."""
        tensors = [p.detach() for p in self.params] if tensors is None else tensors
        ids = [i.to(t.device) for i, t in zip(self.ids, tensors)]
        return GroupSlices(tensors, list(self.dims), ids, self.num_groups)

    def group_sizes(self) -> torch.Tensor:
        """Number of weights in each group (float64)."""
        ones = [torch.ones(p.shape, dtype=torch.float64) for p in self.params]
        return self.slices(ones).group_sum(ones)

    def group_max_abs(self) -> torch.Tensor:
        """Largest |w| of each group (float64, CPU); a group is zero iff this is exactly 0."""
        tensors = [p.detach().abs().double().cpu() for p in self.params]
        return self.slices(tensors).group_amax(tensors)

    @torch.no_grad()
    def zero_groups_(self, mask: torch.Tensor) -> None:
        """Set every slice of the groups selected by the boolean ``mask`` (num_groups,) to 0."""
        if mask.shape != (self.num_groups,):
            raise ValueError(f"mask must have shape ({self.num_groups},), got {tuple(mask.shape)}")
        sl = self.slices()
        for k, t in enumerate(sl.tensors):
            t.mul_(sl.expand(k, (~mask.to(t.device)).to(t.dtype)))

    def to_spec(self, weights: torch.Tensor) -> dict:
        """Plain-data description (lists only) stored in an optimiser param group."""
        return {
            "dims": list(self.dims),
            "ids": [i.tolist() for i in self.ids],
            "weights": weights.double().tolist(),
        }


#: name -> ``grouping(model, patterns) -> GroupStructure``
GROUPINGS: Registry[Callable[[nn.Module, Sequence[str]], GroupStructure]] = Registry("grouping")


def matching_convs(model: nn.Module, patterns: Sequence[str]) -> list[tuple[str, nn.Conv2d]]:
    """Conv layers whose qualified module name matches any shell-style pattern.

    A pattern that selects no conv layer is an error: a typo would otherwise silently turn the
    regulariser off.
    """
    convs = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    for pattern in patterns:
        if not any(fnmatch.fnmatchcase(n, pattern) for n, _ in convs):
            raise ValueError(f"sparsity module pattern {pattern!r} matches no conv layer")
    return [(n, m) for n, m in convs if any(fnmatch.fnmatchcase(n, p) for p in patterns)]


def _input_channel_rows(conv: nn.Conv2d) -> tuple[int, torch.Tensor]:
    """The weight dimension and the group of each row along it, one group per input column.

    Dense conv: group ``j`` is ``W[:, j]``. A conv with one input per conv group (depthwise, also
    with a channel multiplier): group ``j`` is the filters of conv group ``j`` (rows of dim 0).
    Other grouped convs: group ``p`` is column ``p`` of every conv group's filters, i.e. input
    ``p`` of each conv group, so a zero group removes one input from every conv group and the
    groups stay equally wide (a single input channel of a grouped conv is not a slice of its
    weight).
    """
    if conv.groups > 1 and conv.groups == conv.in_channels:
        return 0, torch.arange(conv.out_channels) // (conv.out_channels // conv.groups)
    return 1, torch.arange(conv.weight.shape[1])


@GROUPINGS.register("input_channels")
def input_channels(model: nn.Module, patterns: Sequence[str]) -> GroupStructure:
    """The seed's grouping: group j of a conv is W[:, j] (all weights reading input channel j);
    see :func:`_input_channel_rows` for grouped and depthwise convs."""
    names, params, dims, ids, owners = [], [], [], [], []
    for name, conv in matching_convs(model, patterns):
        dim, rows = _input_channel_rows(conv)
        names.append(f"{name}.weight")
        params.append(conv.weight)
        dims.append(dim)
        ids.append(rows + len(owners))
        owners.extend([name] * (int(rows.max()) + 1))
    return GroupStructure(names, params, dims, ids, owners)


def build_grouping(name: str, model: nn.Module, patterns: Sequence[str]) -> GroupStructure:
    """Look up a grouping by name and apply it to ``model``."""
    return GROUPINGS.get(name)(model, patterns)
