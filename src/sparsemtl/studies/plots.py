"""The study's figures (PNG, matplotlib's Agg backend; matplotlib is the optional ``plot`` extra).

Lambda axes are logarithmic; the dense cells (lambda 0) sit one decade left of the smallest
lambda, as a separate marker behind a dotted separator, labelled ``dense``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import DeltaError
from ..evaluation.delta import primary_metric
from .aggregate import Group, Study, format_lam, read_curves

PNG_PATTERNS = ("metrics_*.png", "sparsity_vs_lambda.png", "layers_*.png", "quality_cost_*.png", "curves_*.png")
MISSING_MATPLOTLIB = "plots skipped: matplotlib is not installed (pip install 'sparsemtl[plot]'); tables only"


@dataclass(frozen=True)
class Plot:
    path: Path
    title: str
    caption: str


def pyplot() -> Any | None:
    """``matplotlib.pyplot`` on the Agg backend, or None when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def _series_label(groups: Sequence[Group]) -> str:
    g = groups[0]
    head = f"{'MTL' if g.multitask else 'STL'} {'+'.join(g.tasks)}"
    return f"{head} ({g.context})" if g.context else head


def _primary(study: Study, task: str, names: Sequence[str]) -> str:
    kind = study.kinds.get(task)
    try:
        return primary_metric(kind, names) if kind else names[0]
    except DeltaError:
        return names[0]


class _LamAxis:
    """Maps lambda to x: positive lambdas as they are (log axis), 0 one decade to the left."""

    def __init__(self, lams: Sequence[float]) -> None:
        self.positive = sorted({lam for lam in lams if lam > 0})
        self.has_dense = any(lam == 0 for lam in lams)
        self.dense_x = self.positive[0] / 10.0 if self.positive else 1.0

    def x(self, lam: float) -> float:
        return lam if lam > 0 else self.dense_x

    def style(self, ax: Any) -> None:
        import matplotlib.ticker as ticker

        ticks, labels = [], []
        if self.positive:
            ax.set_xscale("log")
            ticks, labels = list(self.positive), [f"{lam:g}" for lam in self.positive]
        if self.has_dense:
            ticks, labels = [self.dense_x] + ticks, ["dense"] + labels
            if self.positive:
                ax.axvline(math.sqrt(self.dense_x * self.positive[0]), color="#999999", linestyle=":", linewidth=1)
        ax.set_xticks(ticks)
        ax.set_xticklabels(labels, rotation=45 if len(ticks) > 5 else 0, fontsize=8)
        ax.xaxis.set_minor_locator(ticker.NullLocator())
        ax.set_xlabel("λ")


def _draw_over_lam(ax: Any, axis: _LamAxis, groups: Sequence[Group], pick: Any, label: str, color: Any) -> bool:
    """One series: sparse lambdas as a line with a ±std band, the dense point as a marker."""
    points = [(g.lam, s) for g in groups if (s := pick(g)) is not None]
    if not points:
        return False
    style = "--" if groups[0].multitask else "-"
    sparse = [(lam, s) for lam, s in points if lam > 0]
    dense = [s for lam, s in points if lam == 0]
    if sparse:
        xs = [lam for lam, _ in sparse]
        mean = [s.mean for _, s in sparse]
        std = [s.std or 0.0 for _, s in sparse]
        ax.plot(xs, mean, style, marker="o", color=color, label=label)
        ax.fill_between(
            xs, [m - d for m, d in zip(mean, std)], [m + d for m, d in zip(mean, std)], color=color, alpha=0.2
        )
    for s in dense:
        ax.errorbar(
            [axis.dense_x],
            [s.mean],
            yerr=[s.std or 0.0],
            fmt="s",
            color=color,
            capsize=3,
            label=None if sparse else label,
        )
    return True


def _colors(plt: Any, n: int) -> list[Any]:
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(n)]


def _save(plt: Any, fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_metrics(plt: Any, study: Study, task: str, path: Path) -> Plot | None:
    """Every test metric of ``task`` against lambda, one line per task set that trains it."""
    series = [gs for gs in study.series().values() if task in gs[0].tasks]
    names = list(dict.fromkeys(m for gs in series for g in gs for m in g.metrics.get(task, {})))
    if not names:
        return None
    axis = _LamAxis([g.lam for gs in series for g in gs if g.metrics.get(task)])
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    colors = _colors(plt, len(series))
    for ax, name in zip(axes.flat, names):
        for gs, color in zip(series, colors):
            _draw_over_lam(ax, axis, gs, lambda g, n=name: g.metrics.get(task, {}).get(n), _series_label(gs), color)
        axis.style(ax)
        ax.set_title(f"{task} {name}", fontsize=10)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    caption = f"Test metrics of {task} against λ (mean ± std over trials; STL solid, MTL dashed; dense at the left)."
    return Plot(_save(plt, fig, path), f"{task}: test metrics vs λ", caption)


def plot_sparsity(plt: Any, study: Study, path: Path) -> Plot | None:
    """Zero groups % and MAC reduction % against lambda."""
    series = list(study.series().values())
    keys = [("zero_group_pct", "zero groups %"), ("mac_reduction_pct", "MAC reduction %")]
    if not any(g.cost.get(k) for gs in series for g in gs for k, _ in keys):
        return None
    axis = _LamAxis([g.lam for gs in series for g in gs if g.cost])
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), squeeze=False)
    for ax, (key, title) in zip(axes.flat, keys):
        for gs, color in zip(series, _colors(plt, len(series))):
            _draw_over_lam(ax, axis, gs, lambda g, k=key: g.cost.get(k), _series_label(gs), color)
        axis.style(ax)
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=7)
    caption = "Zero groups and MAC reduction of the deployed (pruned) model against the unpruned one, vs λ."
    return Plot(_save(plt, fig, path), "Sparsity and MAC reduction vs λ", caption)


def plot_layers(plt: Any, groups: Sequence[Group], path: Path) -> Plot | None:
    """Heatmap of % zero groups per layer (rows, network order) and lambda (columns)."""
    columns = [g for g in groups if g.layers]
    if not columns or all(g.dense for g in columns):
        return None
    names = list(dict.fromkeys(n for g in columns for n in g.layers))
    prefix = _common_prefix(names)
    data = [[g.layers[n].mean if n in g.layers else math.nan for g in columns] for n in names]
    fig, ax = plt.subplots(figsize=(2.0 + 0.9 * len(columns), 1.6 + 0.22 * len(names)))
    image = ax.imshow(data, aspect="auto", cmap="viridis", vmin=0, vmax=100, interpolation="nearest")
    ax.set_xticks(range(len(columns)))
    ax.set_xticklabels([format_lam(g.lam).replace("λ=", "") for g in columns], rotation=45, fontsize=8)
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels([n[len(prefix) :] for n in names], fontsize=6)
    ax.set_xlabel("λ")
    fig.colorbar(image, ax=ax, label="zero groups %")
    label = _series_label(groups)
    ax.set_title(label, fontsize=9)
    caption = f"Per-layer zero groups (% of the layer's groups, mean over trials) of {label}" + (
        f"; layer names without the prefix {prefix!r}." if prefix else "."
    )
    return Plot(_save(plt, fig, path), f"Per-layer sparsity: {label}", caption)


def _common_prefix(names: Sequence[str]) -> str:
    if len(names) < 2:
        return ""
    prefix = names[0]
    for n in names[1:]:
        while not n.startswith(prefix):
            prefix = prefix[:-1]
    return prefix[: prefix.rfind(".") + 1] if "." in prefix else ""


@dataclass(frozen=True)
class _Point:
    x: float
    y: float
    yerr: float
    label: str


def pareto_front(points: Sequence[Any]) -> list[Any]:
    """Points that no other point beats on cost (``x``, lower) and quality (``y``, higher)."""
    return sorted(
        (p for p in points if not any(q.x <= p.x and q.y >= p.y and (q.x < p.x or q.y > p.y) for q in points)),
        key=lambda p: p.x,
    )


def _cost_points(groups: Sequence[Group], cost: Any) -> list[_Point]:
    points = []
    for g in groups:
        delta = g.deltas.get("delta_primary")
        x = cost(g)
        name = format_lam(g.lam).replace("λ=", "λ ")
        if g.is_baseline and g.done and x is not None:  # the baseline itself: Δ = 0 by definition
            points.append(_Point(x.mean, 0.0, 0.0, name))
        elif delta is not None and delta.stat is not None and x is not None:
            points.append(_Point(x.mean, delta.stat.mean, delta.stat.std or 0.0, name))
    ensemble = _ensemble(groups[0], cost)
    return points + ([_Point(ensemble, 0.0, 0.0, f"{len(groups[0].tasks)} dense STL")] if ensemble else [])


def _ensemble(group: Group, cost: Any) -> float | None:
    """Summed mean cost of the dense single-task baselines that a multi-task model replaces."""
    if not group.multitask or not group.baselines or any(b is None for b in group.baselines.values()):
        return None
    costs = [cost(b) for b in group.baselines.values()]
    return None if any(c is None for c in costs) else sum(c.mean for c in costs)


def plot_quality_cost(plt: Any, groups: Sequence[Group], path: Path) -> Plot | None:
    """Δ (one primary metric per task, positive = better) against latency and MACs, Pareto front marked."""
    if not any((d := g.deltas.get("delta_primary")) is not None and d.stat is not None for g in groups):
        return None
    batch = min((b for g in groups for b in g.latency), key=int, default=None)
    panels: list[tuple[str, Any]] = []
    if batch is not None:
        panels.append((f"latency ms (batch {batch})", lambda g: g.latency.get(batch)))
    panels.append(("MACs", lambda g: g.cost.get("macs")))
    panels = [(t, f) for t, f in panels if len(_cost_points(groups, f)) > 0]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.0), squeeze=False)
    for ax, (title, cost) in zip(axes.flat, panels):
        points = _cost_points(groups, cost)
        front = pareto_front(points)
        ax.errorbar([p.x for p in points], [p.y for p in points], yerr=[p.yerr for p in points], fmt="o", capsize=3)
        ax.plot([p.x for p in front], [p.y for p in front], "-", color="#c0392b", label="Pareto front")
        ax.scatter([p.x for p in front], [p.y for p in front], s=120, facecolors="none", edgecolors="#c0392b")
        for p in points:
            ax.annotate(p.label, (p.x, p.y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        ax.axhline(0.0, color="#999999", linewidth=0.8)
        ax.set_xlabel(title)
        ax.set_ylabel("Δ % (Maninis et al.; positive = better)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    label = _series_label(groups)
    fig.suptitle(label, fontsize=10)
    caption = (
        f"Quality vs cost of {label}: Δ against the dense single-task baselines (mean ± std over trials) vs "
        "the deployed model's latency and MACs; circled points are the Pareto front (lower cost, higher Δ)."
    )
    if groups[0].multitask:
        caption += " 'dense STL' is the set of dense single-task models together (summed cost, Δ = 0 by definition)."
    return Plot(_save(plt, fig, path), f"Quality vs cost: {label}", caption)


def plot_curves(plt: Any, study: Study, groups: Sequence[Group], path: Path) -> Plot | None:
    """Training curves of every started cell: train loss, each task's primary val metric, zero groups %."""
    runs = [(g, c, recs) for g in groups for c in g.cells if (recs := read_curves(c))]
    if not runs:
        return None
    tasks = groups[0].tasks
    panels: list[tuple[str, Any]] = [("train loss", lambda r: (r.get("train") or {}).get("loss"))]
    for task in tasks:
        names = next((list(rec["val"]["metrics"][task]) for _, _, rs in runs for rec in rs[:1] if _val(rec, task)), [])
        if names:
            name = _primary(study, task, names)
            panels.append((f"val {task} {name}", lambda r, t=task, n=name: (_val(r, t) or {}).get(n)))
    panels.append(("zero groups %", lambda r: (r.get("sparsity") or {}).get("zero_group_pct")))
    fig, axes = plt.subplots(1, len(panels), figsize=(3.8 * len(panels), 3.4), squeeze=False)
    lams = sorted({g.lam for g, _, _ in runs})
    colors = dict(zip(lams, _colors(plt, len(lams))))
    for ax, (title, pick) in zip(axes.flat, panels):
        seen = set()
        for g, cell, records in runs:
            xs = [r["epoch"] for r in records if pick(r) is not None]
            ys = [pick(r) for r in records if pick(r) is not None]
            label = None if g.lam in seen else format_lam(g.lam)
            seen.add(g.lam)
            ax.plot(xs, ys, "-" if cell.done else ":", color=colors[g.lam], label=label, linewidth=1.2)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=7)
    label = _series_label(groups)
    caption = f"Training curves of {label}, one line per trial (dotted: cell not complete yet)."
    return Plot(_save(plt, fig, path), f"Training curves: {label}", caption)


def _val(record: dict[str, Any], task: str) -> dict[str, Any] | None:
    return ((record.get("val") or {}).get("metrics") or {}).get(task)


def write_plots(study: Study, out_dir: Path) -> tuple[list[Plot], str | None]:
    """Every figure as ``out_dir/*.png``; with no matplotlib, no figures and a one-line notice."""
    plt = pyplot()
    if plt is None:
        return [], MISSING_MATPLOTLIB
    out_dir.mkdir(parents=True, exist_ok=True)
    for pattern in PNG_PATTERNS:  # figures of an earlier report of this study
        for old in out_dir.glob(pattern):
            old.unlink()
    plots: list[Plot | None] = []
    tasks = list(dict.fromkeys(t for g in study.groups for t in g.tasks))
    plots += [plot_metrics(plt, study, t, out_dir / f"metrics_{i:02d}.png") for i, t in enumerate(tasks)]
    plots.append(plot_sparsity(plt, study, out_dir / "sparsity_vs_lambda.png"))
    for i, groups in enumerate(study.series().values()):
        plots.append(plot_layers(plt, groups, out_dir / f"layers_{i:02d}.png"))
        plots.append(plot_quality_cost(plt, groups, out_dir / f"quality_cost_{i:02d}.png"))
        plots.append(plot_curves(plt, study, groups, out_dir / f"curves_{i:02d}.png"))
    return [p for p in plots if p is not None], None
