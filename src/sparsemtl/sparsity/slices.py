"""Segment reductions over parameter slices, the primitive every prox and report is built on."""

from __future__ import annotations

import functools
import math
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

    def _per_slice(self, k: int, values: torch.Tensor, op: str) -> torch.Tensor:
        """Reduce ``values`` (shaped like tensor k) over everything but ``dims[k]``: as column
        blocks (:func:`block_reduce`) when contiguous, several times faster than a reduction over
        the scattered dimensions (e.g. 0, 2, 3 for a conv weight's input channels), which is kept
        for other layouts."""
        dim = self.dims[k]
        if values.dim() <= 1:
            return values
        if values.is_contiguous() and values.numel():
            width = math.prod(values.shape[dim + 1 :])
            return block_reduce(values.view(-1, values.shape[dim] * width), width, op)
        return _REDUCTIONS[op](values, [d for d in range(values.dim()) if d != dim])

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

    @functools.cached_property
    def flat(self) -> FlatIndex:
        """The groups of the tensors flattened (each in its logical order) and concatenated, for
        the prox's all-tensors-at-once way (GPU). Built on first use and kept: two int64 numbers
        per weight."""
        index, numels, rows = [], [], []
        for t, dim, ids in zip(self.tensors, self.dims, self.ids):
            width = math.prod(t.shape[dim + 1 :])
            local = torch.arange(t.numel(), device=ids.device).div_(width, rounding_mode="floor") % t.shape[dim]
            index.append(ids[local])
            numels.append(t.numel())
            rows.append(t.shape[dim])
        element_groups = torch.cat(index)
        slice_groups = torch.cat(list(self.ids))
        return FlatIndex(
            index=element_groups,
            order=torch.argsort(element_groups, stable=True),
            ids=slice_groups,
            numels=numels,
            rows=rows,
            group_sizes=torch.bincount(element_groups, minlength=self.num_groups),
            covered=torch.bincount(slice_groups, minlength=self.num_groups) > 0,
        )

    def expand(self, k: int, per_group: torch.Tensor) -> torch.Tensor:
        """Per-group values broadcastable against tensor ``k``."""
        shape = [1] * self.tensors[k].dim()
        shape[self.dims[k]] = -1
        return per_group[self.ids[k]].view(shape)


@dataclass(frozen=True)
class FlatIndex:
    """Where the groups are in the concatenation of the tensors, each flattened in its logical
    order (what ``torch.cat([t.reshape(-1) for t in tensors])`` gives)."""

    index: torch.Tensor  # the group of every element
    order: torch.Tensor  # the elements group by group (a stable sort by group)
    ids: torch.Tensor  # the group of every slice, tensor after tensor
    numels: list[int]  # elements per tensor
    rows: list[int]  # slices per tensor
    group_sizes: torch.Tensor  # elements per group
    covered: torch.Tensor  # groups owning a slice of some tensor

    def per_element(self, per_tensor: torch.Tensor) -> torch.Tensor:
        """One value per tensor, repeated over its elements."""
        return per_tensor.repeat_interleave(torch.tensor(self.numels, device=per_tensor.device))


_REDUCTIONS = {"sum": torch.sum, "amax": torch.amax, "amin": torch.amin}


def block_reduce(columns: torch.Tensor, width: int, op: str) -> torch.Tensor:
    """Per-slice sum/amax/amin of a contiguous tensor seen as the matrix (A, R * width).

    A tensor with sizes (..., R, ...), slices along that dimension, is this matrix with A the
    product of the sizes before and ``width`` the product after it: slice r is the block of
    columns [r width, (r + 1) width). The column reduction runs along contiguous rows
    (vectorised), then each block of ``width`` neighbours is reduced."""
    fn = _REDUCTIONS[op]
    per_column = fn(columns, 0)
    return per_column if width == 1 else fn(per_column.view(-1, width), 1)
