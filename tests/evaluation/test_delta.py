"""Multi-task Delta: hand-computed values, sign conventions and input errors."""

from __future__ import annotations

import pytest

from sparsemtl.evaluation.delta import DELTAS, DeltaError, delta_m, delta_p, delta_primary, primary_metric

KINDS = {"seg": "segmentation", "depth": "depth"}
BASE = {"seg": {"miou": 40.0, "pixel_acc": 80.0}, "depth": {"abs_err": 0.4, "rmse": 1.0, "delta1": 0.8}}
# Relative gains (positive = better): miou +25, pixel_acc -10, abs_err -25, rmse +10, delta1 +12.5.
MODEL = {"seg": {"miou": 50.0, "pixel_acc": 72.0}, "depth": {"abs_err": 0.5, "rmse": 0.9, "delta1": 0.9}}


def test_delta_m_hand_computed_positive_is_worse():
    result = delta_m(MODEL, BASE, KINDS)
    assert result.value == pytest.approx(-(25 - 10 - 25 + 10 + 12.5) / 5)  # -2.5: better than baselines
    assert result.variant == "delta_m" and not result.positive_is_better
    assert result.per_task == pytest.approx({"seg": -7.5, "depth": 2.5 / 3})
    assert len(result.metrics) == 5
    expected = "\u0394m = -2.50% (CAGrad / Nash-MTL convention, mean over all metrics; positive = worse)"
    assert result.describe() == expected


def test_delta_p_hand_computed_task_averaged_positive_is_better():
    result = delta_p(MODEL, BASE, KINDS)
    seg, depth = (25 - 10) / 2, (-25 + 10 + 12.5) / 3
    assert result.value == pytest.approx((seg + depth) / 2)  # 3.333..., differs from -delta_m
    assert result.per_task == pytest.approx({"seg": seg, "depth": depth})
    assert result.positive_is_better
    assert result.describe() == "\u0394p = +3.33% (LibMTL, task-averaged; positive = better)"


def test_delta_primary_prefers_rmse_and_accepts_override():
    result = delta_primary(MODEL, BASE, KINDS)
    assert result.metrics == (("seg", "miou"), ("depth", "rmse"))
    assert result.value == pytest.approx((25 + 10) / 2)
    assert result.describe().endswith("(Maninis et al. 2019, one primary metric per task; positive = better)")
    pinned = delta_primary(MODEL, BASE, KINDS, primary={"depth": "abs_err"})
    assert pinned.value == pytest.approx((25 - 25) / 2)
    no_rmse = {"seg": MODEL["seg"], "depth": {"abs_err": 0.5}}
    assert delta_primary(no_rmse, BASE, KINDS).metrics[1] == ("depth", "abs_err")


def test_identical_model_gives_zero_and_signs_follow_directions():
    for fn in DELTAS.values():
        assert fn(BASE, BASE, KINDS).value == pytest.approx(0.0)
    # Lower depth error and higher mIoU are both improvements: delta_m < 0, the others > 0.
    better = {"seg": {"miou": 44.0}, "depth": {"abs_err": 0.36}}
    assert delta_m(better, BASE, KINDS).value == pytest.approx(-10.0)
    assert delta_p(better, BASE, KINDS).value == pytest.approx(10.0)
    assert delta_primary(better, BASE, KINDS).value == pytest.approx(10.0)
    worse = {"seg": {"miou": 36.0}, "depth": {"abs_err": 0.44}}
    assert delta_m(worse, BASE, KINDS).value == pytest.approx(10.0)
    assert delta_p(worse, BASE, KINDS).value == pytest.approx(-10.0)


def test_mixed_directions_within_a_task_and_attributes():
    kinds = {"normals": "normals", "smile": "attribute"}
    base = {"normals": {"mean_angle": 20.0, "within_11_25": 40.0}, "smile": {"accuracy": 0.8, "f1": 0.5}}
    model = {"normals": {"mean_angle": 22.0, "within_11_25": 44.0}, "smile": {"accuracy": 0.8, "f1": 0.6}}
    # normals: mean_angle up 10% (worse, -10), within_11_25 up 10% (better, +10) -> cancel.
    assert delta_p(model, base, kinds).per_task["normals"] == pytest.approx(0.0)
    assert delta_p(model, base, kinds).per_task["smile"] == pytest.approx(10.0)
    assert delta_primary(model, base, kinds).value == pytest.approx((-10 + 20) / 2)
    assert primary_metric("attribute", {"accuracy": 0.9}) == "accuracy"


def test_explicit_direction_mappings_are_accepted():
    directions = {"seg": {"miou": True, "pixel_acc": True}, "depth": {"abs_err": False, "rmse": False, "delta1": True}}
    assert delta_m(MODEL, BASE, directions).value == pytest.approx(delta_m(MODEL, BASE, KINDS).value)


@pytest.mark.parametrize("fn", list(DELTAS.values()))
def test_errors(fn):
    with pytest.raises(DeltaError, match="baseline is zero"):
        fn({"seg": {"miou": 1.0}}, {"seg": {"miou": 0.0}}, KINDS)
    with pytest.raises(DeltaError, match="missing from the baseline"):
        fn({"seg": {"miou": 1.0}}, {"seg": {"pixel_acc": 1.0}}, KINDS)
    with pytest.raises(DeltaError, match="no single-task baseline"):
        fn({"seg": {"miou": 1.0}}, {}, KINDS)
    with pytest.raises(DeltaError, match="no task kind"):
        fn({"other": {"miou": 1.0}}, BASE, KINDS)
    with pytest.raises(DeltaError, match="no task metrics"):
        fn({}, BASE, KINDS)
    with pytest.raises(DeltaError, match="not finite"):
        fn({"seg": {"miou": float("nan")}}, BASE, KINDS)
    with pytest.raises(KeyError):
        fn({"seg": {"miou": 1.0}}, BASE, {"seg": "no-such-kind"})


def test_unknown_metric_raises():
    with pytest.raises(DeltaError, match="unknown metric"):
        delta_m({"seg": {"bogus": 1.0}}, {"seg": {"bogus": 1.0}}, KINDS)
    with pytest.raises(DeltaError, match="needs one of"):
        delta_primary({"seg": {"pixel_acc": 1.0}}, BASE, KINDS)
