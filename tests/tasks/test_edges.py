"""The edges kind: boundary targets, balanced BCE and F-measures against hand computations, and
that it goes through augmentation, training and evaluation like the built-in kinds."""

import math

import numpy as np
import pytest
import torch

from sparsemtl.data.augment import hflip, scale_crop
from sparsemtl.tasks import IGNORE_INDEX, TaskSpec, get_task
from sparsemtl.tasks.kinds.edges import THRESHOLDS, boundaries

SPEC = TaskSpec("edges", "edges")


def brute_boundaries(labels: np.ndarray) -> np.ndarray:
    h, w = labels.shape
    out = np.zeros((h, w), dtype=np.uint8)
    for i in range(h):
        for j in range(w):
            if labels[i, j] == IGNORE_INDEX:
                out[i, j] = IGNORE_INDEX
                continue
            for di, dj in ((0, 1), (1, 0), (0, -1), (-1, 0)):
                a, b = i + di, j + dj
                if 0 <= a < h and 0 <= b < w and labels[a, b] not in (IGNORE_INDEX, labels[i, j]):
                    out[i, j] = 1
    return out[None]


def test_boundaries_match_brute_force_on_random_maps() -> None:
    rng = np.random.default_rng(0)
    for _ in range(5):
        labels = rng.integers(0, 3, size=(7, 9))
        labels[rng.random(labels.shape) < 0.1] = IGNORE_INDEX
        np.testing.assert_array_equal(boundaries(labels), brute_boundaries(labels))


def test_balanced_bce_against_a_hand_computation() -> None:
    logits = torch.tensor([2.0, -1.0, 0.5, -3.0, 1.0]).view(1, 1, 1, 5)
    target = torch.tensor([1, 0, 0, 0, IGNORE_INDEX], dtype=torch.uint8).view(1, 1, 1, 5)
    pos_weight = 3.0  # 3 negatives / 1 positive among the 4 valid pixels

    def bce(x: float, y: int) -> float:
        p = 1 / (1 + math.exp(-x))
        return -(pos_weight * y * math.log(p) + (1 - y) * math.log(1 - p))

    expected = (bce(2.0, 1) + bce(-1.0, 0) + bce(0.5, 0) + bce(-3.0, 0)) / 4
    assert get_task("edges").loss(logits, target, SPEC).item() == pytest.approx(expected, rel=1e-6)


def test_f_measures_against_hand_counts() -> None:
    prob = torch.tensor([0.9, 0.6, 0.4, 0.2, 0.7, 0.1])
    truth = torch.tensor([1, 1, 1, 0, 0, 0], dtype=torch.uint8)
    metric = get_task("edges").metric(SPEC)
    metric.update(torch.logit(prob).view(1, 1, 1, 6), truth.view(1, 1, 1, 6))
    got = metric.compute()
    # at 0.5: predicted 0.9, 0.6, 0.7 -> tp 2, fp 1, fn 1
    assert got["precision"] == pytest.approx(100 * 2 / 3)
    assert got["recall"] == pytest.approx(100 * 2 / 3)
    assert got["f1"] == pytest.approx(100 * 4 / 6)
    best = 0.0
    for t in THRESHOLDS:
        guess = prob >= t
        tp = int((guess & (truth == 1)).sum())
        fp = int((guess & (truth == 0)).sum())
        fn = int((~guess & (truth == 1)).sum())
        best = max(best, 2 * tp / (2 * tp + fp + fn))
    assert got["ods_f"] == pytest.approx(100 * best)
    assert got["ods_f"] >= got["f1"]


def test_augmentation_treats_edges_as_a_label_map() -> None:
    labels = np.random.default_rng(1).integers(0, 3, size=(8, 8))
    edges = torch.from_numpy(boundaries(labels))
    sample = {"image": torch.rand(3, 8, 8), "edges": edges}
    np.testing.assert_array_equal(hflip(sample)["edges"].numpy(), edges.flip(-1).numpy())
    zoomed = scale_crop(sample, 2.0, (2, 2, 4, 4))["edges"]
    assert zoomed.dtype == torch.uint8 and set(zoomed.unique().tolist()) <= {0, 1}  # values unchanged by zoom


def test_edges_train_evaluate_and_delta_end_to_end(tmp_path) -> None:
    from sparsemtl.config import load_config
    from sparsemtl.evaluation.baselines import multitask_deltas
    from sparsemtl.training import train

    cfg = load_config(
        None,
        [
            "tasks=[segmentation,edges]",
            "data.name=synthetic-scenes",
            "data.image_size=[32,32]",
            "data.num_train=8",
            "data.num_val=4",
            "data.num_test=4",
            "data.batch_size=4",
            "model.encoder=resnet18d",
            "model.head_channels=16",
            "train.epochs=1",
            "train.device=cpu",
            "train.progress=false",
            "train.monitor=edges.ods_f",
            "sparsity.penalty=group_lasso",
            "sparsity.lam=1e-3",
            f"train.out_dir={tmp_path}",
            "train.name=edges",
        ],
    )
    summary = train(cfg)
    metrics = summary.test["metrics"]["edges"]
    assert set(metrics) == {"ods_f", "f1", "precision", "recall"}
    assert all(0 <= v <= 100 for v in metrics.values() if v == v)
    specs = {"segmentation": TaskSpec("segmentation", "segmentation", 6), "edges": SPEC}
    baselines = {task: {k: v * 0.9 for k, v in m.items()} for task, m in summary.test["metrics"].items()}
    deltas = multitask_deltas(summary.test["metrics"], baselines, specs)
    assert deltas["delta_primary"]["value"] is not None
    assert set(deltas["delta_primary"]["per_task"]) == {"segmentation", "edges"}
