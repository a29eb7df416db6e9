"""Reopen a finished run directory: its validated config, task specs and trained model."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from .config import Config, config_from_dict
from .models import MultiTaskModel, build_model
from .tasks.spec import TaskSpec
from .training.checkpoint import CheckpointError, load_checkpoint


@dataclass
class LoadedRun:
    run_dir: Path
    config: Config
    specs: dict[str, TaskSpec]
    model: MultiTaskModel
    epoch: int


def load_run(run_dir: str | Path, checkpoint: str = "best.pt") -> LoadedRun:
    """Rebuild the model of ``run_dir`` from its ``config.yaml`` and load ``checkpoint`` into it."""
    run_dir = Path(run_dir)
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise FileNotFoundError(f"{str(run_dir)!r} is not a run directory: {config_path.name} is missing")
    config = config_from_dict(yaml.safe_load(config_path.read_text()))
    payload = load_checkpoint(run_dir / checkpoint)
    try:
        specs = {name: TaskSpec.from_dict(s) for name, s in payload["task_specs"].items()}
        model = build_model(config.model, specs)
        model.load_state_dict(payload["model"])
    except (KeyError, RuntimeError) as exc:
        raise CheckpointError(
            f"checkpoint {str(run_dir / checkpoint)!r} does not match its config: {exc}".splitlines()[0]
        ) from None
    return LoadedRun(run_dir, config, specs, model.eval(), int(payload["epoch"]))
