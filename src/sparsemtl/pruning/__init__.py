"""Physical removal of zero channel groups, portable saving of pruned models and ONNX export."""

from .export import export_onnx
from .io import layer_widths, load_model, load_pruned, save_pruned
from .prune import PruneResult, PruningVerificationError, prune_model, prune_run, verify_pruned

__all__ = [
    "PruneResult",
    "PruningVerificationError",
    "export_onnx",
    "layer_widths",
    "load_model",
    "load_pruned",
    "prune_model",
    "prune_run",
    "save_pruned",
    "verify_pruned",
]
