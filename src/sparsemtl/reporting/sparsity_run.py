"""Sparsity analysis of a finished run: table, JSON and per-layer plot (``sparsemtl sparsity``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..runs import RunDir, atomic_write_json, open_model
from ..sparsity import model_sparsity_report
from ..sparsity.report import SparsityReport
from ..tables import format_table
from .sparsity_plot import plot_layer_sparsity


@dataclass
class RunSparsity:
    report: SparsityReport
    json_path: Path
    plot_path: Path | None
    table: str


def sparsity_table(report: SparsityReport) -> str:
    """Per-layer rows then the total, with the same zero-group definition everywhere."""
    rows = [[r.layer, r.groups, r.zero_groups, r.zero_group_pct, r.weights, r.zero_weight_pct] for r in report.layers]
    rows.append(
        ["TOTAL", report.groups, report.zero_groups, report.zero_group_pct, report.weights, report.zero_weight_pct]
    )
    table = format_table(
        ["layer", "groups", "zero groups", "zero groups %", "weights", "weights in zero groups %"], rows
    )
    if not report.channel_sets:
        return table
    sets = [[s.name, s.channels, s.removable, 100.0 * s.removable / s.channels] for s in report.channel_sets]
    sets.append(
        ["TOTAL", report.channels, report.removable_channels, 100.0 * report.removable_channels / report.channels]
    )
    return (
        table + "\n\n" + format_table(["channel set (coupled channels)", "channels", "removable", "removable %"], sets)
    )


def analyze_run(
    run_dir: str | Path, out_dir: str | Path | None = None, checkpoint: str = "best.pt", plot: bool = True
) -> RunSparsity:
    """Report the sparsity of a run's checkpoint under the grouping it was trained with."""
    run_dir = RunDir.open(run_dir).path
    run = open_model(run_dir / checkpoint)
    cfg = run.config.sparsity
    report = model_sparsity_report(run.model, cfg.grouping, cfg.modules)
    out = Path(out_dir) if out_dir is not None else run_dir
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "sparsity.json"
    payload = {"run_dir": str(run_dir), "checkpoint": checkpoint, "epoch": run.epoch, **report.to_dict()}
    atomic_write_json(json_path, payload)
    plot_path = (
        plot_layer_sparsity(report, out / "sparsity.png", f"{run_dir.name}: zero {cfg.grouping} groups per layer")
        if plot
        else None
    )
    return RunSparsity(report, json_path, plot_path, sparsity_table(report))
