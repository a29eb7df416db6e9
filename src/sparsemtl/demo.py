"""The demo: a dense and a group-sparse multi-task model trained with the same budget, compared."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

from .config import ConfigError, load_config
from .reporting import compare_runs
from .training import train

DEMO_CONFIGS = {"dense": "demo_dense.yaml", "sparse": "demo_sparse.yaml"}


def default_config_dir() -> Path:
    """The repository's ``configs/`` folder (the package is installed editable from the repo)."""
    return Path(__file__).resolve().parents[2] / "configs"


def run_demo(
    out_dir: str | Path | None = None, config_dir: str | Path | None = None, overrides: list[str] | None = None
) -> tuple[str, dict[str, Any]]:
    """Train the demo runs into ``out_dir`` and return (comparison table, summaries)."""
    config_dir = Path(config_dir) if config_dir is not None else default_config_dir()
    out = Path(out_dir) if out_dir is not None else Path("demo-runs") / datetime.now().strftime("%Y%m%d-%H%M%S")
    summaries = {}
    for name, filename in DEMO_CONFIGS.items():
        path = config_dir / filename
        if not path.is_file():
            raise ConfigError(
                f"demo config {str(path)!r} not found; pass --configs DIR with {', '.join(DEMO_CONFIGS.values())}"
            )
        cfg = load_config(path, list(overrides or []) + [f"train.out_dir={out}", f"train.name={name}"])
        lam = cfg.sparsity.lam if cfg.sparsity.penalty != "none" else 0
        print(
            f"== training the {name} model ({cfg.model.encoder}, lambda={lam}) into {out / name}",
            flush=True,
        )
        summaries[name] = train(cfg)
    table = compare_runs(summaries)
    (out / "comparison.txt").write_text(table + "\n")
    (out / "comparison.json").write_text(json.dumps(summaries, indent=2, allow_nan=True))
    return table, summaries
