"""Datasets: a registry of builders ``(DataConfig, split) -> Dataset`` and the loaders."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from torch.utils.data import Dataset

from ..config import ConfigError, DataConfig
from ..tasks.spec import TaskSpec
from .cache import MaterializedDataset
from .celebamask import CelebAMaskHQ, build_celebamask, prepare_celebamask
from .nyuv2 import NYUv2, build_nyuv2
from .registry import DATASETS
from .synthetic_faces import SyntheticFaces
from .synthetic_scenes import SyntheticScenes

SPLITS = ("train", "val", "test")


def split_seed(seed: int, split: str) -> int:
    """Independent generator seed per (run seed, split), so the splits never share samples."""
    return int(np.random.SeedSequence([seed, SPLITS.index(split)]).generate_state(1)[0])


def _synthetic_builder(cls: type):
    def build(cfg: DataConfig, split: str, tasks: Sequence[str] | None = None) -> Dataset:
        size = {"train": cfg.num_train, "val": cfg.num_val, "test": cfg.num_test}[split]
        dataset = cls(size, tuple(cfg.image_size), seed=split_seed(cfg.seed, split))
        return MaterializedDataset(dataset) if cfg.cache else dataset

    build.__doc__ = f"Procedural {cls.__name__} split of the configured size."
    return build


DATASETS.register("synthetic-scenes", _synthetic_builder(SyntheticScenes))
DATASETS.register("synthetic-faces", _synthetic_builder(SyntheticFaces))
DATASETS.register("nyuv2", build_nyuv2)
DATASETS.register("celebamask-hq", build_celebamask)


def build_dataset(cfg: DataConfig, split: str, tasks: Sequence[str] | None = None) -> Dataset:
    """The ``split`` ('train', 'val' or 'test') of the configured dataset; ``tasks`` (default: all
    the dataset has) lets file-based datasets read only the files those tasks need."""
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    try:
        builder = DATASETS.get(cfg.name)
    except KeyError as exc:
        raise ConfigError(f"config key 'data.name': {exc.args[0]}") from None
    return builder(cfg, split, tasks=tuple(tasks) if tasks is not None else None)


def select_tasks(dataset: Dataset, tasks: tuple[str, ...] | list[str]) -> dict[str, TaskSpec]:
    """Specs of the requested tasks, in the requested order; unknown names are a config error."""
    available: dict[str, TaskSpec] = dataset.task_specs  # type: ignore[attr-defined]
    missing = [t for t in tasks if t not in available]
    if missing:
        raise ConfigError(
            f"config key 'tasks': {missing[0]!r} is not a target of this dataset; available: {', '.join(available)}"
        )
    return {t: available[t] for t in tasks}


__all__ = [
    "DATASETS",
    "CelebAMaskHQ",
    "MaterializedDataset",
    "NYUv2",
    "SPLITS",
    "SyntheticFaces",
    "SyntheticScenes",
    "build_dataset",
    "prepare_celebamask",
    "select_tasks",
    "split_seed",
]
