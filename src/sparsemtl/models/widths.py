"""Layer widths of a (possibly pruned) model, and rebuilding an architecture at recorded widths.

A pruned model is its original architecture with some Conv2d, Linear and BatchNorm layers made
narrower; recording those layers' widths is enough to rebuild it without Torch-Pruning.
"""

from __future__ import annotations

from typing import Any

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

#: layer types whose widths are recorded (and rebuilt on load)
WIDTH_TYPES = (nn.Conv2d, nn.Linear, _BatchNorm)


def layer_widths(model: nn.Module) -> dict[str, dict[str, Any]]:
    """``{"type", "in", "out"}`` of every Conv2d (plus ``groups``), Linear and BatchNorm
    (BN: in == out): enough to rebuild a pruned layer."""
    widths = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            widths[name] = {"type": type(m).__name__, "in": m.in_channels, "out": m.out_channels, "groups": m.groups}
        elif isinstance(m, nn.Linear):
            widths[name] = {"type": type(m).__name__, "in": m.in_features, "out": m.out_features}
        elif isinstance(m, _BatchNorm):
            widths[name] = {"type": type(m).__name__, "in": m.num_features, "out": m.num_features}
    return widths


def changed_widths(model: nn.Module, reference: nn.Module) -> dict[str, dict[str, Any]]:
    """Widths of the layers of ``model`` that differ from the unpruned ``reference``."""
    before = layer_widths(reference)
    return {name: w for name, w in layer_widths(model).items() if before.get(name) != w}


def apply_widths(model: nn.Module, widths: dict[str, dict[str, Any]]) -> nn.Module:
    """Replace each named layer of ``model`` by a fresh one of the recorded widths (in place)."""
    for name, width in widths.items():
        model.set_submodule(name, _rebuilt(model.get_submodule(name), width))
    return model


def _rebuilt(old: nn.Module, width: dict[str, Any]) -> nn.Module:
    """A fresh layer like ``old`` (same type and hyper-parameters) with the recorded widths."""
    if type(old).__name__ != width["type"]:
        raise ValueError(f"layer is a {type(old).__name__}, the file records a {width['type']}")
    if isinstance(old, nn.Conv2d):
        return type(old)(
            width["in"],
            width["out"],
            old.kernel_size,
            old.stride,
            old.padding,
            old.dilation,
            width["groups"],
            old.bias is not None,
            old.padding_mode,
        )
    if isinstance(old, nn.Linear):
        return type(old)(width["in"], width["out"], old.bias is not None)
    if isinstance(old, _BatchNorm):
        return type(old)(width["out"], old.eps, old.momentum, old.affine, old.track_running_stats)
    raise ValueError(f"cannot rebuild a {type(old).__name__}")
