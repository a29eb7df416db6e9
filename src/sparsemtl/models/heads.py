"""Task heads: a DeepLabV3 ASPP head for dense tasks and a small image-level classifier."""

from __future__ import annotations

from typing import Callable, Sequence

from torch import nn
from torchvision.models.segmentation.deeplabv3 import ASPP

from ..config import ModelConfig
from ..registry import Registry

#: name -> ``builder(in_channels, out_channels, cfg: ModelConfig) -> nn.Module``
HEADS: Registry[Callable[..., nn.Module]] = Registry("head")


class ASPPHead(nn.Sequential):
    """DeepLabV3 head: torchvision's ASPP, then 3x3 conv + BN + ReLU and a 1x1 classifier.

    Outputs at the feature resolution; :class:`MultiTaskModel` upsamples to the input size.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        channels: int = 256,
        rates: Sequence[int] = (12, 24, 36),
        dropout: float = 0.1,
    ) -> None:
        aspp = ASPP(in_channels, list(rates), out_channels=channels)
        for module in aspp.modules():
            if isinstance(module, nn.Dropout):
                module.p = dropout
        super().__init__(
            aspp,
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, out_channels, 1),
        )


class ClassifierHead(nn.Sequential):
    """Image-level head (as in the seed): 3x3 conv, ReLU, max-pool, global average pool,
    dropout, FC, ReLU, dropout, FC to ``out_channels`` logits."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        channels: tuple[int, int] = (64, 32),
        dropout: tuple[float, float] = (0.6, 0.4),
    ) -> None:
        super().__init__(
            nn.Conv2d(in_channels, channels[0], 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2, ceil_mode=True),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(1),
            nn.Dropout(dropout[0]),
            nn.Linear(channels[0], channels[1]),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout[1]),
            nn.Linear(channels[1], out_channels),
        )


@HEADS.register("aspp")
def aspp_head(cin: int, cout: int, cfg: ModelConfig) -> nn.Module:
    """DeepLabV3 ASPP dense head (``model.head_channels``, ``model.aspp_rates``, ``model.head_dropout``)."""
    return ASPPHead(cin, cout, cfg.head_channels, cfg.aspp_rates, cfg.head_dropout)


@HEADS.register("classifier")
def classifier_head(cin: int, cout: int, cfg: ModelConfig) -> nn.Module:
    """Image-level head of the seed (``model.classifier_channels``, ``model.classifier_dropout``)."""
    return ClassifierHead(cin, cout, cfg.classifier_channels, cfg.classifier_dropout)
