"""Per-layer sparsity bar chart (PNG); matplotlib is an optional extra (``pip install sparsemtl[plot]``)."""

from __future__ import annotations

from pathlib import Path

from ..sparsity.report import SparsityReport


def plot_layer_sparsity(report: SparsityReport, path: str | Path, title: str = "") -> Path:
    """Bars of % zero groups per layer (in network order), with the overall figure as a line."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:  # optional dependency
        raise RuntimeError("the sparsity plot needs matplotlib: pip install 'sparsemtl[plot]'") from exc
    names = [layer.layer for layer in report.layers]
    values = [layer.zero_group_pct for layer in report.layers]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.18 * len(names) + 2), 4.0))
    ax.bar(range(len(names)), values, color="#3b6ea8")
    ax.axhline(report.zero_group_pct, color="#c0392b", linestyle="--", label=f"overall {report.zero_group_pct:.1f}%")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels([n.replace("encoder.backbone.", "") for n in names], rotation=90, fontsize=6)
    ax.set_ylim(0, 100)
    ax.set_ylabel("zero groups (%)")
    ax.set_title(title or f"zero {report.grouping} groups per layer")
    ax.legend(loc="upper left")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
