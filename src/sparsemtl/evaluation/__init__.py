"""Evaluation: exact split-level metrics and latency measurement (model size and compute:
:mod:`sparsemtl.models.complexity`)."""

from .evaluate import EvalResult, evaluate, task_loss_options
from .fold import fold_batchnorm, foldable_pairs
from .latency import BenchResult, LatencyResult, benchmark_models, format_bench_table, measure_latency
from .machine import describe_machine, format_machine

__all__ = [
    "BenchResult",
    "EvalResult",
    "LatencyResult",
    "benchmark_models",
    "describe_machine",
    "evaluate",
    "fold_batchnorm",
    "foldable_pairs",
    "format_bench_table",
    "format_machine",
    "measure_latency",
    "task_loss_options",
]
