"""Registry of dataset builders: ``builder(cfg: DataConfig, split: str, tasks=None) -> Dataset``."""

from __future__ import annotations

from ..registry import Registry

DATASETS: Registry = Registry("dataset")
