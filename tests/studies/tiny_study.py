"""Tiny study settings shared by the study tests: cells that train in about a second on one core."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sparsemtl.config import apply_overrides
from sparsemtl.studies import StudySpec, study_from_dict
from tests.conftest import TINY

TINY_BASE = apply_overrides(
    {}, [*TINY, "train.epochs=1", "data.batch_size=4", "data.eval_batch_size=8", "sparsity.penalty=group_lasso"]
)
TINY_BENCH = {"device": "cpu", "batches": [1], "threads": 1, "min_run_time": 0.01}


def tiny_study(grid: dict[str, Any], folder: Path, overrides: list[str] | None = None, **extra: Any) -> StudySpec:
    """A study of tiny cells over ``grid`` (extra top-level study keys may be given)."""
    raw = {"base": TINY_BASE, "grid": grid, "bench": TINY_BENCH, **extra}
    return study_from_dict(raw, folder, "tiny.yaml", overrides)
