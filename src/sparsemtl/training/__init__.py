"""Training: the loop, its callbacks, resume, LR and lambda schedules, early stopping."""

from .builtin_callbacks import Checkpointing, EarlyStop, SparsityLog, TaskFreezing
from .callbacks import LOGGERS, Callback, CsvLog, ProgressPrint, TensorBoardLog
from .schedule import EarlyStopping, Monitor, PenaltyScheduler, build_scheduler
from .trainer import RunInterrupted, Trainer, default_run_name, resume, train

__all__ = [
    "LOGGERS",
    "Callback",
    "Checkpointing",
    "CsvLog",
    "EarlyStop",
    "ProgressPrint",
    "SparsityLog",
    "TaskFreezing",
    "TensorBoardLog",
    "EarlyStopping",
    "Monitor",
    "PenaltyScheduler",
    "RunInterrupted",
    "Trainer",
    "build_scheduler",
    "default_run_name",
    "resume",
    "train",
]
