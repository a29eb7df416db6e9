"""Runs on disk: the run directory, its durable files, and opening any model file.

Everything that reads or writes a run (training, pruning, reporting, benchmarking, the CLI) does
so through this package; it sits below training in the pipeline and imports none of it.
"""

from .files import (
    atomic_write,
    atomic_write_json,
    atomic_write_text,
    clean_stale_temps,
    load_checkpoint,
    save_checkpoint,
)
from .model_file import CHECKPOINT_FORMAT, PRUNED_FORMAT, ModelFile, load_model, model_path, open_model, save_pruned
from .run_dir import RESUME_MAY_CHANGE, RunDir, check_resume_config, check_run_name
from .summary import RunSummary

__all__ = [
    "CHECKPOINT_FORMAT",
    "PRUNED_FORMAT",
    "RESUME_MAY_CHANGE",
    "ModelFile",
    "RunDir",
    "RunSummary",
    "atomic_write",
    "atomic_write_json",
    "atomic_write_text",
    "check_resume_config",
    "check_run_name",
    "clean_stale_temps",
    "load_checkpoint",
    "load_model",
    "model_path",
    "open_model",
    "save_checkpoint",
    "save_pruned",
]
