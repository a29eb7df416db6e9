"""Training: the loop, resume, LR and lambda schedules, early stopping."""

from .callbacks import LOGGERS, Callback, CsvLog, TensorBoardLog
from .schedule import EarlyStopping, Monitor, PenaltyScheduler, build_scheduler
from .trainer import RunInterrupted, Trainer, default_run_name, resume, train

__all__ = [
    "LOGGERS",
    "Callback",
    "CsvLog",
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
