"""Metric accumulators against hand-built cases, split-level accumulation and merging."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sparsemtl.tasks import (
    IGNORE_INDEX,
    AttributeMetric,
    DepthMetric,
    Metric,
    NormalsMetric,
    SegmentationMetric,
)
from sparsemtl.tasks.kinds.normals import ANGLE_BIN_WIDTH

NAN = float("nan")


def logits_for(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(B, H, W) class indices -> (B, C, H, W) logits whose argmax is those indices."""
    return F.one_hot(labels, num_classes).permute(0, 3, 1, 2).float() * 10.0


def unit(degrees: float) -> list[float]:
    """Unit vector in the xy-plane at ``degrees`` from the x axis."""
    return [math.cos(math.radians(degrees)), math.sin(math.radians(degrees)), 0.0]


def normal_image(vectors: list, height: int, width: int) -> torch.Tensor:
    """Row-major list of 3-vectors -> (1, 3, height, width)."""
    return torch.tensor(vectors, dtype=torch.float64).T.reshape(1, 3, height, width)


# ---------------------------------------------------------------- segmentation


def test_segmentation_miou_skips_class_absent_everywhere() -> None:
    target = torch.tensor([[[0, 0, 1], [1, 2, IGNORE_INDEX]]])
    guess = torch.tensor([[[0, 1, 1], [1, 2, 0]]])  # the ignored pixel's guess must not count
    metric = SegmentationMetric(num_classes=4)  # class 3 appears in neither
    metric.update(logits_for(guess, 4), target)
    # IoU: class 0 = 1/2, class 1 = 2/3, class 2 = 1; class 3 excluded (not 0, not 1)
    result = metric.compute()
    assert result["miou"] == pytest.approx(100 * (1 / 2 + 2 / 3 + 1) / 3)
    assert result["pixel_acc"] == pytest.approx(100 * 4 / 5)
    expected_confusion = torch.zeros(4, 4, dtype=torch.float64)
    for t, p in [(0, 0), (0, 1), (1, 1), (1, 1), (2, 2)]:
        expected_confusion[t, p] += 1
    assert torch.equal(metric.confusion(), expected_confusion)


def test_segmentation_low_resolution_logits_are_upsampled() -> None:
    logits = torch.tensor([[[[1.0]], [[0.0]], [[0.0]]]])  # class 0 everywhere once resized
    metric = SegmentationMetric(3)
    metric.update(logits, torch.tensor([[[0, 0], [0, 2]]]))
    assert metric.compute()["pixel_acc"] == pytest.approx(75.0)
    assert metric.compute()["miou"] == pytest.approx(100 * (3 / 4 + 0) / 2)


def test_segmentation_rejects_out_of_range_labels() -> None:
    metric = SegmentationMetric(3)
    with pytest.raises(ValueError, match="labels"):
        metric.update(torch.zeros(1, 3, 1, 2), torch.tensor([[[0, 7]]]))


# ---------------------------------------------------------------- depth


def test_depth_metrics_by_hand() -> None:
    pred = torch.tensor([[[[1.0, 2.0, -1.0], [4.5, 0.5, 9.0]]]])
    target = torch.tensor([[[[2.0, 2.0, 1.0], [5.0, 0.0, NAN]]]])
    metric = DepthMetric()
    metric.update(pred, target)
    # valid (pred, gt): (1, 2) (2, 2) (-1, 1) (4.5, 5); errors 1, 0, 2, 0.5
    result = metric.compute()
    assert result["abs_err"] == pytest.approx((1 + 0 + 2 + 0.5) / 4)
    assert result["rel_err"] == pytest.approx((0.5 + 0 + 2 + 0.1) / 4)
    assert result["rmse"] == pytest.approx(math.sqrt((1 + 0 + 4 + 0.25) / 4))
    # (2, 2) and (4.5, 5) pass; ratio 2 fails; the negative prediction fails.
    assert result["delta1"] == pytest.approx(50.0)


def test_depth_split_level_accumulation_is_not_a_mean_of_batches() -> None:
    metric = DepthMetric()
    metric.update(torch.tensor([[[[3.0, 7.0]]]]), torch.tensor([[[[1.0, 0.0]]]]))  # 1 pixel, e=2
    metric.update(torch.full((1, 1, 1, 3), 2.0), torch.full((1, 1, 1, 3), 1.0))  # 3 pixels, e=1
    result = metric.compute()
    assert result["abs_err"] == pytest.approx((2 + 3) / 4)  # a batch mean would give 1.5
    assert result["rmse"] == pytest.approx(math.sqrt((4 + 3) / 4))  # batch mean: 1.5


# ---------------------------------------------------------------- normals


def test_normals_known_angles() -> None:
    pred = [unit(0), unit(90), unit(180), [2.0, 2.0, 0.0], unit(20), unit(25), unit(5), unit(0)]
    pred[0] = [5.0, 0.0, 0.0]  # unnormalised prediction, still 0 degrees
    target = [unit(0)] * 6 + [[0.0, 0.0, 0.0], [NAN, 0.0, 1.0]]  # last two are invalid
    metric = NormalsMetric()
    metric.update(normal_image(pred, 2, 4), normal_image(target, 2, 4))
    result = metric.compute()  # angles: 0, 90, 180, 45, 20, 25
    assert result["mean_angle"] == pytest.approx(60.0)
    assert result["median_angle"] == pytest.approx(35.0, abs=ANGLE_BIN_WIDTH)
    assert result["within_11_25"] == pytest.approx(100 / 6)
    assert result["within_22_5"] == pytest.approx(200 / 6)
    assert result["within_30"] == pytest.approx(300 / 6)


def test_normals_prediction_is_resized_to_the_target() -> None:
    pred = torch.tensor([[[[0.0]], [[0.0]], [[-1.0]]]])  # opposite of every target pixel
    target = torch.zeros(1, 3, 2, 2)
    target[:, 2] = 1.0
    metric = NormalsMetric()
    metric.update(pred, target)
    assert metric.compute()["mean_angle"] == pytest.approx(180.0)


def exact_angles(pred: torch.Tensor, target: torch.Tensor) -> np.ndarray:
    """Reference per-pixel angles in degrees computed independently with numpy."""
    p = pred.double().numpy().transpose(0, 2, 3, 1).reshape(-1, 3)
    g = target.double().numpy().transpose(0, 2, 3, 1).reshape(-1, 3)
    p /= np.linalg.norm(p, axis=1, keepdims=True)
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    return np.degrees(np.arccos(np.clip((p * g).sum(axis=1), -1.0, 1.0)))


@pytest.mark.parametrize("seed, pixels", [(1, 101), (2, 100), (3, 1), (4, 2)])
def test_normals_histogram_median_matches_numpy(seed: int, pixels: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    metric = NormalsMetric()
    angles = []
    for batch in (1, 2, 4):  # several updates of 7 * pixels angles in all (odd and even)
        pred = torch.randn(batch, 3, 1, pixels, generator=generator)
        target = torch.randn(batch, 3, 1, pixels, generator=generator)
        metric.update(pred, target)
        angles.append(exact_angles(pred, target))
    angles = np.concatenate(angles)
    result = metric.compute()
    assert result["median_angle"] == pytest.approx(np.median(angles), abs=ANGLE_BIN_WIDTH)
    assert result["mean_angle"] == pytest.approx(angles.mean())
    assert result["within_30"] == pytest.approx(100 * (angles < 30).mean())


# ---------------------------------------------------------------- attribute


def test_attribute_accuracy_and_f1() -> None:
    logits = torch.tensor([2.0, -1.0, 0.0, 0.5, -3.0, -0.2, 1.0])
    target = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 1.0])
    # logit 0 is probability 0.5 -> positive: tp = 3, fp = 1, tn = 2, fn = 1
    metric = AttributeMetric()
    metric.update(logits[:, None], target)
    result = metric.compute()
    assert result["accuracy"] == pytest.approx(100 * 5 / 7)
    assert result["f1"] == pytest.approx(100 * 6 / 8)


# ---------------------------------------------------------------- all kinds


def random_batch(kind: str, batch: int, generator: torch.Generator) -> tuple:
    """A random (pred, target) batch of ``kind`` with some invalid targets."""
    if kind == "segmentation":
        target = torch.randint(0, 4, (batch, 3, 5), generator=generator)
        target[:, 0, 0] = IGNORE_INDEX
        return torch.randn(batch, 4, 3, 5, generator=generator), target
    if kind == "depth":
        target = torch.rand(batch, 1, 3, 5, generator=generator) * 4
        target[:, :, 0, 0] = 0.0
        return torch.rand(batch, 1, 3, 5, generator=generator) * 4, target
    if kind == "normals":
        target = torch.randn(batch, 3, 3, 5, generator=generator)
        target[:, :, 0, 0] = 0.0
        return torch.randn(batch, 3, 3, 5, generator=generator), target
    target = torch.randint(0, 2, (batch,), generator=generator).float()
    return torch.randn(batch, 1, generator=generator), target


def new_metric(kind: str) -> Metric:
    factories = {
        "segmentation": lambda: SegmentationMetric(4),
        "depth": DepthMetric,
        "normals": NormalsMetric,
        "attribute": AttributeMetric,
    }
    return factories[kind]()


KINDS = ["segmentation", "depth", "normals", "attribute"]


@pytest.mark.parametrize("kind", KINDS)
def test_accumulation_equals_concatenation_and_merge(kind: str) -> None:
    generator = torch.Generator().manual_seed(7)
    batches = [random_batch(kind, size, generator) for size in (1, 4, 2)]
    sequential, first, second, whole = (new_metric(kind) for _ in range(4))
    for pred, target in batches:
        sequential.update(pred, target)
    first.update(*batches[0])
    for pred, target in batches[1:]:
        second.update(pred, target)
    whole.update(torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches]))

    merged = first.merge(second).compute()
    for reference in (whole.compute(), sequential.compute()):
        assert merged.keys() == reference.keys()
        for name, value in reference.items():
            assert merged[name] == pytest.approx(value, rel=1e-9), name


@pytest.mark.parametrize("kind", KINDS)
def test_empty_accumulator_reports_nan(kind: str) -> None:
    metric = new_metric(kind)
    assert all(math.isnan(value) for value in metric.compute().values())
    metric.update(*random_batch(kind, 2, torch.Generator().manual_seed(0)))
    metric.reset()
    assert all(math.isnan(value) for value in metric.compute().values())


def test_only_invalid_pixels_reports_nan() -> None:
    metric = DepthMetric()
    metric.update(torch.ones(1, 1, 2, 2), torch.zeros(1, 1, 2, 2))
    assert all(math.isnan(value) for value in metric.compute().values())


def test_merge_rejects_a_different_metric() -> None:
    with pytest.raises(ValueError, match="merge"):
        SegmentationMetric(3).merge(SegmentationMetric(4))
    with pytest.raises(ValueError, match="merge"):
        DepthMetric().merge(AttributeMetric())
