"""sparsemtl: parsimonious multi-task vision models with channel-wise group sparsity.

Pipeline: data -> models -> sparsity -> training -> evaluation/reporting. The CLI
(``sparsemtl``) is a thin layer over these functions.
"""

from . import _quiet_imports  # noqa: F401  (first: silences a torch import-time log line)
from .config import Config, config_from_dict, load_config
from .data import build_dataset
from .errors import ConfigError, SparsemtlError
from .models import MultiTaskModel, build_model
from .pruning import prune_model, prune_run
from .runs import RunDir, RunSummary, load_model, open_model
from .sparsity import ProxAdamW, build_grouping, sparsity_report
from .training import Trainer, resume, train

__version__ = "0.1.0"

__all__ = [
    "Config",
    "ConfigError",
    "MultiTaskModel",
    "ProxAdamW",
    "RunDir",
    "RunSummary",
    "SparsemtlError",
    "Trainer",
    "build_dataset",
    "build_grouping",
    "build_model",
    "config_from_dict",
    "load_config",
    "load_model",
    "open_model",
    "prune_model",
    "prune_run",
    "resume",
    "sparsity_report",
    "train",
]
