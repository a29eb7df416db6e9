"""What each task kind says about its data: batching, pictures of targets, and resampling by its
declared interpolation (a kind added at run time is augmented without touching augment.py)."""

import numpy as np
import pytest
import torch
from torch.utils.data import default_collate

from sparsemtl.data.augment import hflip, scale_crop
from sparsemtl.data.collate import TaskCollate
from sparsemtl.data.synthetic_scenes import SyntheticScenes
from sparsemtl.tasks import IGNORE_INDEX, TASKS, TaskSpec, get_task
from sparsemtl.tasks.kinds.depth import Depth


def test_task_collate_batches_like_torch_for_the_built_in_kinds() -> None:
    dataset = SyntheticScenes(3, (16, 16), seed=0)
    samples = [dataset[i] for i in range(3)]
    ours, torchs = TaskCollate(dataset.task_specs)(samples), default_collate(samples)
    assert ours.keys() == torchs.keys()
    for key in ours:
        assert torch.equal(ours[key], torchs[key]), key


@pytest.mark.parametrize("kind", ["segmentation", "depth", "normals", "edges"])
def test_dense_kinds_draw_their_targets(kind: str) -> None:
    dataset = SyntheticScenes(1, (16, 20), seed=3)
    spec = dataset.task_specs[kind]
    picture = get_task(kind).visualise(dataset[0][kind], spec)
    assert picture.shape == (16, 20, 3) and picture.dtype == np.uint8
    assert len(np.unique(picture.reshape(-1, 3), axis=0)) > 1


def test_pictures_by_hand() -> None:
    spec = TaskSpec("seg", "segmentation", 3)
    labels = torch.tensor([[0, 1], [2, IGNORE_INDEX]])
    picture = get_task("segmentation").visualise(labels, spec)
    colours = {tuple(picture[i, j]) for i, j in ((0, 0), (0, 1), (1, 0))}
    assert len(colours) == 3 and tuple(picture[1, 1]) == (0, 0, 0)
    normals = torch.zeros(3, 1, 2)
    normals[:, 0, 0] = torch.tensor([0.0, 0.0, 1.0])  # facing the camera; pixel 1 is invalid
    picture = get_task("normals").visualise(normals, TaskSpec("n", "normals"))
    assert tuple(picture[0, 0]) == (128, 128, 255) and tuple(picture[0, 1]) == (0, 0, 0)
    depth = torch.tensor([[[1.0, 2.0, 0.0]]])
    picture = get_task("depth").visualise(depth, TaskSpec("d", "depth")).astype(int)
    assert picture[0, 0].sum() > picture[0, 1].sum()  # near is brighter
    assert tuple(picture[0, 2]) == (0, 0, 0)  # invalid
    assert get_task("attribute").visualise(torch.tensor(1.0), TaskSpec("a", "attribute")) is None


def test_decode_turns_head_outputs_into_target_space() -> None:
    logits = torch.randn(4, 5, 6)
    assert torch.equal(get_task("segmentation").decode(logits, TaskSpec("s", "segmentation", 4)), logits.argmax(0))
    unit = get_task("normals").decode(torch.randn(3, 5, 6), TaskSpec("n", "normals"))
    assert torch.allclose(unit.norm(dim=0), torch.ones(5, 6))
    assert 0 < float(get_task("attribute").decode(torch.tensor([0.3]), TaskSpec("a", "attribute"))) < 1


class SmoothDepth(Depth):
    """A depth-like kind that asks for bilinear resampling."""

    name = "smooth-depth"
    interpolation = "bilinear"


def test_a_new_kind_is_augmented_by_its_own_declarations(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(TASKS._items, "smooth-depth", SmoothDepth())
    field = torch.arange(16.0).view(1, 4, 4) + 1.0
    sample = {"image": torch.rand(3, 4, 4), "field": field}
    kinds = {"field": "smooth-depth"}
    zoomed = scale_crop(sample, 2.0, (1, 1, 2, 2), kinds)["field"]
    window = field[:, 1:3, 1:3].unsqueeze(0)
    expected = torch.nn.functional.interpolate(window, size=(4, 4), mode="bilinear", align_corners=False)[0] / 2.0
    torch.testing.assert_close(zoomed, expected)
    assert torch.equal(hflip(sample, kinds)["field"], field.flip(-1))
    with pytest.raises(ValueError, match="task kind is unknown"):
        scale_crop(sample, 2.0, (1, 1, 2, 2))  # without the mapping "field" has no kind
