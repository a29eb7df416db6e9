"""``sparsemtl report STUDY_DIR``: a study's tables, figures and one self-contained report.html.

Works on a study that is still running: only complete cells (``cell.json`` written) enter the
numbers, the others are listed with their state. Writes into ``out_dir`` (default
``STUDY_DIR/report``): ``report.html`` (everything embedded, opens offline), ``report.md``,
``report.json`` (every statistic with its trial values), ``groups.csv`` (one row per group),
``cells.csv`` (one row per cell) and the PNG figures.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from ..runs import atomic_write_json, atomic_write_text
from .aggregate import Study, load_study
from .html_page import render_page
from .narrative import summary_paragraphs
from .plots import Plot, write_plots
from .report_tables import Table, all_tables, group_rows, study_json, to_csv


def cell_rows(study: Study) -> list[dict[str, Any]]:
    """One flat record per cell: its state, and for complete cells its test metrics and cost."""
    rows = []
    for cell in study.cells:
        row: dict[str, Any] = {
            "cell": cell.id,
            "state": cell.state,
            "tasks": "+".join(cell.tasks),
            "lam": cell.lam,
            "seed": cell.seed,
        }
        if cell.done:
            for task, metrics in cell.test_metrics().items():
                row.update({f"{task}/{m}": v for m, v in metrics.items()})
            record = cell.record or {}
            row.update({k: v for k, v in (record.get("cost") or {}).items() if not isinstance(v, (list, dict))})
            ms = (record.get("latency") or {}).get("ms") or {}
            row.update({f"latency_ms_batch{b}": v for b, v in ms.items()})
        rows.append(row)
    return rows


def _markdown(title: str, paragraphs: list[str], tables: list[Table], plots: list[Plot], notices: list[str]) -> str:
    parts = [f"# {title}", ""] + [f"> {n}\n" for n in notices] + ["## Summary", ""]
    parts += [p + "\n" for p in paragraphs]
    parts += ["## Tables", ""] + [t.markdown() + "\n" for t in tables]
    if plots:
        parts += ["## Figures", ""]
        parts += [f"![{p.title}]({p.path.name})\n\n*{p.caption}*\n" for p in plots]
    return "\n".join(parts)


def write_report(study_dir: str | Path, out_dir: str | Path | None = None) -> Path:
    """Aggregate ``study_dir`` and write the report files; returns the path of ``report.html``."""
    study = load_study(study_dir)
    out = Path(out_dir) if out_dir is not None else Path(study_dir) / "report"
    out.mkdir(parents=True, exist_ok=True)
    title = f"Study report: {Path(study_dir).resolve().name}"
    tables = all_tables(study)
    paragraphs = summary_paragraphs(study)
    plots, notice = write_plots(study, out)
    notices = [notice] if notice else []
    if notice:
        print(f"sparsemtl: note: {notice}", file=sys.stderr)
    atomic_write_text(out / "groups.csv", to_csv(group_rows(study)))
    atomic_write_text(out / "cells.csv", to_csv(cell_rows(study)))
    atomic_write_json(
        out / "report.json",
        {**study_json(study), "summary": paragraphs, "figures": [p.path.name for p in plots], "notices": notices},
    )
    atomic_write_text(out / "report.md", _markdown(title, paragraphs, tables, plots, notices))
    html_path = out / "report.html"
    atomic_write_text(html_path, render_page(title, paragraphs, tables, plots, notices))
    return html_path
