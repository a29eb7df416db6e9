"""Side-by-side comparison of finished runs (their ``summary.json``)."""

from __future__ import annotations

from typing import Any

from ..tables import format_table


def compare_runs(summaries: dict[str, dict[str, Any]]) -> str:
    """One table: test metrics per task, sparsity and parameter counts, one column per run."""
    names = list(summaries)
    rows: list[list[Any]] = []
    first = summaries[names[0]]
    for task in first["tasks"]:
        for metric in first["test"]["metrics"][task]:
            rows.append([f"{task}/{metric}"] + [s["test"]["metrics"][task][metric] for s in summaries.values()])
    rows.append(["test loss (sum over tasks)"] + [s["test"]["loss"] for s in summaries.values()])
    rows.append(["zero groups %"] + [s["sparsity"]["zero_group_pct"] for s in summaries.values()])
    rows.append(["weights in zero groups %"] + [s["sparsity"]["zero_weight_pct"] for s in summaries.values()])
    rows.append(["parameters"] + [s["parameters"]["total"] for s in summaries.values()])
    rows.append(["non-zero parameters"] + [s["parameters"]["nonzero"] for s in summaries.values()])
    rows.append(["best epoch / epochs run"] + [f"{s['best_epoch']}/{s['epochs_run']}" for s in summaries.values()])
    rows.append(["train seconds"] + [s["train_seconds"] for s in summaries.values()])
    return format_table(["test metric (best val checkpoint)"] + names, rows)
