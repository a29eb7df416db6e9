"""The study report on hand-written study directories (no training): statistics, baseline
matching, Deltas against hand computations, running studies, and the files written."""

from __future__ import annotations

import csv
import json
import math
import re
import sys
from pathlib import Path
from typing import Any

import pytest

from sparsemtl.cli import main
from sparsemtl.errors import RunError
from sparsemtl.studies.aggregate import FINISHING, PENDING, STARTED, load_study
from sparsemtl.studies.plots import pareto_front
from sparsemtl.studies.report import write_report

LAYERS = ["encoder.backbone.layer1.conv1", "encoder.backbone.layer2.conv1"]
KINDS = {"segmentation": "segmentation", "depth": "depth"}


def _cell_id(values: dict[str, Any]) -> str:
    parts = []
    for key, value in values.items():
        short = "+".join(value) if isinstance(value, list) else repr(value)
        parts.append(f"{key.split('.')[-1]}={short}")
    return "__".join(parts)


def _write(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def make_cell(
    study: Path,
    values: dict[str, Any],
    metrics: dict[str, dict[str, float]] | None = None,
    state: str = "done",
    macs: int = 1000,
    ms: float = 10.0,
    zero_pct: float = 0.0,
    layer_zero: tuple[int, int] = (0, 0),
) -> dict[str, Any]:
    """A cell directory as the runner leaves it in ``state``; returns its cells.json entry."""
    cid = _cell_id(values)
    entry = {"id": cid, "values": values}
    if state == PENDING:
        return entry
    cell = study / "cells" / cid
    tasks, lam, seed = values["tasks"], float(values["sparsity.lam"]), values["train.seed"]
    curves = [
        {
            "epoch": e,
            "lam": lam,
            "train": {"loss": 2.0 / e},
            "val": {"metrics": metrics or {}},
            "sparsity": {"zero_group_pct": zero_pct * e / 2},
        }
        for e in (1, 2)
    ]
    cell.mkdir(parents=True)
    (cell / "metrics.jsonl").write_text("\n".join(json.dumps(c) for c in curves) + "\n")
    if state == STARTED:
        return entry
    layers = [{"layer": n, "groups": 10, "zero_groups": z, "weights": 90} for n, z in zip(LAYERS, layer_zero)]
    summary = {
        "tasks": tasks,
        "task_kinds": {t: KINDS[t] for t in tasks},
        "best_epoch": 2,
        "train_seconds": 3.0,
        "test": {"metrics": metrics},
        "val": {"metrics": metrics},
        "sparsity": {"zero_group_pct": zero_pct, "layers": layers},
    }
    _write(cell / "summary.json", summary)
    if state == FINISHING:
        return entry
    record = {
        "id": cid,
        "values": values,
        "tasks": tasks,
        "lam": lam,
        "seed": seed,
        "dense": lam == 0,
        "summary": "summary.json",
        "cost": {
            "params": 500,
            "macs": macs,
            "input_size": [32, 32],
            "params_dense": 500,
            "macs_dense": 1000,
            "removed_channels": 0 if lam == 0 else 4,
            "zero_group_pct": zero_pct,
        },
        "latency": {"device": "cpu", "threads": 1, "machine": {}, "ms": {"1": ms, "8": 4 * ms}},
        "seconds": {"train": 3.0, "prune": 0.1, "bench": 0.2},
    }
    _write(cell / "cell.json", record)
    return entry


def write_cells(study: Path, entries: list[dict[str, Any]]) -> Path:
    _write(study / "cells.json", {"cells": entries})
    return study


def seg(miou: float, acc: float = 80.0) -> dict[str, float]:
    return {"miou": miou, "pixel_acc": acc}


def depth(rmse: float, abs_err: float = 0.5) -> dict[str, float]:
    return {"abs_err": abs_err, "rmse": rmse}


def v(tasks: list[str], lam: float, seed: int, **other: Any) -> dict[str, Any]:
    return {"tasks": tasks, "sparsity.lam": lam, "train.seed": seed, **other}


@pytest.fixture()
def full_study(tmp_path: Path) -> Path:
    """STL dense baselines, dense and sparse MTL, two seeds (depth baseline has only seed 0),
    and one pending cell."""
    s = tmp_path / "study"
    e = [
        make_cell(s, v(["segmentation"], 0.0, 0), {"segmentation": seg(50.0)}),
        make_cell(s, v(["segmentation"], 0.0, 1), {"segmentation": seg(40.0)}),
        make_cell(s, v(["depth"], 0.0, 0), {"depth": depth(2.0)}),
        make_cell(s, v(["depth"], 0.0, 1), state=PENDING),
        make_cell(s, v(["segmentation", "depth"], 0.0, 0), {"segmentation": seg(55.0), "depth": depth(1.8)}),
        make_cell(s, v(["segmentation", "depth"], 0.0, 1), {"segmentation": seg(44.0), "depth": depth(2.2)}),
        make_cell(
            s,
            v(["segmentation", "depth"], 1e-3, 0),
            {"segmentation": seg(60.0), "depth": depth(1.6)},
            macs=600,
            ms=6.0,
            zero_pct=40.0,
            layer_zero=(5, 3),
        ),
        make_cell(
            s,
            v(["segmentation", "depth"], 1e-3, 1),
            {"segmentation": seg(42.0), "depth": depth(2.0)},
            macs=700,
            ms=7.0,
            zero_pct=30.0,
            layer_zero=(3, 3),
        ),
    ]
    return write_cells(s, e)


def _group(study: Any, tasks: list[str], lam: float) -> Any:
    return next(g for g in study.groups if g.tasks == tasks and g.lam == lam)


def test_mean_and_sample_std_over_trials(tmp_path: Path) -> None:
    s = tmp_path / "s"
    e = [
        make_cell(s, v(["segmentation"], 0.0, i), {"segmentation": seg(m, a)})
        for i, (m, a) in enumerate([(40.0, 70.0), (42.0, 71.0), (47.0, 75.0)])
    ]
    e.append(make_cell(s, v(["segmentation"], 1e-4, 0), {"segmentation": seg(30.0)}, zero_pct=12.5))
    study = load_study(write_cells(s, e))
    dense = _group(study, ["segmentation"], 0.0)
    miou = dense.metrics["segmentation"]["miou"]
    assert miou.n == 3 and miou.mean == pytest.approx(43.0, abs=1e-12)
    assert miou.std == pytest.approx(math.sqrt(((40 - 43) ** 2 + (42 - 43) ** 2 + (47 - 43) ** 2) / 2), abs=1e-12)
    acc = dense.metrics["segmentation"]["pixel_acc"]
    assert acc.mean == pytest.approx(72.0) and acc.std == pytest.approx(math.sqrt((4 + 1 + 9) / 2))
    single = _group(study, ["segmentation"], 1e-4)
    assert single.metrics["segmentation"]["miou"].n == 1 and single.metrics["segmentation"]["miou"].std is None
    assert single.cost["zero_group_pct"].mean == 12.5
    assert single.layers[LAYERS[0]].mean == 0.0

    out = write_report(s, tmp_path / "out")
    rows = {r["group"]: r for r in csv.DictReader((out.parent / "groups.csv").open())}
    assert float(rows["segmentation dense"]["segmentation/miou mean"]) == pytest.approx(43.0)
    assert float(rows["segmentation dense"]["segmentation/miou std"]) == pytest.approx(math.sqrt(13.0))
    assert rows["segmentation dense"]["segmentation/miou n"] == "3"
    assert rows["segmentation λ=0.0001"]["segmentation/miou std"] == ""  # blank for n = 1
    md = (out.parent / "report.md").read_text()
    assert "| segmentation dense | 3/3 | 43.00 ± 3.61 |" in md
    assert "| segmentation λ=0.0001 | 1/1 | 30.00 |" in md


def _gain(m: float, b: float, higher_is_better: bool) -> float:
    change = (m - b) / b * 100.0
    return change if higher_is_better else -change


def test_deltas_against_hand_computation_with_seed_matched_baselines(full_study: Path) -> None:
    study = load_study(full_study)
    mtl = _group(study, ["segmentation", "depth"], 1e-3)
    assert mtl.baselines["segmentation"] is _group(study, ["segmentation"], 0.0)
    assert mtl.baselines["depth"] is _group(study, ["depth"], 0.0)
    # seed 0: seg baseline seed 0 (50/80), depth baseline seed 0 (2.0/0.5)
    # seed 1: seg baseline seed 1 (40/80), depth seed 1 is pending -> mean of complete trials = seed 0
    trials = [
        ({"miou": 60.0, "pixel_acc": 80.0}, {"abs_err": 0.5, "rmse": 1.6}, 50.0, 2.0),
        ({"miou": 42.0, "pixel_acc": 80.0}, {"abs_err": 0.5, "rmse": 2.0}, 40.0, 2.0),
    ]
    dm, dp, dprim = [], [], []
    for s_m, d_m, seg_b, rmse_b in trials:
        gs = [_gain(s_m["miou"], seg_b, True), _gain(s_m["pixel_acc"], 80.0, True)]
        gd = [_gain(d_m["abs_err"], 0.5, False), _gain(d_m["rmse"], rmse_b, False)]
        dm.append(-(sum(gs) + sum(gd)) / 4)
        dp.append((sum(gs) / 2 + sum(gd) / 2) / 2)
        dprim.append((gs[0] + gd[1]) / 2)
    # by hand: seed 0: miou +20%, rmse +20% -> Δ = 20; seed 1: miou +5%, rmse 0% -> Δ = 2.5
    assert dprim == pytest.approx([20.0, 2.5])
    for name, expected in (("delta_m", dm), ("delta_p", dp), ("delta_primary", dprim)):
        got = mtl.deltas[name].stat
        assert got.values == pytest.approx(tuple(expected), abs=1e-12), name
        assert got.mean == pytest.approx(sum(expected) / 2, abs=1e-12)
        assert got.std == pytest.approx(abs(expected[0] - expected[1]) / math.sqrt(2), abs=1e-12)
    assert mtl.deltas["delta_primary"].per_task["depth"].values == pytest.approx((20.0, 0.0))
    # the baselines themselves get no Delta
    assert _group(study, ["segmentation"], 0.0).deltas == {}


def test_baseline_must_share_the_other_grid_values(tmp_path: Path) -> None:
    s = tmp_path / "s"
    e = []
    for enc, miou_b in (("a", 50.0), ("b", 25.0)):
        e.append(make_cell(s, v(["segmentation"], 0.0, 0, **{"model.encoder": enc}), {"segmentation": seg(miou_b)}))
        e.append(make_cell(s, v(["depth"], 0.0, 0, **{"model.encoder": enc}), {"depth": depth(2.0)}))
    mtl = {"segmentation": seg(50.0), "depth": depth(2.0)}
    e.append(make_cell(s, v(["segmentation", "depth"], 0.0, 0, **{"model.encoder": "b"}), mtl))
    study = load_study(write_cells(s, e))
    group = next(g for g in study.groups if g.multitask)
    assert group.baselines["segmentation"].values["model.encoder"] == "b"
    # miou 50 vs 25 -> +100%, rmse equal -> 0: Δ = 50 (against encoder a it would be 0)
    assert group.deltas["delta_primary"].stat.mean == pytest.approx(50.0)
    assert "model.encoder=b" in group.label


def test_missing_baseline_is_reported_as_unavailable(tmp_path: Path) -> None:
    s = tmp_path / "s"
    e = [
        make_cell(s, v(["segmentation"], 0.0, 0), {"segmentation": seg(50.0)}),
        make_cell(s, v(["depth"], 0.0, 0), state=STARTED),  # not complete: no baseline yet
        make_cell(s, v(["segmentation", "depth"], 0.0, 0), {"segmentation": seg(55.0), "depth": depth(1.8)}),
        make_cell(s, v(["segmentation", "depth"], 1e-3, 0), {"segmentation": seg(56.0), "depth": depth(1.8)}),
    ]
    out = write_report(write_cells(s, e), tmp_path / "out")
    study = load_study(s)
    group = _group(study, ["segmentation", "depth"], 0.0)
    assert group.baselines["depth"] is None and group.baselines["segmentation"] is not None
    for d in group.deltas.values():
        assert d.stat is None and "depth" in d.unavailable
    md = (out.parent / "report.md").read_text()
    assert "unavailable" in md and "no complete dense single-task cell" in md
    html = out.read_text()
    assert "no dense-vs-sparse Δ comparison yet" in html
    # miou 56 vs 55: +1.8%; rmse 1.8 vs 1.8: 0; MACs 1000 vs 1000
    assert "λ=0.001: segmentation miou 56 vs 55 (+1.8%, positive = better), depth rmse 1.8 vs 1.8 (+0.0%" in html


def test_running_study_reports_complete_cells_only(tmp_path: Path) -> None:
    s = tmp_path / "s"
    e = [
        make_cell(s, v(["segmentation"], 0.0, 0), {"segmentation": seg(50.0)}),
        make_cell(s, v(["segmentation"], 0.0, 1), {"segmentation": seg(10.0)}, state=FINISHING),
        make_cell(s, v(["segmentation"], 0.0, 2), {"segmentation": seg(10.0)}, state=STARTED),
        make_cell(s, v(["segmentation"], 0.0, 3), state=PENDING),
    ]
    study = load_study(write_cells(s, e))
    assert [c.state for c in study.cells] == ["done", FINISHING, STARTED, PENDING]
    group = study.groups[0]
    assert group.metrics["segmentation"]["miou"].values == (50.0,)
    out = write_report(s)
    assert out == s / "report" / "report.html"
    states = [r["state"] for r in csv.DictReader((out.parent / "cells.csv").open())]
    assert states == ["done", FINISHING, STARTED, PENDING]
    assert "1 of 4 cells are complete" in out.read_text()
    assert "| segmentation dense | 1/4 | 50.00 |" in (out.parent / "report.md").read_text()


def test_html_is_self_contained_and_embeds_every_plot_and_table(full_study: Path, tmp_path: Path) -> None:
    out = write_report(full_study, tmp_path / "out")
    html = out.read_text()
    pngs = sorted(out.parent.glob("*.png"))
    report = json.loads((out.parent / "report.json").read_text())
    assert len(pngs) == len(report["figures"]) >= 6  # metrics x2, sparsity, layers, quality, curves
    assert html.count("data:image/png;base64,") == len(pngs)
    assert re.findall(r'src="([^"]*)"', html) and all(
        src.startswith("data:image/png;base64,") for src in re.findall(r'src="([^"]*)"', html)
    )
    assert "href=" not in html and "<link" not in html and "<script" not in html
    for title in ("Test metrics: segmentation", "Test metrics: depth", "Multi-task Δ", "Cost", "Cells"):
        assert f"<h3>{title}" in html
    assert {"report.md", "groups.csv", "cells.csv", "report.json", "report.html"} <= {
        p.name for p in out.parent.iterdir()
    }
    # the summary paragraph from the numbers: Δ 11.25 vs dense MTL, single-seed depth baseline aside
    mtl_dense = [g for g in report["groups"] if g["tasks"] == ["segmentation", "depth"] and g["dense"]][0]
    dense_delta = mtl_dense["deltas"]["delta_primary"]["stat"]["mean"]
    assert f"dense MTL Δ = {dense_delta:+.2f}%" in html
    assert "Sparse MTL beats dense MTL at λ=0.001" in html
    assert "Best trade-off: λ=0.001, 35.0% fewer MACs" in html
    # a second report replaces the figures rather than adding to them
    write_report(full_study, tmp_path / "out")
    assert sorted(out.parent.glob("*.png")) == pngs


def test_without_matplotlib_tables_only_and_one_notice(
    full_study: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    out = write_report(full_study, tmp_path / "out")
    assert not list(out.parent.glob("*.png"))
    html = out.read_text()
    assert "data:image/png" not in html and "matplotlib is not installed" in html
    assert "<h3>Cost" in html
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "matplotlib" in err[0]


def test_pareto_front() -> None:
    class P:
        def __init__(self, x: float, y: float) -> None:
            self.x, self.y = x, y

    pts = [P(1, 0), P(2, 5), P(3, 4), P(4, 6), P(2, 5)]
    assert [(p.x, p.y) for p in pareto_front(pts)] == [(1, 0), (2, 5), (2, 5), (4, 6)]


def test_not_a_study_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(RunError, match="no cells.json"):
        load_study(tmp_path)
    broken = tmp_path / "broken"
    write_cells(broken, [make_cell(broken, v(["segmentation"], 0.0, 0), {"segmentation": seg(1.0)})])
    summary = next(broken.glob("cells/*/summary.json"))
    summary.write_text("{truncated")
    with pytest.raises(RunError, match="summary.json"):
        load_study(broken)
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sparsemtl: error:") and "cells.json" in err[0]
