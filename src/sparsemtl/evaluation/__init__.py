"""Evaluation of a model on a split: exact split-level losses and metrics."""

from .evaluate import EvalResult, evaluate, task_loss_options

__all__ = ["EvalResult", "evaluate", "task_loss_options"]
