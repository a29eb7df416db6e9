"""The report's summary paragraphs, written from the numbers.

Sparse and dense multi-task models are compared on the one-metric-per-task Δ of Maninis et
al. (positive = better) against the same dense single-task baselines. A difference is called
resolved only when it exceeds its standard error, sqrt(s1²/n1 + s2²/n2), which needs two or
more trials on both sides; otherwise the text says it is not.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from ..errors import DeltaError
from ..evaluation.delta import primary_metric
from ..tasks import get_task
from .aggregate import DONE, FINISHING, PENDING, STARTED, Group, Stat, Study, format_lam

VARIANT = "delta_primary"


def _delta(group: Group) -> Stat | None:
    d = group.deltas.get(VARIANT)
    return d.stat if d is not None else None


def _standard_error(a: Stat, b: Stat) -> float | None:
    if a.std is None or b.std is None:
        return None
    return math.sqrt(a.std**2 / a.n + b.std**2 / b.n)


def _noise(diff: float, se: float | None) -> str:
    if se is None:
        return "fewer than two trials on a side, so no error estimate"
    if abs(diff) <= se:
        return f"within one standard error ({se:.2f}), not resolved by these trials"
    return f"{abs(diff) / se:.1f} standard errors"


def _cost_change(sparse: Group, dense: Group) -> str:
    parts = []
    s, d = sparse.cost.get("macs"), dense.cost.get("macs")
    if s and d and d.mean:
        parts.append(f"MACs {100.0 * (s.mean / d.mean - 1.0):+.1f}%")
    batches = [b for b in sparse.latency if b in dense.latency]
    if batches:
        b = min(batches, key=int)
        parts.append(f"latency {100.0 * (sparse.latency[b].mean / dense.latency[b].mean - 1.0):+.1f}% (batch {b})")
    return ", ".join(parts) + " vs dense MTL" if parts else "no cost measured"


def status_paragraph(study: Study) -> str:
    counts = {state: sum(c.state == state for c in study.cells) for state in (DONE, FINISHING, STARTED, PENDING)}
    text = f"{counts[DONE]} of {len(study.cells)} cells are complete."
    waiting = [f"{n} {state}" for state, n in counts.items() if state != DONE and n]
    if waiting:
        text += (
            f" Not yet in the numbers: {', '.join(waiting)} (a cell counts once its cell.json exists; cells "
            "with a summary.json but no cell.json yet are still being pruned and measured and are left out "
            "entirely, so that every number of a group comes from the same trials)."
        )
    return text


def _primary_changes(sparse: Group, dense: Group, kinds: Mapping[str, str | None]) -> list[str]:
    """Each task's primary metric of ``sparse`` against ``dense``, relative, positive = better."""
    changes = []
    for task in sparse.tasks:
        kind, names = kinds.get(task), list(dense.metrics.get(task, {}))
        try:
            name = primary_metric(kind, names) if kind and names else None
        except DeltaError:
            name = None
        s, d = sparse.metrics.get(task, {}).get(name or ""), dense.metrics.get(task, {}).get(name or "")
        if kind is None or name is None or s is None or d is None or d.mean == 0:
            continue
        gain = (s.mean - d.mean) / abs(d.mean) * 100.0
        gain = (gain if get_task(kind).metric_directions[name] else -gain) + 0.0  # no "-0.0"
        changes.append(f"{task} {name} {s.mean:.4g} vs {d.mean:.4g} ({gain:+.1f}%, positive = better)")
    return changes


def _direct_comparison(groups: Sequence[Group], kinds: Mapping[str, str | None]) -> str:
    """Sparse vs dense MTL on each task's primary metric, for when the Δ is unavailable."""
    dense = next((g for g in groups if g.dense and g.done), None)
    sparse = [g for g in groups if not g.dense and g.done]
    if dense is None or not sparse:
        return ""
    items = [
        f"{format_lam(g.lam)}: {', '.join(changes)}; {_cost_change(g, dense)}"
        for g in sparse
        if (changes := _primary_changes(g, dense, kinds))
    ]
    if not items:
        return ""
    return " Compared directly with dense MTL instead (mean over trials): " + "; ".join(items) + "."


def series_paragraph(groups: Sequence[Group], kinds: Mapping[str, str | None]) -> str | None:
    """Where sparse MTL beats dense MTL on Δ, by how much, and the best trade-off, for one task set."""
    head = groups[0]
    if not head.multitask:
        return None
    name = "+".join(head.tasks) + (f" ({head.context})" if head.context else "")
    dense = next((g for g in groups if g.dense and _delta(g) is not None), None)
    sparse = [g for g in groups if not g.dense and _delta(g) is not None]
    if dense is None or not sparse:
        reasons = {d.unavailable for g in groups if (d := g.deltas.get(VARIANT)) and d.unavailable}
        why = f" ({'; '.join(sorted(reasons))})" if reasons else ""
        text = f"{name}: no dense-vs-sparse Δ comparison yet: needs Δ for the dense and a sparse λ{why}."
        return text + _direct_comparison(groups, kinds)
    d = _delta(dense)
    assert d is not None
    text = f"{name}: dense MTL Δ = {d.mean:+.2f}% (n={d.n})."
    better, worse = [], []
    for g in sparse:
        s = _delta(g)
        assert s is not None
        diff = s.mean - d.mean
        item = (
            f"{format_lam(g.lam)} (Δ = {s.mean:+.2f}%, {diff:+.2f} points, "
            f"{_noise(diff, _standard_error(s, d))}; {_cost_change(g, dense)})"
        )
        (better if diff > 0 else worse).append((g, diff, item))
    if better:
        text += " Sparse MTL beats dense MTL at " + "; ".join(item for _, _, item in better) + "."
    else:
        g, diff, item = max(worse, key=lambda w: w[1])
        text += f" Sparse MTL does not beat dense MTL at any λ; the closest is {item}."
    return text + " " + _trade_off(dense, sparse)


def _trade_off(dense: Group, sparse: Sequence[Group]) -> str:
    """The sparse λ with the largest MAC reduction whose Δ is not worse than dense MTL's beyond
    one standard error (no worse at all without an error estimate)."""
    d = _delta(dense)
    assert d is not None
    candidates = []
    for g in sparse:
        s = _delta(g)
        assert s is not None
        se = _standard_error(s, d) or 0.0
        reduction = g.cost.get("mac_reduction_pct")
        if reduction is not None and s.mean >= d.mean - se:
            candidates.append((reduction.mean, g, s))
    if not candidates:
        return "No sparse λ keeps the dense MTL quality, so there is no free MAC reduction in this grid."
    reduction, g, s = max(candidates, key=lambda c: (c[0], c[2].mean))
    return (
        f"Best trade-off: {format_lam(g.lam)}, {reduction:.1f}% fewer MACs than the unpruned model "
        f"with Δ = {s.mean:+.2f}% vs {d.mean:+.2f}% for dense MTL."
    )


METHOD = (
    "Groups are cells with the same grid values except train.seed; numbers are mean ± sample std (ddof=1) "
    "over their complete trials, with n shown (std blank for one trial). The Δs use the study's own dense "
    "single-task cells with the same other grid values as baselines and are computed per trial: against the "
    "baseline trial with the same seed when it is complete, else against the mean of the baseline's trials. "
    "Δm (CAGrad / Nash-MTL, mean over all metrics) is positive = worse; Δp (LibMTL, task-averaged) and Δ "
    "(Maninis et al. 2019, one primary metric per task) are positive = better. Task kinds (which metric "
    "directions apply) are read from each run's summary.json (task_kinds)."
)


def summary_paragraphs(study: Study) -> list[str]:
    texts = [status_paragraph(study)]
    texts += [t for gs in study.series().values() if (t := series_paragraph(gs, study.kinds))]
    if not any(g.multitask for g in study.groups):
        texts.append("The study has no multi-task cells, so there is no sparse-vs-dense multi-task comparison.")
    return texts + [METHOD]
