"""Tests of the procedural ``synthetic-scenes`` dataset (format, determinism, geometry).

Pixel-centre convention (the one the dataset documents): pixel (row v, column u) is sampled
at ``(u + 0.5, v + 0.5)``, so a valid pixel back-projects to ``depth * K^-1 [u+.5, v+.5, 1]``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sparsemtl.data.synthetic_scenes import (
    ATTRIBUTE_CLASSES,
    CEILING,
    CLASS_NAMES,
    FLOOR,
    SPHERE,
    Sphere,
    SyntheticScenes,
)
from sparsemtl.tasks.spec import IGNORE_INDEX

Samples = list[dict[str, torch.Tensor]]
SIZE = (40, 48)
NUM_SAMPLES = 40


@pytest.fixture(scope="module")
def dataset() -> SyntheticScenes:
    return SyntheticScenes(NUM_SAMPLES, SIZE, seed=3)


@pytest.fixture(scope="module")
def samples(dataset: SyntheticScenes) -> Samples:
    return [dataset[i] for i in range(len(dataset))]


def back_project(sample: dict[str, torch.Tensor]) -> np.ndarray:
    """Camera-frame points (3, H, W), float64, with the pixel-centre convention above."""
    depth = sample["depth"][0].double().numpy()
    height, width = depth.shape
    v, u = np.mgrid[0:height, 0:width]
    pixels = np.stack([u + 0.5, v + 0.5, np.ones_like(depth)]).reshape(3, -1)
    rays = np.linalg.inv(sample["intrinsics"].double().numpy()) @ pixels
    return rays.reshape(3, height, width) * depth


def viewing_rays(sample: dict[str, torch.Tensor]) -> np.ndarray:
    """Unnormalised camera-frame rays (3, H, W) through the pixel centres."""
    height, width = sample["segmentation"].shape
    v, u = np.mgrid[0:height, 0:width]
    pixels = np.stack([u + 0.5, v + 0.5, np.ones((height, width))]).reshape(3, -1)
    rays = np.linalg.inv(sample["intrinsics"].double().numpy()) @ pixels
    return rays.reshape(3, height, width)


def angle_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Angles between unit vectors stacked along axis 0."""
    return np.degrees(np.arccos(np.clip((a * b).sum(axis=0), -1.0, 1.0)))


# ------------------------------------------------------------------------- interface


def test_task_specs_match_sample_keys(samples: Samples) -> None:
    specs = SyntheticScenes.task_specs
    assert set(samples[0]) == set(specs) | {"image", "intrinsics"}
    assert specs["segmentation"].num_classes == len(CLASS_NAMES) >= 6
    assert specs["segmentation"].class_names == CLASS_NAMES
    assert {specs[name].kind for name in ATTRIBUTE_CLASSES} == {"attribute"}
    assert (specs["depth"].kind, specs["normals"].kind) == ("depth", "normals")


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"num_samples": 0}, "num_samples"),
        ({"num_samples": 4, "image_size": (8, 32)}, "image_size"),
        ({"num_samples": 4, "seed": -1}, "seed"),
    ],
)
def test_invalid_arguments_name_the_argument(kwargs: dict, argument: str) -> None:
    with pytest.raises(ValueError, match=argument):
        SyntheticScenes(**kwargs)


@pytest.mark.parametrize("index", [-1, NUM_SAMPLES, NUM_SAMPLES + 10])
def test_out_of_range_index_raises(dataset: SyntheticScenes, index: int) -> None:
    with pytest.raises(IndexError):
        dataset[index]


def test_length(dataset: SyntheticScenes) -> None:
    assert len(dataset) == NUM_SAMPLES


# ----------------------------------------------------------------------- determinism


def test_same_seed_and_index_give_bitwise_equal_samples(dataset: SyntheticScenes) -> None:
    other = SyntheticScenes(NUM_SAMPLES, SIZE, seed=3)
    for index in (0, 7, NUM_SAMPLES - 1):
        first, second = dataset[index], other[index]
        for key in first:
            assert torch.equal(first[key], second[key]), key


def test_reading_order_does_not_matter(dataset: SyntheticScenes) -> None:
    late = dataset[5]
    for index in (9, 2):
        dataset[index]
    assert torch.equal(late["image"], dataset[5]["image"])


def test_different_seed_or_index_changes_the_image(dataset: SyntheticScenes) -> None:
    other_seed = SyntheticScenes(NUM_SAMPLES, SIZE, seed=4)
    assert not torch.equal(dataset[0]["image"], other_seed[0]["image"])
    assert not torch.equal(dataset[0]["image"], dataset[1]["image"])


def test_scene_does_not_depend_on_resolution() -> None:
    small, large = SyntheticScenes(4, (32, 32), seed=1), SyntheticScenes(4, (64, 64), seed=1)
    np.testing.assert_array_equal(small.scene_parameters(2).camera.position, large.scene_parameters(2).camera.position)
    k_small, k_large = small[2]["intrinsics"], large[2]["intrinsics"]
    torch.testing.assert_close(k_large[:2], 2 * k_small[:2])


# -------------------------------------------------------------------- formats, ranges


def test_shapes_and_dtypes(samples: Samples) -> None:
    height, width = SIZE
    sample = samples[0]
    assert sample["image"].shape == (3, height, width) and sample["image"].dtype == torch.float32
    assert sample["segmentation"].shape == (height, width)
    assert sample["segmentation"].dtype == torch.int64
    assert sample["depth"].shape == (1, height, width) and sample["depth"].dtype == torch.float32
    assert sample["normals"].shape == (3, height, width)
    assert sample["normals"].dtype == torch.float32
    assert sample["intrinsics"].shape == (3, 3) and sample["intrinsics"].dtype == torch.float32
    for name in ATTRIBUTE_CLASSES:
        assert sample[name].shape == () and sample[name].dtype == torch.float32


def test_value_ranges(samples: Samples) -> None:
    for sample in samples:
        image, labels = sample["image"], sample["segmentation"]
        assert 0.0 <= image.min() and image.max() <= 1.0
        assert image.std() > 0.02, "image should not be flat"
        in_range = (labels >= 0) & (labels < len(CLASS_NAMES))
        assert torch.all(in_range | (labels == IGNORE_INDEX))
        for name in ATTRIBUTE_CLASSES:
            assert sample[name].item() in (0.0, 1.0)


def test_intrinsics_are_a_pinhole_matrix(samples: Samples) -> None:
    height, width = SIZE
    for sample in samples[:5]:
        k = sample["intrinsics"]
        assert k[0, 0] > 0 and torch.isclose(k[0, 0], k[1, 1])
        assert abs(k[0, 2] - width / 2) < 0.05 * width and abs(k[1, 2] - height / 2) < 0.05 * height
        torch.testing.assert_close(k[2], torch.tensor([0.0, 0.0, 1.0]))
        assert k[0, 1] == 0 and k[1, 0] == 0


def test_depth_and_normals_share_one_validity_mask(samples: Samples) -> None:
    invalid_pixels = 0
    for sample in samples:
        depth, normals = sample["depth"][0], sample["normals"]
        valid = depth > 0
        assert torch.all(depth >= 0)
        assert torch.all(normals[:, ~valid] == 0)
        torch.testing.assert_close(normals[:, valid].norm(dim=0), torch.ones(int(valid.sum())))
        invalid_pixels += int((~valid).sum())
    total = NUM_SAMPLES * SIZE[0] * SIZE[1]
    assert 0 < invalid_pixels < 0.2 * total, "dropout should exist but stay small"


def test_every_class_appears(samples: Samples) -> None:
    seen = torch.zeros(len(CLASS_NAMES), dtype=torch.bool)
    for sample in samples:
        seen[sample["segmentation"].unique()] = True
    assert seen.all(), [name for name, hit in zip(CLASS_NAMES, seen) if not hit]


def test_attributes_are_balanced_and_match_visibility(samples: Samples) -> None:
    for name, class_id in ATTRIBUTE_CLASSES.items():
        values = torch.stack([sample[name] for sample in samples])
        assert 0.2 < values.mean() < 0.8, name
        visible = torch.tensor([float((s["segmentation"] == class_id).any()) for s in samples])
        assert torch.equal(values, visible), name


# -------------------------------------------------------------------------- geometry


def test_normals_face_the_camera(samples: Samples) -> None:
    for sample in samples:
        valid = (sample["depth"][0] > 0).numpy()
        facing = (viewing_rays(sample) * sample["normals"].double().numpy()).sum(axis=0)
        assert np.all(facing[valid] < 0)


def neighbours(array: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Views of ``array[..., H, W]`` at each pixel, its right and its lower neighbour."""
    return array[..., :-1, :-1], array[..., :-1, 1:], array[..., 1:, :-1]


def test_normals_match_back_projected_planes(samples: Samples) -> None:
    """On planar patches, the normal of the back-projected neighbours is the given normal."""
    errors = []
    for sample in samples:
        point, right, below = neighbours(back_project(sample))
        normal, normal_right, normal_below = neighbours(sample["normals"].double().numpy())
        label, label_right, label_below = neighbours(sample["segmentation"].numpy())
        estimate = np.cross(below - point, right - point, axis=0)
        estimate /= np.linalg.norm(estimate, axis=0, keepdims=True) + 1e-12
        planar = (
            (label == label_right)
            & (label == label_below)
            & ((normal * normal_right).sum(axis=0) > 0.99999)
            & ((normal * normal_below).sum(axis=0) > 0.99999)
            & (point[2] > 0)
            & (right[2] > 0)
            & (below[2] > 0)
        )
        errors.append(angle_deg(estimate[:, planar], normal[:, planar]))
    errors = np.concatenate(errors)
    assert errors.size > 1000
    assert np.median(errors) < 0.1
    assert np.mean(errors < 1.0) > 0.99


def test_depth_is_z_depth_floor_and_ceiling_are_flat(dataset: SyntheticScenes, samples: Samples) -> None:
    """Floor pixels back-project onto z = 0 and ceiling pixels onto the ceiling height in
    the world frame; with ray length instead of z-depth these planes would come out curved."""
    checked = 0
    for index, sample in enumerate(samples):
        params = dataset.scene_parameters(index)
        points = back_project(sample).reshape(3, -1)
        world = params.camera.rotation @ points + params.camera.position[:, None]
        labels = sample["segmentation"].numpy().ravel()
        valid = points[2] > 0
        for class_id, height in ((FLOOR, 0.0), (CEILING, params.room_size[2])):
            mask = valid & (labels == class_id)
            np.testing.assert_allclose(world[2, mask], height, atol=1e-4)
            checked += int(mask.sum())
    assert checked > 1000


def test_sphere_normals_point_away_from_the_centre(dataset: SyntheticScenes, samples: Samples) -> None:
    checked = 0
    for index, sample in enumerate(samples):
        params = dataset.scene_parameters(index)
        mask = ((sample["segmentation"] == SPHERE) & (sample["depth"][0] > 0)).numpy().ravel()
        if not mask.any():
            continue
        spheres = [obj for obj in params.objects if isinstance(obj, Sphere)]
        rotation, position = params.camera.rotation, params.camera.position
        centres = np.stack([rotation.T @ (s.center - position) for s in spheres], axis=1)
        radii = np.array([s.radius for s in spheres])
        points = back_project(sample).reshape(3, -1)[:, mask]
        offsets = points[:, None, :] - centres[:, :, None]
        residual = np.abs(np.linalg.norm(offsets, axis=0) - radii[:, None])
        nearest = residual.argmin(axis=0)
        columns = np.arange(points.shape[1])
        assert residual[nearest, columns].max() < 1e-4
        expected = offsets[:, nearest, columns] / radii[nearest]
        normals = sample["normals"].double().numpy().reshape(3, -1)[:, mask]
        assert angle_deg(expected, normals).max() < 0.1
        checked += points.shape[1]
    assert checked > 100
