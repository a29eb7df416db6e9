"""The study's tables: display tables (Markdown, HTML) and flat files (CSV, JSON)."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..tables import format_value
from .aggregate import Group, Stat, Study, format_lam

INTEGER_COST = ("removed_channels", "params", "macs", "params_dense", "macs_dense")
COST_COLUMNS = {
    "zero_group_pct": "zero groups %",
    "removed_channels": "channels removed",
    "params": "params",
    "macs": "MACs",
    "mac_reduction_pct": "MAC reduction %",
}


@dataclass(frozen=True)
class Table:
    """A display table: every cell already a string."""

    title: str
    headers: list[str]
    rows: list[list[str]]
    note: str = ""

    def markdown(self) -> str:
        def line(cells: Sequence[str]) -> str:
            return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

        out = [f"### {self.title}", ""]
        if self.note:
            out += [self.note, ""]
        out += [line(self.headers), "|" + "|".join("---" for _ in self.headers) + "|"]
        out += [line(r) for r in self.rows]
        return "\n".join(out)


def format_stat(s: Stat | None, integer: bool = False) -> str:
    """``mean ± std`` (std left out for one trial), blank when there is no value."""
    if s is None:
        return ""

    if integer:
        mean = f"{s.mean:,.0f}"
        return mean if s.std is None else f"{mean} ± {s.std:,.0f}"
    mean = format_value(float(s.mean))
    if s.std is None:
        return mean
    if "e" in mean or mean == "nan":
        return f"{mean} ± {s.std:.2e}"
    decimals = len(mean.split(".")[1]) if "." in mean else 0
    return f"{mean} ± {s.std:.{decimals}f}"  # the std to the mean's precision


def _n(group: Group) -> str:
    return f"{len(group.done)}/{len(group.cells)}"


def status_table(study: Study) -> Table:
    rows = [[c.id, "+".join(c.tasks), format_lam(c.lam), str(c.seed), c.state] for c in study.cells]
    return Table("Cells", ["cell", "tasks", "λ", "seed", "state"], rows)


def metric_tables(study: Study) -> list[Table]:
    """One table per task: every group that trains it, every test metric as mean ± std."""
    tables = []
    tasks = list(dict.fromkeys(t for g in study.groups for t in g.tasks))
    for task in tasks:
        groups = [g for g in study.groups if task in g.tasks]
        names = list(dict.fromkeys(m for g in groups for m in g.metrics.get(task, {})))
        rows = [[g.label, _n(g)] + [format_stat(g.metrics.get(task, {}).get(m)) for m in names] for g in groups]
        kind = study.kinds.get(task)
        title = f"Test metrics: {task}" + (f" ({kind})" if kind and kind != task else "")
        tables.append(Table(title, ["group", "n"] + names, rows))
    return tables


def delta_table(study: Study) -> Table | None:
    groups = [g for g in study.groups if not g.is_baseline]
    if not groups:
        return None
    variants = list(groups[0].deltas)
    headers = ["group", "n"] + [
        f"{groups[0].deltas[v].symbol} % ({groups[0].deltas[v].sign_convention})" for v in variants
    ]
    rows, reasons = [], {}
    for g in groups:
        row = [g.label, _n(g)]
        for v in variants:
            d = g.deltas[v]
            row.append(format_stat(d.stat) if d.stat else "unavailable")
            if d.unavailable and g.label not in reasons.setdefault(d.unavailable, []):
                reasons[d.unavailable].append(g.label)
        rows.append(row)
    note = (
        "Against the study's dense single-task cells with the same other grid values; per trial, "
        "against the baseline trial with the same seed when it is complete, else against the mean of "
        "the baseline's trials; then mean ± std over trials."
    )
    if reasons:
        note += " Unavailable: " + "; ".join(f"{', '.join(labels)}: {why}" for why, labels in reasons.items()) + "."
    return Table("Multi-task Δ vs dense single-task baselines", headers, rows, note)


def cost_table(study: Study) -> Table:
    batches = list(dict.fromkeys(b for g in study.groups for b in g.latency))
    headers = ["group", "n"] + list(COST_COLUMNS.values()) + [f"latency ms (batch {b})" for b in batches]
    rows = []
    for g in study.groups:
        row = [g.label, _n(g)] + [format_stat(g.cost.get(k), k in INTEGER_COST) for k in COST_COLUMNS]
        rows.append(row + [format_stat(g.latency.get(b)) for b in batches])
    devices = sorted({str((c.record or {}).get("latency", {}).get("device")) for c in study.done if _has_latency(c)})
    note = "Params and MACs of the deployed model (the pruned one for sparse cells); latency is the median "
    note += "of the deployed model with BatchNorm folded" + (f", on {', '.join(devices)}." if devices else ".")
    return Table("Cost", headers, rows, note)


def _has_latency(cell: Any) -> bool:
    return bool((cell.record or {}).get("latency"))


def all_tables(study: Study) -> list[Table]:
    tables = metric_tables(study)
    delta = delta_table(study)
    return tables + ([delta] if delta else []) + [cost_table(study), status_table(study)]


def _stat_columns(prefix: str, s: Stat | None) -> dict[str, Any]:
    if s is None:
        return {f"{prefix} mean": "", f"{prefix} std": "", f"{prefix} n": 0}
    return {f"{prefix} mean": s.mean, f"{prefix} std": "" if s.std is None else s.std, f"{prefix} n": s.n}


def group_rows(study: Study) -> list[dict[str, Any]]:
    """One flat record per group, every statistic as separate mean/std/n columns."""
    tasks = list(dict.fromkeys(t for g in study.groups for t in g.tasks))
    metrics = {t: list(dict.fromkeys(m for g in study.groups for m in g.metrics.get(t, {}))) for t in tasks}
    batches = list(dict.fromkeys(b for g in study.groups for b in g.latency))
    rows = []
    for g in study.groups:
        row: dict[str, Any] = {
            "group": g.label,
            "tasks": "+".join(g.tasks),
            "lam": g.lam,
            "dense": g.dense,
            "cells_done": len(g.done),
            "cells": len(g.cells),
        }
        row.update({k: g.values.get(k, "") for k in study.varying if k not in ("tasks", "sparsity.lam")})
        for t in tasks:
            for m in metrics[t]:
                row.update(_stat_columns(f"{t}/{m}", g.metrics.get(t, {}).get(m)))
        for v in ("delta_m", "delta_p", "delta_primary"):
            d = g.deltas.get(v)
            row.update(_stat_columns(v, d.stat if d else None))
        for k in COST_COLUMNS:
            row.update(_stat_columns(k, g.cost.get(k)))
        for b in batches:
            row.update(_stat_columns(f"latency_ms_batch{b}", g.latency.get(b)))
        rows.append(row)
    return rows


def to_csv(rows: Sequence[dict[str, Any]]) -> str:
    headers = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=headers, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def study_json(study: Study) -> dict[str, Any]:
    """Everything the tables show, with the trial values, as plain data."""
    return {
        "study_dir": str(study.path),
        "cells": [{"id": c.id, "values": c.values, "state": c.state} for c in study.cells],
        "task_kinds": study.kinds,
        "groups": [
            {
                "label": g.label,
                "values": g.values,
                "tasks": g.tasks,
                "lam": g.lam,
                "dense": g.dense,
                "cells": [c.id for c in g.cells],
                "cells_done": [c.id for c in g.done],
                "metrics": {t: {m: s.to_dict() for m, s in ms.items()} for t, ms in g.metrics.items()},
                "baselines": {t: (b.label if b else None) for t, b in g.baselines.items()},
                "deltas": {v: d.to_dict() for v, d in g.deltas.items()},
                "cost": {k: s.to_dict() for k, s in g.cost.items()},
                "latency_ms": {b: s.to_dict() for b, s in g.latency.items()},
                "layer_zero_group_pct": {k: s.to_dict() for k, s in g.layers.items()},
            }
            for g in study.groups
        ],
    }
