"""Registry of dataset builders: ``builder(cfg: DataConfig, split: str) -> Dataset``."""

from __future__ import annotations

from ..registry import Registry

DATASETS: Registry = Registry("dataset")
