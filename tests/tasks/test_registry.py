"""The task-kind registry: lookup, head/channel contract, and consistent metric metadata."""

import pytest
import torch

from sparsemtl.tasks import IGNORE_INDEX, TASKS, TaskSpec, get_task, segmentation_loss

SPECS = {
    "segmentation": TaskSpec("semseg", "segmentation", num_classes=13),
    "depth": TaskSpec("depth", "depth"),
    "normals": TaskSpec("normals", "normals"),
    "attribute": TaskSpec("smiling", "attribute"),
    "edges": TaskSpec("edges", "edges"),
}


def sample(kind: str, noise: float) -> tuple[torch.Tensor, torch.Tensor]:
    """A (pred, target) pair for ``kind``: a perfect prediction plus ``noise``."""
    generator = torch.Generator().manual_seed(3)

    def noisy(x: torch.Tensor) -> torch.Tensor:
        return x + noise * torch.randn(x.shape, generator=generator)

    if kind == "segmentation":
        target = torch.randint(0, 13, (2, 4, 4), generator=generator)
        target[0, 0, 0] = IGNORE_INDEX
        logits = torch.nn.functional.one_hot(target.clamp(max=12), 13).permute(0, 3, 1, 2)
        return noisy(logits.float()), target
    if kind == "depth":
        target = torch.rand(2, 1, 4, 4, generator=generator) * 5 + 1
        return noisy(target), target
    if kind == "normals":
        target = torch.nn.functional.normalize(torch.randn(2, 3, 4, 4, generator=generator), dim=1)
        return noisy(target), target
    if kind == "edges":
        target = torch.randint(0, 2, (2, 1, 8, 8), generator=generator).to(torch.uint8)
        target[0, 0, 0, 0] = IGNORE_INDEX
        return noisy(target.float().clamp(max=1) * 8 - 4), target
    target = torch.randint(0, 2, (64,), generator=generator).float()
    return noisy(target * 2 - 1), target


def test_registered_kinds() -> None:
    assert TASKS.names() == ["attribute", "depth", "edges", "normals", "segmentation"]


def test_unknown_kind_lists_available_kinds() -> None:
    with pytest.raises(KeyError, match="attribute, depth, edges, normals, segmentation"):
        get_task("keypoints")


def test_unknown_kind_is_refused_when_the_spec_is_made() -> None:
    with pytest.raises(KeyError, match="keypoints"):
        TaskSpec("x", "keypoints")


def test_no_loss_option_a_kind_does_not_declare() -> None:
    pred, target = sample("depth", noise=0.1)
    with pytest.raises(ValueError, match="label_smoothing"):
        get_task("depth").loss(pred, target, SPECS["depth"], label_smoothing=0.1)
    assert get_task("depth").select_options({"label_smoothing": 0.1}) == {}
    assert get_task("segmentation").select_options({"label_smoothing": 0.1}) == {"label_smoothing": 0.1}


@pytest.mark.parametrize(
    "kind, channels, head",
    [
        ("segmentation", 13, "dense"),
        ("depth", 1, "dense"),
        ("normals", 3, "dense"),
        ("attribute", 1, "global"),
        ("edges", 1, "dense"),
    ],
)
def test_out_channels_and_head(kind: str, channels: int, head: str) -> None:
    task = get_task(kind)
    assert task.name == kind
    assert task.out_channels(SPECS[kind]) == channels
    assert task.head == head


@pytest.mark.parametrize("kind", sorted(SPECS))
def test_metric_metadata_matches_the_accumulator(kind: str) -> None:
    task = get_task(kind)
    metric = task.metric(SPECS[kind])
    metric.update(*sample(kind, noise=0.0))
    assert set(metric.compute()) == set(task.metric_directions)
    assert task.metric_directions[task.primary_metric] is task.higher_is_better
    assert task.metric(SPECS[kind]) is not metric  # a fresh accumulator every time


@pytest.mark.parametrize("kind", sorted(SPECS))
def test_directions_rank_a_perfect_prediction_first(kind: str) -> None:
    task = get_task(kind)
    perfect, noisy = task.metric(SPECS[kind]), task.metric(SPECS[kind])
    perfect.update(*sample(kind, noise=0.0))
    noisy.update(*sample(kind, noise=1.5))
    good, bad = perfect.compute(), noisy.compute()
    for name, higher_is_better in task.metric_directions.items():
        better, worse = (good[name], bad[name]) if higher_is_better else (bad[name], good[name])
        assert better >= worse, name
    primary = task.primary_metric
    assert (good[primary] > bad[primary]) is task.higher_is_better


@pytest.mark.parametrize("kind", sorted(SPECS))
def test_loss_is_a_differentiable_scalar(kind: str) -> None:
    pred, target = sample(kind, noise=0.5)
    pred.requires_grad_()
    loss = get_task(kind).loss(pred, target, SPECS[kind])
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0


def test_loss_options_are_forwarded() -> None:
    pred, target = sample("segmentation", noise=0.5)
    spec = SPECS["segmentation"]
    via_registry = get_task("segmentation").loss(pred, target, spec, label_smoothing=0.2)
    assert via_registry.item() == pytest.approx(segmentation_loss(pred, target, 0.2).item())
    assert via_registry.item() != pytest.approx(segmentation_loss(pred, target).item())


def test_loss_rejects_wrong_channel_count_and_wrong_kind() -> None:
    pred, target = sample("segmentation", noise=0.0)
    with pytest.raises(ValueError, match="13"):
        get_task("segmentation").loss(pred[:, :5], target, SPECS["segmentation"])
    with pytest.raises(ValueError, match="kind"):
        get_task("depth").loss(pred, target, SPECS["segmentation"])
