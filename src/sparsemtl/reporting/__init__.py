"""Reporting: run comparisons and sparsity reports (terminal tables: :mod:`sparsemtl.tables`)."""

from ..tables import format_table, format_value
from .compare import compare_runs

__all__ = ["compare_runs", "format_table", "format_value"]
