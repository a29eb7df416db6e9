"""Single-task baselines stored with a run, and the multi-task Delta against them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..config import ConfigError
from ..tasks.spec import TaskSpec
from .delta import DELTAS, DeltaError


def load_baselines(baselines: dict[str, str], specs: dict[str, TaskSpec]) -> dict[str, dict[str, float]]:
    """Test metrics of each task from its single-task run's ``summary.json`` (``train.baselines``
    maps task -> run directory); every task of the run needs one, or none at all."""
    if not baselines:
        return {}
    missing = [t for t in specs if t not in baselines]
    unknown = [t for t in baselines if t not in specs]
    if missing or unknown:
        raise ConfigError(
            f"config key 'train.baselines': needs exactly the tasks {list(specs)}; missing {missing}, unknown {unknown}"
        )
    metrics = {}
    for task, run_dir in baselines.items():
        path = Path(run_dir) / "summary.json"
        if not path.is_file():
            raise ConfigError(f"config key 'train.baselines.{task}': {str(path)!r} does not exist")
        test = json.loads(path.read_text()).get("test", {}).get("metrics", {})
        if task not in test:
            raise ConfigError(f"config key 'train.baselines.{task}': {str(path)!r} has no test metrics for {task!r}")
        metrics[task] = test[task]
    return metrics


def multitask_deltas(
    metrics: dict[str, dict[str, float]], baselines: dict[str, dict[str, float]], specs: dict[str, TaskSpec]
) -> dict[str, Any]:
    """All three Delta variants, each with its sign convention spelled out. A variant that is
    undefined (e.g. a baseline metric equal to 0) records why instead of failing the run."""
    kinds = {name: spec.kind for name, spec in specs.items()}
    out: dict[str, Any] = {}
    for name, fn in DELTAS.items():
        try:
            r = fn(metrics, baselines, kinds)
        except DeltaError as exc:
            out[name] = {"value": None, "describe": f"{name}: undefined ({exc})", "per_task": {}}
        else:
            out[name] = {"value": r.value, "describe": r.describe(), "per_task": r.per_task}
    return out
