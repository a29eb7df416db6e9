"""Losses against values worked out by hand on tiny, literally written inputs."""

import math

import pytest
import torch
import torch.nn.functional as F

from sparsemtl.tasks import (
    IGNORE_INDEX,
    attribute_loss,
    depth_loss,
    normals_loss,
    segmentation_loss,
)

LN3 = math.log(3.0)
NAN, INF = float("nan"), float("inf")


def seg_logits() -> torch.Tensor:
    """(1, 2, 2, 2) logits: pixels [0,0], [ln3,0] / [ln3,0], [5,-5] as (class0, class1)."""
    class0 = [[0.0, LN3], [LN3, 5.0]]
    class1 = [[0.0, 0.0], [0.0, -5.0]]
    return torch.tensor([[class0, class1]], requires_grad=True)


# softmax of [ln3, 0] is (3/4, 1/4); the last pixel is ignored.
SEG_TARGET = torch.tensor([[[0, 0], [1, IGNORE_INDEX]]])


def test_segmentation_cross_entropy_ignores_void_pixels() -> None:
    expected = (math.log(2) + math.log(4 / 3) + math.log(4)) / 3
    assert segmentation_loss(seg_logits(), SEG_TARGET).item() == pytest.approx(expected)


def test_segmentation_label_smoothing() -> None:
    eps = 0.1
    both = math.log(4 / 3) + math.log(4)  # -log p summed over the two classes
    per_pixel = [
        math.log(2),
        (1 - eps) * math.log(4 / 3) + eps / 2 * both,
        (1 - eps) * math.log(4) + eps / 2 * both,
    ]
    loss = segmentation_loss(seg_logits(), SEG_TARGET, label_smoothing=eps)
    assert loss.item() == pytest.approx(sum(per_pixel) / 3)


def test_segmentation_all_ignored_is_zero_with_grad() -> None:
    logits = seg_logits()
    loss = segmentation_loss(logits, torch.full((1, 2, 2), IGNORE_INDEX))
    assert loss.item() == 0.0 and loss.grad_fn is not None
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_segmentation_low_resolution_logits_are_upsampled() -> None:
    logits = torch.tensor([[[[LN3]], [[0.0]]]])  # 1x1 -> constant (3/4, 1/4) everywhere
    target = torch.tensor([[[0, 0, 0], [0, 0, 1]]])
    expected = (5 * math.log(4 / 3) + math.log(4)) / 6
    assert segmentation_loss(logits, target).item() == pytest.approx(expected)


def test_depth_l1_skips_zero_negative_and_non_finite_targets() -> None:
    pred = torch.tensor([[[[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 6.0, 4.5]]]], requires_grad=True)
    target = torch.tensor([[[[1.5, 0.0, 2.0, -1.0], [NAN, INF, 7.0, 4.0]]]])
    loss = depth_loss(pred, target)
    assert loss.item() == pytest.approx((0.5 + 1.0 + 1.0 + 0.5) / 4)
    loss.backward()
    expected_grad = torch.tensor([[[[-1.0, 0.0, 1.0, 0.0], [0.0, 0.0, -1.0, 1.0]]]]) / 4
    assert torch.equal(pred.grad, expected_grad)  # finite, and zero at invalid pixels


def test_depth_without_valid_pixel_is_zero_with_grad() -> None:
    pred = torch.ones(1, 1, 2, 2, requires_grad=True)
    loss = depth_loss(pred, torch.tensor([[[[0.0, NAN], [INF, -2.0]]]]))
    assert loss.item() == 0.0 and loss.grad_fn is not None
    loss.backward()
    assert torch.equal(pred.grad, torch.zeros_like(pred))


def test_depth_prediction_is_resized_to_the_target() -> None:
    target = torch.tensor([[[[1.0, 3.0], [2.0, 6.0]]]])
    assert depth_loss(torch.full((1, 1, 1, 1), 2.0), target).item() == pytest.approx(6 / 4)

    small = torch.tensor([[[[1.0, 2.0], [3.0, 5.0]]]])
    big_target = torch.rand(1, 1, 4, 4, generator=torch.Generator().manual_seed(0)) * 5 + 0.5
    upsampled = F.interpolate(small, size=(4, 4), mode="bilinear", align_corners=False)
    expected = (upsampled - big_target).abs().mean()
    assert depth_loss(small, big_target).item() == pytest.approx(expected.item())


def test_normals_cosine_with_unnormalised_pred_and_invalid_targets() -> None:
    s = 1 / math.sqrt(2)
    # pixels (row-major): same, orthogonal, opposite, 45 degrees, zero target, NaN target
    pred = [[0, 0, 5], [3, 0, 0], [0, -2, 0], [1, 1, 0], [1, 2, 3], [1, 0, 0]]
    target = [[0, 0, 1], [0, 1, 0], [0, 1, 0], [1, 0, 0], [0, 0, 0], [NAN, 0, 1]]

    def image(vectors: list) -> torch.Tensor:  # 6 vectors -> (1, 3, 2, 3)
        return torch.tensor(vectors, dtype=torch.float32).T.reshape(1, 3, 2, 3)

    prediction = image(pred).requires_grad_()
    loss = normals_loss(prediction, image(target))
    assert loss.item() == pytest.approx((0 + 1 + 2 + (1 - s)) / 4, abs=1e-6)
    loss.backward()
    assert torch.isfinite(prediction.grad).all()


def test_normals_zero_prediction_stays_finite() -> None:
    pred = torch.zeros(1, 3, 1, 2, requires_grad=True)
    target = torch.tensor([[[[0.0, 1.0]], [[0.0, 0.0]], [[1.0, 0.0]]]])
    loss = normals_loss(pred, target)
    assert loss.item() == pytest.approx(1.0)  # a zero vector is orthogonal to everything
    loss.backward()
    assert torch.isfinite(pred.grad).all()


def test_normals_without_valid_pixel_is_zero_with_grad() -> None:
    pred = torch.randn(2, 3, 2, 2, requires_grad=True)
    loss = normals_loss(pred, torch.zeros(2, 3, 2, 2))
    assert loss.item() == 0.0 and loss.grad_fn is not None
    loss.backward()
    assert torch.equal(pred.grad, torch.zeros_like(pred))


@pytest.mark.parametrize("shape", [(3,), (3, 1)])
def test_attribute_bce_with_logits(shape: tuple) -> None:
    logits = torch.tensor([0.0, LN3, -LN3]).reshape(shape)
    target = torch.tensor([1.0, 1.0, 0.0])
    # -log sigmoid(0) = ln 2; -log sigmoid(ln 3) = -log(1 - sigmoid(-ln 3)) = ln(4/3)
    expected = (math.log(2) + 2 * math.log(4 / 3)) / 3
    assert attribute_loss(logits, target).item() == pytest.approx(expected)


def test_attribute_shape_mismatch_is_rejected() -> None:
    with pytest.raises(ValueError, match="attribute"):
        attribute_loss(torch.zeros(4, 2), torch.zeros(4))
