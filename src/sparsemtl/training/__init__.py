"""Training: the loop, checkpoints, schedules and the runtime (device, seeds, AMP, DDP)."""

from ..runtime import ProcessContext, init_process_context, resolve_device, seed_everything
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .schedule import EarlyStopping, Monitor, PenaltyScheduler, build_scheduler
from .trainer import NonFiniteLossError, Trainer, default_run_dir, train

__all__ = [
    "CheckpointError",
    "EarlyStopping",
    "Monitor",
    "NonFiniteLossError",
    "PenaltyScheduler",
    "ProcessContext",
    "Trainer",
    "build_scheduler",
    "default_run_dir",
    "init_process_context",
    "load_checkpoint",
    "resolve_device",
    "save_checkpoint",
    "seed_everything",
    "train",
]
