"""Portable, weights-only saving of pruned models.

A pruned model is stored as its original architecture (config + task specs), the widths of the
layers pruning changed, and its state_dict: plain containers and tensors only, so loading never
unpickles code and never needs Torch-Pruning. Loading rebuilds the architecture, swaps in
freshly constructed layers of the recorded widths and loads the weights strictly.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..config import Config, config_from_dict
from ..models import MultiTaskModel, build_model
from ..tasks.spec import TaskSpec
from ..training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

#: layer types whose widths are recorded (and rebuilt on load)
WIDTH_TYPES = (nn.Conv2d, nn.Linear, _BatchNorm)
FORMAT = "sparsemtl-pruned-v1"
#: formats :func:`load_model` reads: pruned models and plain training checkpoints
READABLE = (FORMAT, "sparsemtl-checkpoint-v1")


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


def changed_widths(model: nn.Module, config: Config, specs: dict[str, TaskSpec]) -> dict[str, dict[str, Any]]:
    """Widths of the layers of ``model`` that differ from the unpruned architecture of
    ``config`` (compared with a fresh build, so re-pruning a pruned model records all changes)."""
    reference = layer_widths(build_model(_without_pretrained(config).model, specs))
    return {name: w for name, w in layer_widths(model).items() if reference.get(name) != w}


def _without_pretrained(config: Config) -> Config:
    """Weights come from the file: never reopen the pretrained file named in the config."""
    return dataclasses.replace(config, model=dataclasses.replace(config.model, pretrained=None))


def save_pruned(
    path: str | Path,
    model: nn.Module,
    config: Config,
    specs: dict[str, TaskSpec],
    widths: dict[str, dict[str, Any]],
) -> None:
    """Write ``model`` atomically; ``widths`` maps each changed layer's name to its
    ``{"type", "in", "out", ...}`` (:func:`layer_widths`, typically :func:`changed_widths`)."""
    payload = {
        "format": FORMAT,
        "config": config.to_dict(),
        "task_specs": {name: spec.to_dict() for name, spec in specs.items()},
        "widths": {name: dict(w) for name, w in widths.items()},
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    save_checkpoint(payload, path)


def load_pruned(path: str | Path) -> tuple[MultiTaskModel, Config, dict[str, TaskSpec]]:
    """Model (eval mode), config and task specs of a pruned file or a run checkpoint."""
    payload = load_checkpoint(path)
    if not isinstance(payload, dict) or payload.get("format") not in READABLE:
        raise CheckpointError(f"{str(path)!r} is not a sparsemtl model file (unknown format)")
    try:
        config = _without_pretrained(config_from_dict(payload["config"]))
        specs = {name: TaskSpec.from_dict(s) for name, s in payload["task_specs"].items()}
        model = build_model(config.model, specs)
        for name, width in payload.get("widths", {}).items():
            model.set_submodule(name, _rebuilt(model.get_submodule(name), width))
        model.load_state_dict(payload["model"], strict=True)
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as exc:
        raise CheckpointError(f"{str(path)!r} does not describe a loadable model: {exc}".splitlines()[0]) from None
    return model.eval(), config, specs


def load_model(path: str | Path) -> MultiTaskModel:
    """The model (eval mode) of a pruned file (:func:`save_pruned`) or of a run's ``best.pt``."""
    return load_pruned(path)[0]


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
