"""Multi-task performance Delta against single-task baselines, in its three published variants.

The variants differ in what they average and in their SIGN, so every result carries its
variant name and a :meth:`DeltaResult.describe` string to print next to the number:

* :func:`delta_m` — the convention of Liu et al. 2021 (CAGrad) and Navon et al. 2022 (Nash-MTL),
  which flip Maninis et al.'s sign: mean over ALL K metrics of
  ``(-1)^{l_k} (M_k - B_k) / B_k * 100`` with ``l_k = 1`` if higher is better.
  POSITIVE = WORSE (their tables mark it "lower is better").
* :func:`delta_p` — LibMTL (Lin & Zhang 2023): the relative improvement
  ``(-1)^{1 - l_k} (M_k - B_k) / B_k * 100`` averaged within each task first, then over tasks.
  POSITIVE = BETTER.
* :func:`delta_primary` — Maninis et al. 2019 (ASTMT), who introduced the measure, as kept by
  Vandenhende et al.'s survey: one metric per task, ``(-1)^{l_i} (M_i - B_i) / B_i * 100`` with
  ``l_i = 1`` if LOWER is better, averaged over tasks; the metric is the task kind's primary one
  (``TaskKind.primary_metrics``, first available: segmentation ``miou``, depth ``rmse`` else
  ``abs_err``, normals ``mean_angle``, attributes ``f1`` else ``accuracy``). POSITIVE = BETTER.

Inputs are ``{task: {metric: value}}`` for the model and for the single-task baselines (B_k,
trained with the same recipe), and ``kinds = {task: kind}``; the direction of every metric
comes from ``get_task(kind).metric_directions``. Metrics the model reports but the directions
do not know raise; every model metric that is used must have a finite, non-zero baseline.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ..errors import DeltaError
from ..tasks import get_task

Metrics = Mapping[str, Mapping[str, float]]
Kinds = Mapping[str, "str | Mapping[str, bool]"]
"""``{task: kind}``; a task may instead map to explicit ``{metric: higher_is_better}`` directions."""

_VARIANTS = {
    "delta_m": ("\u0394m", "CAGrad / Nash-MTL convention, mean over all metrics", "positive = worse"),
    "delta_p": ("\u0394p", "LibMTL, task-averaged", "positive = better"),
    "delta_primary": ("\u0394", "Maninis et al. 2019, one primary metric per task", "positive = better"),
}


@dataclass(frozen=True)
class DeltaResult:
    """A multi-task Delta in percent, with the variant that produced it and its sign convention.

    ``per_task`` holds each task's contribution in the variant's own sign convention (for
    ``delta_m`` the mean over the task's metrics, so ``value`` is generally NOT their mean);
    ``metrics`` lists the ``(task, metric)`` pairs that entered the average.
    """

    value: float
    variant: str
    per_task: dict[str, float] = field(default_factory=dict)
    metrics: tuple[tuple[str, str], ...] = ()

    @property
    def symbol(self) -> str:
        return _VARIANTS[self.variant][0]

    @property
    def positive_is_better(self) -> bool:
        return _VARIANTS[self.variant][2] == "positive = better"

    @property
    def sign_convention(self) -> str:
        return _VARIANTS[self.variant][2]

    def describe(self) -> str:
        """E.g. ``"Δm = +2.31% (Maninis et al., mean over all metrics; positive = worse)"``."""
        symbol, source, sign = _VARIANTS[self.variant]
        return f"{symbol} = {self.value:+.2f}% ({source}; {sign})"

    def __str__(self) -> str:
        return self.describe()


def _directions(kinds: Kinds, tasks: Sequence[str]) -> dict[str, Mapping[str, bool]]:
    """``{task: {metric: higher_is_better}}``: a kind string is looked up in the task registry,
    an explicit ``{metric: higher_is_better}`` mapping is used as given."""
    missing = [t for t in tasks if t not in kinds]
    if missing:
        raise DeltaError(f"no task kind given for task(s) {missing}; pass kinds={{task: kind}}")
    return {t: kinds[t] if isinstance(kinds[t], Mapping) else get_task(kinds[t]).metric_directions for t in tasks}


def _kind(kinds: Kinds, task: str) -> str:
    kind = kinds[task]
    if isinstance(kind, Mapping):
        raise DeltaError(f"delta_primary needs the task kind of {task!r}, not a directions mapping")
    return kind


def _relative_gain(task: str, metric: str, value: float, baseline: float, higher_is_better: bool) -> float:
    """``+100 * (M - B) / B`` if higher is better, else ``-100 * (M - B) / B`` (positive = better)."""
    if not math.isfinite(value):
        raise DeltaError(f"{task}/{metric}: model value {value} is not finite")
    if not math.isfinite(baseline):
        raise DeltaError(f"{task}/{metric}: baseline {baseline} is not finite")
    if baseline == 0:
        raise DeltaError(f"{task}/{metric}: baseline is zero, the relative change is undefined")
    change = (value - baseline) / baseline * 100.0
    return change if higher_is_better else -change


def _gains(
    metrics: Metrics,
    baselines: Metrics,
    kinds: Kinds,
    select: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, dict[str, float]]:
    """``{task: {metric: relative gain in %, positive = better}}`` over the selected metrics."""
    if not metrics:
        raise DeltaError("no task metrics given")
    directions = _directions(kinds, list(metrics))
    gains: dict[str, dict[str, float]] = {}
    for task, values in metrics.items():
        if task not in baselines:
            raise DeltaError(f"no single-task baseline for task {task!r} (baselines: {sorted(baselines)})")
        names = list(values) if select is None else list(select[task])
        if not names:
            raise DeltaError(f"task {task!r} has no metrics")
        gains[task] = {}
        for name in names:
            if name not in directions[task]:
                known = sorted(directions[task])
                raise DeltaError(f"{task}/{name}: unknown metric direction (known: {known})")
            if name not in baselines[task]:
                raise DeltaError(f"{task}/{name}: missing from the baseline (has {sorted(baselines[task])})")
            gains[task][name] = _relative_gain(
                task, name, float(values[name]), float(baselines[task][name]), directions[task][name]
            )
    return gains


def _flat(gains: dict[str, dict[str, float]]) -> tuple[tuple[str, str], ...]:
    return tuple((task, name) for task, per in gains.items() for name in per)


def delta_m(metrics: Metrics, baselines: Metrics, kinds: Kinds) -> DeltaResult:
    """Maninis et al.: ``(1/K) sum_k (-1)^{l_k} (M_k - B_k) / B_k * 100`` over all K model
    metrics, ``l_k = 1`` if higher is better. POSITIVE = WORSE (as printed by CAGrad, Nash-MTL)."""
    gains = _gains(metrics, baselines, kinds)
    losses = [-g for per in gains.values() for g in per.values()]
    per_task = {task: -sum(per.values()) / len(per) for task, per in gains.items()}
    return DeltaResult(sum(losses) / len(losses), "delta_m", per_task, _flat(gains))


def delta_p(metrics: Metrics, baselines: Metrics, kinds: Kinds) -> DeltaResult:
    """LibMTL: relative improvement averaged within each task, then over tasks. POSITIVE = BETTER."""
    gains = _gains(metrics, baselines, kinds)
    per_task = {task: sum(per.values()) / len(per) for task, per in gains.items()}
    return DeltaResult(sum(per_task.values()) / len(per_task), "delta_p", per_task, _flat(gains))


def primary_metric(kind: str, available: Mapping[str, float] | Sequence[str]) -> str:
    """The metric :func:`delta_primary` uses for a task of ``kind`` given the ``available`` ones:
    the first of the kind's ``primary_metrics`` that is available."""
    try:
        preferred = get_task(kind).primary_metrics
    except KeyError as exc:
        raise DeltaError(exc.args[0]) from None
    for name in preferred:
        if name in available:
            return name
    raise DeltaError(f"task kind {kind!r} needs one of {preferred}, got {sorted(available)}")


def delta_primary(
    metrics: Metrics,
    baselines: Metrics,
    kinds: Kinds,
    primary: Mapping[str, str] | None = None,
) -> DeltaResult:
    """One metric per task (the kind's primary metric, or ``primary = {task: metric}`` overrides),
    relative improvement averaged over tasks. POSITIVE = BETTER.

    For depth, RMSE is preferred over AbsErr when the model reports both; pass ``primary`` to
    pin the choice (e.g. ``{"depth": "abs_err"}`` for the 13-class NYU-v2 family)."""
    if not metrics:
        raise DeltaError("no task metrics given")
    _directions(kinds, list(metrics))
    primary = dict(primary or {})
    unknown = sorted(set(primary) - set(metrics))
    if unknown:
        raise DeltaError(f"primary metric given for unknown task(s) {unknown}")
    select = {
        task: [primary.get(task) or primary_metric(_kind(kinds, task), values)] for task, values in metrics.items()
    }
    for task, (name,) in select.items():
        if name not in metrics[task]:
            raise DeltaError(f"{task}/{name}: primary metric missing from the model metrics")
    gains = _gains(metrics, baselines, kinds, select)
    per_task = {task: next(iter(per.values())) for task, per in gains.items()}
    return DeltaResult(sum(per_task.values()) / len(per_task), "delta_primary", per_task, _flat(gains))


DELTAS = {"delta_m": delta_m, "delta_p": delta_p, "delta_primary": delta_primary}
"""Variant name -> function, for configs that pick the printed variant by name."""
