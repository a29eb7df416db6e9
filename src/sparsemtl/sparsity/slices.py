"""Segment reductions over parameter slices, the primitive every prox and report is built on."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class GroupSlices:
    """Tensors whose slices along ``dims[k]`` belong to groups ``ids[k]`` (one id per index).

    Reductions sum over every dimension except ``dims[k]`` and then add into the groups, and
    :meth:`expand` broadcasts per-group values back onto a tensor, so no slice is ever copied.
    """

    tensors: list[torch.Tensor]
    dims: list[int]
    ids: list[torch.Tensor]
    num_groups: int

    separable: bool = field(init=False)

    def __post_init__(self) -> None:
        # True when every group lies inside a single tensor (e.g. per-layer channel groups).
        all_ids = torch.cat([i.cpu() for i in self.ids])
        self.separable = all_ids.unique().numel() == all_ids.numel()

    def _reduce_dims(self, k: int) -> list[int]:
        return [d for d in range(self.tensors[k].dim()) if d != self.dims[k]]

    def _per_slice(self, k: int, values: torch.Tensor, op: str) -> torch.Tensor:
        dims = self._reduce_dims(k)
        if not dims:
            return values
        if op == "sum":
            return values.sum(dim=dims)
        return values.amax(dim=dims) if op == "amax" else values.amin(dim=dims)

    def group_sum(self, values: list[torch.Tensor]) -> torch.Tensor:
        """Per-group sums of ``values`` (tensors shaped like ``self.tensors``)."""
        out = values[0].new_zeros(self.num_groups)
        for k, v in enumerate(values):
            out.index_add_(0, self.ids[k], self._per_slice(k, v, "sum"))
        return out

    def group_amax(self, values: list[torch.Tensor]) -> torch.Tensor:
        out = values[0].new_full((self.num_groups,), -float("inf"))
        for k, v in enumerate(values):
            out.scatter_reduce_(0, self.ids[k], self._per_slice(k, v, "amax"), "amax")
        return out

    def group_amin(self, values: list[torch.Tensor]) -> torch.Tensor:
        out = values[0].new_full((self.num_groups,), float("inf"))
        for k, v in enumerate(values):
            out.scatter_reduce_(0, self.ids[k], self._per_slice(k, v, "amin"), "amin")
        return out

    def expand(self, k: int, per_group: torch.Tensor) -> torch.Tensor:
        """Per-group values broadcastable against tensor ``k``."""
        shape = [1] * self.tensors[k].dim()
        shape[self.dims[k]] = -1
        return per_group[self.ids[k]].view(shape)
