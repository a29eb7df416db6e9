"""The cost of the model that pruning would produce now, without cutting anything.

Pruning (:func:`sparsemtl.pruning.prune_model`) cuts every removable zero channel of every coupled
channel set of the whole model. Its result is fully determined by the channel sets (fixed by the
wiring) and the removability masks (:func:`~sparsemtl.sparsity.channels.removable_channels`) and the rounding of widths
(:mod:`.rounding`), so
its size and compute can be read off those masks:

* a parameter loses, along each dimension, the slices that the cut channels own there (writer
  slices along the output dimension, reader slices along the input dimension; a grouped conv
  reader loses ``cut / groups`` columns, since cuts are equal per conv group), so its kept size
  is the product of the kept extents;
* a conv or linear layer's MACs are its weight's element count times the output positions it is
  applied at (recorded once by a forward hook), which is exactly what
  ``torch.utils.flop_counter`` counts for it; MACs of anything else (a matmul between
  activations, say) are taken from the dense count and held constant.

This makes the cost of the would-be-pruned model a few tensor gathers per channel set: cheap
enough to evaluate many times per epoch, which is what a sparsity budget needs (see
:mod:`sparsemtl.training.budget`). Tests check it against ``count_macs`` and
``count_parameters`` of the really pruned model.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from ..models.complexity import WEIGHT_OPS, count_macs, output_positions
from ..sparsity.channels import ChannelRemovability, ChannelSet, channel_sets, removable_channels
from .rounding import cut_mask


@dataclass(frozen=True)
class LayerWidth:
    """Input and output channels a conv or linear layer keeps (``groups`` as after pruning:
    a depthwise conv stays depthwise)."""

    name: str
    in_channels: int
    out_channels: int
    groups: int


@dataclass(frozen=True)
class PrunedCost:
    """MACs (one sample) and parameters of the would-be-pruned model, and each layer's widths."""

    macs: int
    params: int
    widths: tuple[LayerWidth, ...]


class PrunedCostModel:
    """Prices the current weights' would-be-pruned model for one input size.

    Built once per model (traces the model graph, runs one forward for the output positions and
    one ``FlopCounterMode`` pass); :meth:`cost` then reads the weights only. ``patterns`` are the
    convs whose channel sets pruning considers (pruning's default: every conv).
    """

    def __init__(self, model: nn.Module, input_size: tuple[int, int], patterns: Sequence[str] = ("*",)) -> None:
        self.model = model
        self.input_size = tuple(input_size)
        self.sets: list[ChannelSet] = channel_sets(model, patterns)
        self._shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}
        self._ops = {name: m for name, m in model.named_modules() if isinstance(m, WEIGHT_OPS)}
        self._positions = output_positions(model, self.input_size)
        dense_macs = count_macs(model, self.input_size)
        self.other_macs = dense_macs - sum(
            self._positions[name] * op.weight.numel() for name, op in self._ops.items() if name in self._positions
        )
        self.dense = self.cost([_nothing_cut(s) for s in self.sets])

    def cost(self, removability: Sequence[ChannelRemovability] | None = None, round_to: int = 1) -> PrunedCost:
        """Cost of pruning with ``removability`` (default: the model's weights as they are now)
        and widths rounded to multiples of ``round_to`` (see :mod:`.rounding`)."""
        found = removable_channels(self.model, self.sets) if removability is None else removability
        cut: dict[tuple[str, int], int] = defaultdict(int)
        for cset, r in zip(self.sets, found):
            if not r.removable:
                continue
            mask = cut_mask(r, cset.conv_groups, round_to)
            for piece in (*cset.writers, *cset.readers):
                hit = int(mask[piece.channel].sum())
                cut[piece.name, piece.dim] += hit // piece.groups
        kept = {name: _kept_shape(shape, name, cut) for name, shape in self._shapes.items()}
        params = sum(_numel(shape) for shape in kept.values())
        macs = self.other_macs
        widths = []
        for name, op in self._ops.items():
            shape = kept[f"{name}.weight"]
            macs += self._positions.get(name, 0) * _numel(shape)
            widths.append(_width(name, op, shape))
        return PrunedCost(int(macs), int(params), tuple(widths))


def _nothing_cut(cset: ChannelSet) -> ChannelRemovability:
    none = torch.zeros(cset.channels, dtype=torch.bool)
    return ChannelRemovability(cset.name, cset.channels, none, none)


def _kept_shape(shape: tuple[int, ...], name: str, cut: dict[tuple[str, int], int]) -> tuple[int, ...]:
    return tuple(size - cut.get((name, dim), 0) for dim, size in enumerate(shape))


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for size in shape:
        n *= size
    return n


def _width(name: str, op: nn.Module, shape: tuple[int, ...]) -> LayerWidth:
    if isinstance(op, nn.Linear):
        return LayerWidth(name, shape[1], shape[0], 1)
    depthwise = op.groups > 1 and op.groups == op.in_channels
    groups = shape[0] // (op.out_channels // op.groups) if depthwise else op.groups
    return LayerWidth(name, shape[1] * groups, shape[0], groups)
