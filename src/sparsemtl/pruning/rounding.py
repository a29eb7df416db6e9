"""Which channels of one channel set to cut, with the set's width rounded to a hardware-friendly
multiple.

Odd, tiny channel counts leave vector units and GEMM tiles half used, so a pruned model may run
slower per MAC than its dense original, above all at batch 1. With ``round_to = N`` just enough of
a set's removable zero channels stay that its width after the cut is a multiple of ``N``, or the
whole set stays when that multiple would exceed its original width. Kept channels are zero
channels, so the outputs stay exactly the same.

The lowest-numbered cut channels stay first. A grouped conv constrains the cut to equal numbers
per conv group; after each channel put back the cut is rebalanced the way the channel analysis
balances it (:func:`sparsemtl.sparsity.channels.balanced_mask`), so with one grouped conv the
width grows a whole round (one channel per group) at a time and ends at the smallest width that
is a multiple of both ``N`` and the group count, or at the full width. A set tied to several
grouped convs with different groupings still ends balanced and at a multiple of ``N`` (or full),
but not necessarily at the smallest such width.
"""

from __future__ import annotations

import numbers
from typing import Sequence

import torch

from ..errors import ConfigError
from ..sparsity.channels import ChannelRemovability, ConvGroups, balanced_mask


def check_round_to(round_to: object, key: str = "round_to") -> int:
    """``round_to`` as an int >= 1, else :class:`ConfigError` naming ``key``."""
    if isinstance(round_to, bool) or not isinstance(round_to, numbers.Integral) or round_to < 1:
        raise ConfigError(f"{key}: expected an integer >= 1 (the multiple pruned widths round to), got {round_to!r}")
    return int(round_to)


def cut_mask(removability: ChannelRemovability, conv_groups: Sequence[ConvGroups], round_to: int = 1) -> torch.Tensor:
    """Mask of the set's channels to cut.

    Every removable channel, except the first one of an all-dead set (so shapes stay valid) and,
    with ``round_to > 1``, the fewest further ones that make the remaining width a multiple of
    ``round_to`` (module docstring).
    """
    cut = removability.mask.clone()
    if removability.all_removable:
        cut[cut.nonzero()[0]] = False
    while bool(cut.any()) and (removability.channels - int(cut.sum())) % round_to:
        cut[cut.nonzero()[0]] = False
        cut, _ = balanced_mask(cut, conv_groups)
    return cut
