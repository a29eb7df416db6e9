"""Physical removal of zero channel groups, portable saving of pruned models and ONNX export."""

from ..models.widths import layer_widths
from ..runs import load_model, save_pruned
from .export import export_onnx
from .prune import PruneResult, PruningVerificationError, prune_model, prune_run, verify_pruned

__all__ = [
    "PruneResult",
    "PruningVerificationError",
    "export_onnx",
    "layer_widths",
    "load_model",
    "prune_model",
    "prune_run",
    "save_pruned",
    "verify_pruned",
]
