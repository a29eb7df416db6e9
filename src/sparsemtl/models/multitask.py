"""Hard-parameter-sharing multi-task model: one encoder pass, one head per task."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MultiTaskModel(nn.Module):
    """Runs the shared encoder once and every task head on its features.

    ``dense_tasks`` are upsampled (bilinear) to the input resolution; the other heads return
    image-level outputs. Single-task learning is this model with one head.
    """

    def __init__(self, encoder: nn.Module, heads: dict[str, nn.Module], dense_tasks: set[str]) -> None:
        super().__init__()
        unknown = set(dense_tasks) - set(heads)
        if unknown:
            raise ValueError(f"dense tasks without a head: {sorted(unknown)}")
        self.encoder = encoder
        self.heads = nn.ModuleDict(heads)
        self.dense_tasks = frozenset(dense_tasks)

    @property
    def task_names(self) -> list[str]:
        return list(self.heads.keys())

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.encoder(images)
        size = images.shape[-2:]
        outputs = {}
        for name, head in self.heads.items():
            out = head(features)
            if name in self.dense_tasks:
                out = F.interpolate(out, size=size, mode="bilinear", align_corners=False)
            outputs[name] = out
        return outputs

    def parameter_counts(self) -> dict[str, int]:
        """Parameters of the encoder, of each head and in total, plus how many are non-zero."""

        def count(module: nn.Module) -> int:
            return sum(p.numel() for p in module.parameters())

        counts = {"total": count(self), "encoder": count(self.encoder)}
        counts.update({f"head.{name}": count(head) for name, head in self.heads.items()})
        counts["nonzero"] = int(sum(int(p.detach().count_nonzero()) for p in self.parameters()))
        return counts
