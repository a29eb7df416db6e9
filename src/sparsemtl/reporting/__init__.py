"""Reporting: terminal tables and run comparisons."""

from .compare import compare_runs
from .table import format_table, format_value

__all__ = ["compare_runs", "format_table", "format_value"]
