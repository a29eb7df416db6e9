"""sparsemtl: parsimonious multi-task vision models with channel-wise group sparsity.

Pipeline: data -> models -> sparsity -> training -> evaluation/reporting. The CLI
(``sparsemtl``) is a thin layer over these functions.
"""

from .config import Config, ConfigError, config_from_dict, load_config
from .data import build_dataset
from .models import MultiTaskModel, build_model
from .pruning import load_model, prune_model, prune_run
from .sparsity import ProxAdamW, build_grouping, sparsity_report
from .training import Trainer, train

__version__ = "0.1.0"

__all__ = [
    "Config",
    "ConfigError",
    "MultiTaskModel",
    "ProxAdamW",
    "Trainer",
    "build_dataset",
    "build_grouping",
    "build_model",
    "config_from_dict",
    "load_config",
    "load_model",
    "prune_model",
    "prune_run",
    "sparsity_report",
    "train",
]
