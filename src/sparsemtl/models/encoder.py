"""Shared encoder: any timm CNN as a feature extractor returning its deepest feature map."""

from __future__ import annotations

from pathlib import Path

import timm
import torch
from torch import nn


class Encoder(nn.Module):
    """Wraps a timm ``features_only`` backbone and exposes its output width and stride.

    Input normalisation lives here (mean/std buffers taken from the timm config), so models take
    images in [0, 1] and exported or pruned models stay self-contained.
    """

    def __init__(self, name: str, output_stride: int = 8, pretrained: str | None = None) -> None:
        super().__init__()
        overlay = None
        if pretrained is not None:
            if not Path(pretrained).is_file():
                raise FileNotFoundError(f"pretrained weights file {pretrained!r} does not exist")
            overlay = {"file": str(pretrained)}
        kwargs = {"output_stride": output_stride} if output_stride != 32 else {}
        self.backbone = timm.create_model(
            name,
            features_only=True,
            out_indices=(-1,),
            pretrained=overlay is not None,
            pretrained_cfg_overlay=overlay,
            **kwargs,
        )
        if overlay is None:
            _unzero_norm_scales(self.backbone)
        self.name = name
        self.out_channels: int = self.backbone.feature_info.channels()[-1]
        self.stride: int = self.backbone.feature_info.reduction()[-1]
        cfg = self.backbone.pretrained_cfg
        mean = torch.tensor(cfg.get("mean", (0.485, 0.456, 0.406)), dtype=torch.float32)
        std = torch.tensor(cfg.get("std", (0.229, 0.224, 0.225)), dtype=torch.float32)
        self.register_buffer("mean", mean.view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", std.view(1, -1, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone((images - self.mean) / self.std)[-1]


def _unzero_norm_scales(module: nn.Module) -> None:
    """Set norm-layer scales that were initialised to exactly 0 (timm's ``zero_init_last``) to 1.

    A zero scale blocks every gradient to the convs of its residual branch, so their Adam second
    moment is 0 and the preconditioned prox (metric d = eps) would delete the whole branch at the
    first step, for any lambda > 0, before it could learn anything.
    """
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._NormBase) and m.weight is not None and not m.weight.detach().any():
            nn.init.ones_(m.weight)


def encoder_names(pattern: str = "*") -> list[str]:
    """timm model names usable as encoders (any CNN with ``features_only`` support)."""
    return timm.list_models(pattern)
