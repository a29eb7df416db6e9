"""Layer widths of a (possibly pruned) model, and rebuilding an architecture at recorded widths.

A pruned model is its original architecture with some Conv2d, Linear and BatchNorm layers made
narrower; recording those layers' widths is enough to rebuild it without Torch-Pruning.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
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
    """A copy of ``old`` (same type and every other setting, e.g. the activation fused into
    timm's ``BatchNormAct2d`` or a ``Conv2dSame``'s padding) with the recorded widths; the new
    tensors are placeholders for the state_dict to fill."""
    if type(old).__name__ != width["type"]:
        raise ValueError(f"layer is a {type(old).__name__}, the file records a {width['type']}")
    new = copy.deepcopy(old)
    if isinstance(new, nn.Conv2d):
        new.in_channels, new.out_channels, new.groups = width["in"], width["out"], width["groups"]
        rows, cols = (new.in_channels, new.out_channels) if new.transposed else (new.out_channels, new.in_channels)
        new.weight = _fresh(old.weight, rows, cols // new.groups, *new.kernel_size)
        new.bias = None if old.bias is None else _fresh(old.bias, new.out_channels)
    elif isinstance(new, nn.Linear):
        new.in_features, new.out_features = width["in"], width["out"]
        new.weight = _fresh(old.weight, new.out_features, new.in_features)
        new.bias = None if old.bias is None else _fresh(old.bias, new.out_features)
    elif isinstance(new, _BatchNorm):
        new.num_features = n = width["out"]
        if new.affine:
            new.weight, new.bias = _fresh(old.weight, n), _fresh(old.bias, n)
        if new.track_running_stats:
            new.running_mean = torch.zeros(n, dtype=old.running_mean.dtype, device=old.running_mean.device)
            new.running_var = torch.ones(n, dtype=old.running_var.dtype, device=old.running_var.device)
    else:
        raise ValueError(f"cannot rebuild a {type(old).__name__}")
    return new


def _fresh(like: torch.Tensor, *shape: int) -> nn.Parameter:
    return nn.Parameter(torch.zeros(shape, dtype=like.dtype, device=like.device), requires_grad=like.requires_grad)
