"""Open any model file: a run directory, one of its checkpoints, or a pruned model file.

Two formats exist, both plain tensors and containers (``torch.load(..., weights_only=True)``,
no pickled code): training checkpoints (:data:`CHECKPOINT_FORMAT`, ``best.pt`` / ``last.pt``)
and pruned models (:data:`PRUNED_FORMAT`: the original architecture's config and task specs,
the widths of the layers pruning changed, and the weights).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import Config, config_from_dict
from ..errors import CheckpointError, ConfigError, one_line
from ..models import MultiTaskModel, build_model
from ..models.widths import apply_widths
from ..tasks.spec import TaskSpec
from .files import load_checkpoint, save_checkpoint

CHECKPOINT_FORMAT = "sparsemtl-checkpoint-v1"
PRUNED_FORMAT = "sparsemtl-pruned-v1"
READABLE = (CHECKPOINT_FORMAT, PRUNED_FORMAT)


@dataclass
class ModelFile:
    """A model opened from disk, with what is needed to use it (config, task specs)."""

    path: Path
    model: MultiTaskModel
    config: Config
    specs: dict[str, TaskSpec]
    format: str
    epoch: int | None

    @property
    def run_dir(self) -> Path | None:
        """The run directory a training checkpoint belongs to (None for a pruned file)."""
        return self.path.parent if self.format == CHECKPOINT_FORMAT else None


def model_path(path: str | Path) -> Path:
    """A run directory stands for its ``best.pt``."""
    path = Path(path)
    return path / "best.pt" if path.is_dir() else path


def without_pretrained(config: Config) -> Config:
    """Weights come from the file: never reopen the pretrained file named in the config."""
    return dataclasses.replace(config, model=dataclasses.replace(config.model, pretrained=None))


def open_model(path: str | Path, map_location: str | torch.device = "cpu") -> ModelFile:
    """The model (eval mode) of a run directory, a run checkpoint or a pruned file."""
    file = model_path(path)
    if not file.exists():
        what = "run directory has no best.pt (no epoch finished)" if Path(path).is_dir() else "does not exist"
        raise CheckpointError(f"model {str(file)!r}: {what}; expected a run directory, its best.pt or a pruned file")
    payload = load_checkpoint(file, map_location)
    fmt = payload.get("format")
    if fmt not in READABLE:
        raise CheckpointError(
            f"{str(file)!r} is not a sparsemtl model file: format {fmt!r}, expected one of {', '.join(READABLE)}"
        )
    try:
        config = without_pretrained(config_from_dict(payload["config"]))
        specs = {name: TaskSpec.from_dict(s) for name, s in payload["task_specs"].items()}
        model = apply_widths(build_model(config.model, specs), payload.get("widths", {}))
        model.load_state_dict(payload["model"], strict=True)
    except ConfigError as exc:
        raise CheckpointError(f"{str(file)!r} holds an invalid config: {exc}") from None
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as exc:
        raise CheckpointError(f"{str(file)!r} does not describe a loadable model: {one_line(exc)}") from None
    epoch = payload.get("epoch")
    return ModelFile(file, model.eval(), config, specs, fmt, int(epoch) if epoch is not None else None)


def load_model(path: str | Path) -> MultiTaskModel:
    """The model (eval mode) of a pruned file, a run directory or one of its checkpoints."""
    return open_model(path).model


def save_pruned(
    path: str | Path,
    model: nn.Module,
    config: Config,
    specs: dict[str, TaskSpec],
    widths: dict[str, dict[str, Any]],
) -> None:
    """Write a pruned ``model`` durably; ``widths`` maps each changed layer's name to its
    ``{"type", "in", "out", ...}`` (:func:`sparsemtl.models.widths.changed_widths`)."""
    payload = {
        "format": PRUNED_FORMAT,
        "config": config.to_dict(),
        "task_specs": {name: spec.to_dict() for name, spec in specs.items()},
        "widths": {name: dict(w) for name, w in widths.items()},
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    save_checkpoint(payload, path)
