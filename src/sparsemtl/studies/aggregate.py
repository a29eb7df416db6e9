"""Read a study directory and reduce its cells to per-group statistics and multi-task Deltas.

A *group* is every cell with the same grid values except ``train.seed``: its cells are the
trials. Only complete cells (``cell.json`` present) enter the numbers; the others are listed
with their state, so a study can be reported while it is still running.

The Deltas of a group are measured against the study's own dense single-task cells: for each
task, the dense group with only that task and the same other grid values (``tasks``,
``sparsity.lam`` and ``train.seed`` aside). They are computed per trial, against the baseline
trial with the same seed when it is complete and else against the mean of the baseline's
trials, and then reduced to mean and std like every other number.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import DeltaError, RunError
from ..evaluation.delta import DELTAS, DeltaResult
from ..runs.run_dir import read_metrics_file

LAM_KEY = "sparsity.lam"
SEED_KEY = "train.seed"
TASKS_KEY = "tasks"
BASELINE_FREE_KEYS = (TASKS_KEY, LAM_KEY, SEED_KEY)
"""Grid keys a dense single-task baseline may differ in from the group it serves."""

DONE, FINISHING, STARTED, PENDING = "done", "post-processing", "started", "pending"


@dataclass(frozen=True)
class Stat:
    """Trial values of one quantity; ``std`` is the sample std (ddof=1), None for one trial."""

    values: tuple[float, ...]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return math.fsum(self.values) / len(self.values)

    @property
    def std(self) -> float | None:
        if len(self.values) < 2:
            return None
        mean = self.mean
        return math.sqrt(math.fsum((v - mean) ** 2 for v in self.values) / (len(self.values) - 1))

    def to_dict(self) -> dict[str, Any]:
        return {"mean": self.mean, "std": self.std, "n": self.n, "values": list(self.values)}


def stat(values: Iterable[float | None]) -> Stat | None:
    """The :class:`Stat` of the values that are present, None when there are none."""
    present = tuple(float(v) for v in values if v is not None)
    return Stat(present) if present else None


@dataclass
class Cell:
    """One grid cell and what its directory holds so far."""

    id: str
    values: dict[str, Any]
    path: Path
    state: str
    tasks: list[str]
    lam: float
    seed: int | None
    dense: bool
    record: dict[str, Any] | None = None  # cell.json
    summary: dict[str, Any] | None = None  # summary.json, read for complete cells only

    @property
    def done(self) -> bool:
        return self.state == DONE

    def test_metrics(self) -> dict[str, dict[str, float]]:
        assert self.summary is not None
        return self.summary.get("test", {}).get("metrics", {})


@dataclass
class DeltaStat:
    """One Delta variant of a group: trial statistics, or why it is unavailable."""

    variant: str
    stat: Stat | None = None
    per_task: dict[str, Stat] = field(default_factory=dict)
    unavailable: str | None = None

    @property
    def symbol(self) -> str:
        return DeltaResult(0.0, self.variant).symbol

    @property
    def sign_convention(self) -> str:
        return DeltaResult(0.0, self.variant).sign_convention

    def to_dict(self) -> dict[str, Any]:
        return {
            "symbol": self.symbol,
            "sign": self.sign_convention,
            "stat": self.stat.to_dict() if self.stat else None,
            "per_task": {t: s.to_dict() for t, s in self.per_task.items()},
            "unavailable": self.unavailable,
        }


@dataclass
class Group:
    """The trials of one grid point (all grid values but the seed)."""

    key: tuple[tuple[str, str], ...]
    values: dict[str, Any]
    tasks: list[str]
    lam: float
    dense: bool
    cells: list[Cell] = field(default_factory=list)
    metrics: dict[str, dict[str, Stat]] = field(default_factory=dict)
    cost: dict[str, Stat] = field(default_factory=dict)
    latency: dict[str, Stat] = field(default_factory=dict)
    layers: dict[str, Stat] = field(default_factory=dict)
    baselines: dict[str, Group | None] = field(default_factory=dict)  # task -> dense single-task group
    deltas: dict[str, DeltaStat] = field(default_factory=dict)
    label: str = ""
    context: str = ""

    @property
    def done(self) -> list[Cell]:
        return [c for c in self.cells if c.done]

    @property
    def is_baseline(self) -> bool:
        return self.dense and len(self.tasks) == 1

    @property
    def multitask(self) -> bool:
        return len(self.tasks) > 1

    def series_key(self) -> tuple[tuple[str, str], ...]:
        """The group's line in a plot over lambda: its key without the lambda."""
        return tuple(kv for kv in self.key if kv[0] != LAM_KEY)

    def context_key(self) -> tuple[tuple[str, str], ...]:
        """The other grid values (tasks and lambda aside) a baseline must share."""
        return tuple(kv for kv in self.key if kv[0] not in BASELINE_FREE_KEYS)


@dataclass
class Study:
    """Everything the report shows, computed once."""

    path: Path
    cells: list[Cell]
    groups: list[Group]
    kinds: dict[str, str | None]
    varying: list[str]

    @property
    def done(self) -> list[Cell]:
        return [c for c in self.cells if c.done]

    def series(self) -> dict[tuple[tuple[str, str], ...], list[Group]]:
        """Groups by their plot line (all values but lambda), groups sorted by lambda."""
        out: dict[tuple[tuple[str, str], ...], list[Group]] = {}
        for group in self.groups:
            out.setdefault(group.series_key(), []).append(group)
        return {k: sorted(v, key=lambda g: g.lam) for k, v in out.items()}


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise RunError(f"study file {str(path)!r} cannot be read as JSON: {exc}") from None


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def _nested(config: Mapping[str, Any], dotted: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _base_config(study_dir: Path) -> dict[str, Any]:
    """The inlined base run config of ``study.yaml`` (empty when absent): the defaults of keys
    that are not grid axes, for cells that have not written anything yet."""
    path = study_dir / "study.yaml"
    if not path.is_file():
        return {}
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise RunError(f"study file {str(path)!r} cannot be read as YAML: {exc}") from None
    base = data.get("base") if isinstance(data, Mapping) else None
    return base if isinstance(base, dict) else {}


def _value(values: Mapping[str, Any], base: Mapping[str, Any], dotted: str) -> Any:
    return values[dotted] if dotted in values else _nested(base, dotted)


def _state(path: Path) -> str:
    if (path / "cell.json").is_file():
        return DONE
    if (path / "summary.json").is_file():
        return FINISHING
    return STARTED if path.is_dir() else PENDING


def _load_cell(study_dir: Path, entry: Mapping[str, Any], base: Mapping[str, Any]) -> Cell:
    cells_json = study_dir / "cells.json"
    if not isinstance(entry, Mapping) or not isinstance(entry.get("id"), str) or "values" not in entry:
        raise RunError(f"study file {str(cells_json)!r}: every cell needs an 'id' and 'values', got {entry!r}")
    path = study_dir / "cells" / entry["id"]
    values = dict(entry["values"])
    state = _state(path)
    if state == DONE:
        record = _read_json(path / "cell.json")
        try:
            summary = _read_json(path / record.get("summary", "summary.json"))
            tasks, lam, dense = list(record["tasks"]), float(record["lam"]), bool(record["dense"])
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise RunError(
                f"study file {str(path / 'cell.json')!r}: expected an object with 'tasks', 'lam', 'dense', "
                f"'summary' (the cell.json schema), got an error at {exc}"
            ) from None
        return Cell(entry["id"], values, path, state, tasks, lam, record.get("seed"), dense, record, summary)
    tasks = _value(values, base, TASKS_KEY) or []
    lam = float(_value(values, base, LAM_KEY) or 0.0)
    penalty = _value(values, base, "sparsity.penalty")
    seed = _value(values, base, SEED_KEY)
    return Cell(entry["id"], values, path, state, list(tasks), lam, seed, lam == 0 or penalty == "none")


def _kinds(cells: Sequence[Cell]) -> dict[str, str | None]:
    """Task name -> kind, as each run's ``summary.json`` records it (``task_kinds``)."""
    kinds: dict[str, str | None] = {}
    for cell in cells:
        for task in cell.tasks:
            if kinds.get(task) is None:
                kinds[task] = (cell.summary or {}).get("task_kinds", {}).get(task)
    return kinds


def _fill_stats(group: Group) -> None:
    done = group.done
    if not done:
        return
    for task in group.tasks:
        names = list(done[0].test_metrics().get(task, {}))
        group.metrics[task] = {
            m: s for m in names if (s := stat(c.test_metrics().get(task, {}).get(m) for c in done)) is not None
        }
    costs = [c.record.get("cost") or {} for c in done if c.record is not None]
    for name in ("zero_group_pct", "removed_channels", "params", "macs", "params_dense", "macs_dense"):
        if (s := stat(cost.get(name) for cost in costs)) is not None:
            group.cost[name] = s
    reduction = stat(
        100.0 * (1.0 - cost["macs"] / cost["macs_dense"]) if cost.get("macs") and cost.get("macs_dense") else None
        for cost in costs
    )
    if reduction is not None:
        group.cost["mac_reduction_pct"] = reduction
    batches: dict[str, list[float]] = {}
    for cell in done:
        latency = (cell.record or {}).get("latency") or {}
        for batch, ms in (latency.get("ms") or {}).items():
            batches.setdefault(str(batch), []).append(float(ms))
    group.latency = {b: Stat(tuple(v)) for b, v in sorted(batches.items(), key=lambda kv: int(kv[0]))}
    per_layer: dict[str, list[float]] = {}
    for cell in done:
        for layer in (cell.summary or {}).get("sparsity", {}).get("layers") or []:
            name = layer.get("layer") or layer.get("name")
            if "zero_group_pct" in layer:
                pct = float(layer["zero_group_pct"])
            elif layer.get("groups"):
                pct = 100.0 * layer["zero_groups"] / layer["groups"]
            else:
                continue
            per_layer.setdefault(name, []).append(pct)
    group.layers = {name: Stat(tuple(v)) for name, v in per_layer.items()}


def read_curves(cell: Cell) -> list[dict[str, Any]]:
    """The epoch records of ``metrics.jsonl``; a torn last line of a running cell is skipped."""
    return read_metrics_file(cell.path / "metrics.jsonl")


def _mean_metrics(cells: Sequence[Cell], task: str) -> dict[str, float]:
    names = cells[0].test_metrics()[task]
    return {m: math.fsum(c.test_metrics()[task][m] for c in cells) / len(cells) for m in names}


def _fill_deltas(group: Group, baselines: Mapping[str, Group | None], kinds: Mapping[str, str | None]) -> None:
    """Per-trial Deltas (seed-matched baseline trial when complete, else the baseline mean)."""
    missing = [t for t, b in baselines.items() if b is None]
    unknown = [t for t in group.tasks if kinds.get(t) is None]
    reason = None
    if missing:
        reason = f"no complete dense single-task cell with the same other grid values for {', '.join(missing)}"
    elif unknown:
        reason = f"task kind unknown for {', '.join(unknown)} (summary.json has no task_kinds: an older run)"
    if reason is not None or not group.done:
        for name in DELTAS:
            group.deltas[name] = DeltaStat(name, unavailable=reason or "no complete trial")
        return
    results: dict[str, list[DeltaResult]] = {name: [] for name in DELTAS}
    errors: dict[str, str] = {}
    for cell in group.done:
        metrics = {t: cell.test_metrics()[t] for t in group.tasks}
        reference = {}
        for task, base in baselines.items():
            assert base is not None
            same_seed = [c for c in base.done if c.seed == cell.seed]
            reference[task] = _mean_metrics(same_seed or base.done, task)
        for name, fn in DELTAS.items():
            if name in errors:
                continue
            try:
                results[name].append(fn(metrics, reference, {t: kinds[t] for t in group.tasks}))
            except DeltaError as exc:
                errors[name] = str(exc)
    for name in DELTAS:
        if name in errors:
            group.deltas[name] = DeltaStat(name, unavailable=errors[name])
            continue
        per_task = {t: Stat(tuple(r.per_task[t] for r in results[name])) for t in group.tasks}
        group.deltas[name] = DeltaStat(name, Stat(tuple(r.value for r in results[name])), per_task)


def _short(value: Any) -> str:
    if isinstance(value, list):
        return "+".join(str(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def format_lam(lam: float) -> str:
    return "dense" if lam == 0 else f"λ={lam:g}"


def _label(group: Group, varying: Sequence[str]) -> tuple[str, str]:
    """(full label, context label) from the grid keys that vary across the study."""
    keys = [k for k in varying if k not in BASELINE_FREE_KEYS and k in group.values]
    context = ", ".join(f"{k}={_short(group.values[k])}" for k in keys)
    head = f"{'+'.join(group.tasks)} {'dense' if group.dense else format_lam(group.lam)}"
    return (f"{head} ({context})" if context else head), context


def _find_baseline(group: Group, task: str, groups: Sequence[Group]) -> Group | None:
    for other in groups:
        if other.is_baseline and other.tasks == [task] and other.context_key() == group.context_key() and other.done:
            return other
    return None


def load_study(study_dir: str | Path) -> Study:
    """Read ``cells.json`` and every cell directory; group, reduce and compute the Deltas."""
    study_dir = Path(study_dir)
    cells_json = study_dir / "cells.json"
    if not cells_json.is_file():
        raise RunError(f"study directory {str(study_dir)!r}: no cells.json (is it a study directory?)")
    listing = _read_json(cells_json)
    entries = listing.get("cells") if isinstance(listing, Mapping) else None
    if not isinstance(entries, list):
        raise RunError(f"study file {str(cells_json)!r}: expected {{'cells': [...]}}")
    base = _base_config(study_dir)
    cells = [_load_cell(study_dir, entry, base) for entry in entries]
    groups: dict[tuple[tuple[str, str], ...], Group] = {}
    for cell in cells:
        key = tuple(sorted((k, _canonical(v)) for k, v in cell.values.items() if k != SEED_KEY))
        if key not in groups:
            values = {k: v for k, v in cell.values.items() if k != SEED_KEY}
            groups[key] = Group(key, values, cell.tasks, cell.lam, cell.dense)
        group = groups[key]
        group.cells.append(cell)
        if cell.done:  # a complete cell's own record is authoritative
            group.tasks, group.lam, group.dense = cell.tasks, cell.lam, cell.dense
    kinds = _kinds([c for c in cells if c.done])
    varying = sorted(
        {k for c in cells for k in c.values if k != SEED_KEY and len({_canonical(d.values.get(k)) for d in cells}) > 1}
    )
    ordered = list(groups.values())
    for group in ordered:
        _fill_stats(group)
        group.label, group.context = _label(group, varying)
    for group in ordered:
        if group.is_baseline:
            continue
        group.baselines = {t: _find_baseline(group, t, ordered) for t in group.tasks}
        _fill_deltas(group, group.baselines, kinds)
    return Study(study_dir, cells, ordered, kinds, varying)
