"""Evaluation: exact split-level metrics, model size and compute, and latency measurement."""

from .complexity import analytic_conv_macs, count_macs, count_parameters
from .evaluate import EvalResult, evaluate, task_loss_options
from .fold import fold_batchnorm, foldable_pairs
from .latency import BenchResult, LatencyResult, benchmark_models, format_bench_table, measure_latency
from .machine import describe_machine, format_machine

__all__ = [
    "BenchResult",
    "EvalResult",
    "LatencyResult",
    "analytic_conv_macs",
    "benchmark_models",
    "count_macs",
    "count_parameters",
    "describe_machine",
    "evaluate",
    "fold_batchnorm",
    "foldable_pairs",
    "format_bench_table",
    "format_machine",
    "measure_latency",
    "task_loss_options",
]
