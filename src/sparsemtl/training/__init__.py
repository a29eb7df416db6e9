"""Training: the loop, checkpoints, schedules and the runtime (device, seeds, AMP, DDP)."""

from .checkpoint import load_checkpoint, save_checkpoint
from ..runtime import ProcessContext, init_process_context, resolve_device, seed_everything
from .schedule import EarlyStopping, Monitor, build_scheduler, lam_for_epoch
from .trainer import NonFiniteLossError, Trainer, default_run_dir, train

__all__ = [
    "EarlyStopping",
    "Monitor",
    "NonFiniteLossError",
    "ProcessContext",
    "Trainer",
    "build_scheduler",
    "default_run_dir",
    "init_process_context",
    "lam_for_epoch",
    "load_checkpoint",
    "resolve_device",
    "save_checkpoint",
    "seed_everything",
    "train",
]
