"""Sparsity statistics with one definition: a group is zero when all its weights are exactly 0."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Sequence

from torch import nn

from .channels import ChannelRemovability, channel_sets, removable_channels
from .groupings import GroupStructure, build_grouping


class _Percentages:
    """Shared definition of the two sparsity percentages from the four counts."""

    groups: int
    zero_groups: int
    weights: int
    zero_weights: int

    @property
    def zero_group_pct(self) -> float:
        return 100.0 * self.zero_groups / self.groups if self.groups else 0.0

    @property
    def zero_weight_pct(self) -> float:
        return 100.0 * self.zero_weights / self.weights if self.weights else 0.0


@dataclass
class LayerSparsity(_Percentages):
    layer: str
    groups: int
    zero_groups: int
    weights: int
    zero_weights: int


@dataclass
class SparsityReport(_Percentages):
    """Per-layer and overall counts. ``zero_weights`` counts weights inside zero groups only."""

    grouping: str
    layers: list[LayerSparsity] = field(default_factory=list)
    channel_sets: list[ChannelRemovability] = field(default_factory=list)

    @property
    def groups(self) -> int:
        return sum(layer.groups for layer in self.layers)

    @property
    def zero_groups(self) -> int:
        return sum(layer.zero_groups for layer in self.layers)

    @property
    def weights(self) -> int:
        return sum(layer.weights for layer in self.layers)

    @property
    def zero_weights(self) -> int:
        return sum(layer.zero_weights for layer in self.layers)

    @property
    def channels(self) -> int:
        return sum(s.channels for s in self.channel_sets)

    @property
    def removable_channels(self) -> int:
        return sum(s.removable for s in self.channel_sets)

    @property
    def zero_channels(self) -> int:
        """Dead or unread channels, removable or not."""
        return sum(s.zero_channels for s in self.channel_sets)

    def summary(self) -> dict:
        out = {
            "grouping": self.grouping,
            "groups": self.groups,
            "zero_groups": self.zero_groups,
            "zero_group_pct": self.zero_group_pct,
            "weights": self.weights,
            "zero_weights": self.zero_weights,
            "zero_weight_pct": self.zero_weight_pct,
        }
        if self.channel_sets:
            out["channels"] = self.channels
            out["removable_channels"] = self.removable_channels
            out["removable_channel_pct"] = 100.0 * self.removable_channels / self.channels
            out["zero_channels"] = self.zero_channels
            out["zero_channels_kept"] = self.zero_channels - self.removable_channels
        return out

    def to_dict(self) -> dict:
        sets = [
            {
                "name": s.name,
                "channels": s.channels,
                "removable": s.removable,
                "zero": s.zero_channels,
                **({"kept_because": list(s.reasons)} if s.kept_zero else {}),
            }
            for s in self.channel_sets
        ]
        return {**self.summary(), "layers": [asdict(layer) for layer in self.layers], "channel_sets": sets}


def sparsity_report(
    structure: GroupStructure, grouping: str, removability: Sequence[ChannelRemovability] = ()
) -> SparsityReport:
    """Count zero groups and the weights they hold, per reporting layer and overall; with
    ``removability`` also how many channels could actually be cut."""
    zero = (structure.group_max_abs() == 0).tolist()
    sizes = structure.group_sizes().tolist()
    layers: dict[str, LayerSparsity] = {}
    for g, owner in enumerate(structure.owners):
        row = layers.setdefault(owner, LayerSparsity(owner, 0, 0, 0, 0))
        row.groups += 1
        row.weights += int(sizes[g])
        if zero[g]:
            row.zero_groups += 1
            row.zero_weights += int(sizes[g])
    return SparsityReport(grouping, list(layers.values()), list(removability))


def model_sparsity_report(model: nn.Module, grouping: str, patterns: Sequence[str]) -> SparsityReport:
    """Full report of ``model``: zero groups under ``grouping`` and removable channels of every
    channel set written by the modules matching ``patterns``. Both read the model's cached graph
    (:func:`sparsemtl.models.graph.model_graph`): traced at most once, and not at all when the
    grouping or an earlier report already traced it."""
    structure = build_grouping(grouping, model, patterns)
    return sparsity_report(structure, grouping, removable_channels(model, channel_sets(model, patterns)))
