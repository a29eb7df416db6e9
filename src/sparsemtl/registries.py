"""Every registry of the package in one place: what ``sparsemtl list`` prints, and the check
that rejects an unknown name when a config is loaded (not when a run starts).

Each axis is a :class:`sparsemtl.registry.Registry` owned by its stage (datasets by ``data``,
task kinds and loss weightings by ``tasks``, heads by ``models``, groupings, penalties and
reweightings by ``sparsity``, LR schedulers and loggers by ``training``); this module only
gathers them. Encoders are timm's own registry.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import timm

from .data import DATASETS
from .errors import ConfigError
from .models import HEADS
from .registry import Registry
from .sparsity import GROUPINGS, PENALTIES, REWEIGHTS
from .tasks import TASKS, WEIGHTINGS
from .training.callbacks import LOGGERS
from .training.schedule import SCHEDULERS

if TYPE_CHECKING:
    from .config import Config

REGISTRIES: dict[str, Registry] = {
    "datasets": DATASETS,
    "tasks": TASKS,
    "heads": HEADS,
    "weightings": WEIGHTINGS,
    "groupings": GROUPINGS,
    "penalties": PENALTIES,
    "reweightings": REWEIGHTS,
    "schedulers": SCHEDULERS,
    "loggers": LOGGERS,
}
"""``sparsemtl list <axis>``: axis name -> registry (plus ``encoders``, timm's models)."""

#: config key -> (registry, extra names the key also accepts)
CONFIG_NAMES: dict[str, tuple[Registry, tuple[str, ...]]] = {
    "data.name": (DATASETS, ()),
    "model.dense_head": (HEADS, ()),
    "loss.weighting": (WEIGHTINGS, ()),
    "sparsity.grouping": (GROUPINGS, ()),
    "sparsity.penalty": (PENALTIES, ()),
    "sparsity.reweight": (REWEIGHTS, ()),
    "scheduler.name": (SCHEDULERS, ()),
    "train.loggers": (LOGGERS, ()),
}


def check_config_names(cfg: Config) -> None:
    """ConfigError naming the key for any name no registry holds."""
    for key, (registry, extra) in CONFIG_NAMES.items():
        section, field = key.split(".")
        value = getattr(getattr(cfg, section), field)
        for name in value if isinstance(value, tuple) else (value,):
            if name not in registry and name not in extra:
                allowed = ", ".join([*extra, *registry.names()])
                raise ConfigError(f"config key {key!r}: unknown {registry.kind} {name!r}; available: {allowed}")
    if not timm.is_model(cfg.model.encoder):
        raise ConfigError(
            f"config key 'model.encoder': {cfg.model.encoder!r} is not a timm model; "
            "see 'sparsemtl list encoders [PATTERN]'"
        )


def list_entries(axis: str, pattern: str = "*") -> list[tuple[str, str]]:
    """(name, one-line description) of every entry of ``axis`` (``encoders``: timm models
    matching ``pattern``)."""
    if axis == "encoders":
        return [(name, "") for name in timm.list_models(pattern)]
    if axis not in REGISTRIES:
        raise ConfigError(f"argument WHAT: unknown registry {axis!r}; available: {', '.join(axes())}")
    registry = REGISTRIES[axis]
    return [(name, registry.describe(name)) for name in registry.names()]


def axes() -> list[str]:
    return [*REGISTRIES, "encoders"]
