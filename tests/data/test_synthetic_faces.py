"""Tests of the procedural ``synthetic-faces`` dataset (format, determinism, attributes)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from sparsemtl.data.synthetic_faces import (
    ATTRIBUTE_NAMES,
    BACKGROUND,
    CLASS_NAMES,
    EYE_Y,
    FEATURE_SHIFT,
    HAIR,
    SKIN,
    FaceParameters,
    SyntheticFaces,
    face_coordinates,
    render_face,
)

Samples = list[dict[str, torch.Tensor]]
SIZE = (48, 40)
NUM_SAMPLES = 60
TOGGLE_SIZE = (64, 64)
TOGGLED_FACES = 8


@pytest.fixture(scope="module")
def dataset() -> SyntheticFaces:
    return SyntheticFaces(NUM_SAMPLES, SIZE, seed=11)


@pytest.fixture(scope="module")
def samples(dataset: SyntheticFaces) -> Samples:
    return [dataset[i] for i in range(len(dataset))]


@pytest.fixture(scope="module")
def people() -> list[FaceParameters]:
    faces = SyntheticFaces(TOGGLED_FACES, TOGGLE_SIZE, seed=5)
    return [faces.face_parameters(i) for i in range(TOGGLED_FACES)]


def render_both(params: FaceParameters, attribute: str) -> tuple[dict, dict]:
    """The same person rendered without and with ``attribute``."""
    return (
        render_face(replace(params, **{attribute: False}), TOGGLE_SIZE),
        render_face(replace(params, **{attribute: True}), TOGGLE_SIZE),
    )


def changed_pixels(first: dict, second: dict) -> np.ndarray:
    return np.any(first["image"] != second["image"], axis=0)


def feature_coordinates(params: FaceParameters) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates of the frame that eyes, brows, nose and mouth are drawn in."""
    x, y = face_coordinates(params, TOGGLE_SIZE)
    return x - FEATURE_SHIFT * params.yaw, y


# ------------------------------------------------------------------------- interface


def test_task_specs_match_sample_keys(samples: Samples) -> None:
    specs = SyntheticFaces.task_specs
    assert set(samples[0]) == set(specs) | {"image"}
    assert specs["segmentation"].class_names == ("background", "hair", "skin") == CLASS_NAMES
    assert set(ATTRIBUTE_NAMES) == {"male", "smiling", "arched_eyebrows", "eyeglasses"}
    assert {specs[name].kind for name in ATTRIBUTE_NAMES} == {"attribute"}


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"num_samples": 0}, "num_samples"),
        ({"num_samples": 4, "image_size": (32, 15)}, "image_size"),
        ({"num_samples": 4, "seed": -3}, "seed"),
    ],
)
def test_invalid_arguments_name_the_argument(kwargs: dict, argument: str) -> None:
    with pytest.raises(ValueError, match=argument):
        SyntheticFaces(**kwargs)


@pytest.mark.parametrize("index", [-1, NUM_SAMPLES])
def test_out_of_range_index_raises(dataset: SyntheticFaces, index: int) -> None:
    with pytest.raises(IndexError):
        dataset[index]


# ----------------------------------------------------------------------- determinism


def test_same_seed_and_index_give_bitwise_equal_samples(dataset: SyntheticFaces) -> None:
    other = SyntheticFaces(NUM_SAMPLES, SIZE, seed=11)
    for index in (0, 13, NUM_SAMPLES - 1):
        first, second = dataset[index], other[index]
        for key in first:
            assert torch.equal(first[key], second[key]), key


def test_different_seed_or_index_changes_the_image(dataset: SyntheticFaces) -> None:
    other_seed = SyntheticFaces(NUM_SAMPLES, SIZE, seed=12)
    assert not torch.equal(dataset[0]["image"], other_seed[0]["image"])
    assert not torch.equal(dataset[0]["image"], dataset[1]["image"])


def test_person_does_not_depend_on_resolution() -> None:
    small, large = SyntheticFaces(3, (32, 32), seed=2), SyntheticFaces(3, (96, 80), seed=2)
    assert small.face_parameters(1).attributes == large.face_parameters(1).attributes
    assert small.face_parameters(1).scale == large.face_parameters(1).scale


# -------------------------------------------------------------------- formats, ranges


def test_shapes_dtypes_and_ranges(samples: Samples) -> None:
    for sample in samples:
        image, labels = sample["image"], sample["segmentation"]
        assert image.shape == (3, *SIZE) and image.dtype == torch.float32
        assert labels.shape == SIZE and labels.dtype == torch.int64
        assert 0.0 <= image.min() and image.max() <= 1.0 and image.std() > 0.02
        assert torch.all((labels >= 0) & (labels < len(CLASS_NAMES)))
        for name in ATTRIBUTE_NAMES:
            assert sample[name].shape == () and sample[name].dtype == torch.float32
            assert sample[name].item() in (0.0, 1.0)


def test_every_class_appears_in_every_sample(samples: Samples) -> None:
    for sample in samples:
        assert set(sample["segmentation"].unique().tolist()) == {BACKGROUND, HAIR, SKIN}


def test_attributes_take_both_values_roughly_balanced(samples: Samples) -> None:
    for name in ATTRIBUTE_NAMES:
        rate = torch.stack([sample[name] for sample in samples]).mean().item()
        low, high = (0.1, 0.55) if name == "eyeglasses" else (0.25, 0.75)
        assert low < rate < high, (name, rate)


def test_labels_sit_where_the_face_is(dataset: SyntheticFaces, samples: Samples) -> None:
    """The face centre is skin and the area well above the head is background."""
    for index, sample in enumerate(samples):
        x, y = face_coordinates(dataset.face_parameters(index), SIZE)
        labels = sample["segmentation"].numpy()
        centre = np.unravel_index(np.argmin(x**2 + y**2), SIZE)
        assert labels[centre] == SKIN
        assert np.all(labels[(y < -1.4) & (np.abs(x) < 0.3)] == BACKGROUND)


# ------------------------------------------------------------ attributes are visible


def test_smiling_changes_only_the_mouth(people: list[FaceParameters]) -> None:
    for params in people:
        neutral, smiling = render_both(params, "smiling")
        x, y = feature_coordinates(params)
        mouth = (np.abs(x) < 0.45) & (y > 0.15) & (y < 0.8)
        changed = changed_pixels(neutral, smiling)
        assert changed.sum() >= 15 and not np.any(changed & ~mouth)
        assert np.abs(neutral["image"] - smiling["image"]).max() > 0.12
        np.testing.assert_array_equal(neutral["segmentation"], smiling["segmentation"])


def test_arched_eyebrows_change_only_the_brows(people: list[FaceParameters]) -> None:
    for params in people:
        straight, arched = render_both(params, "arched_eyebrows")
        x, y = feature_coordinates(params)
        brows = (y > -0.7) & (y < -0.15) & (np.abs(x) < 0.75)
        changed = changed_pixels(straight, arched)
        assert changed.sum() >= 10 and not np.any(changed & ~brows)
        assert np.abs(straight["image"] - arched["image"]).max() > 0.08
        np.testing.assert_array_equal(straight["segmentation"], arched["segmentation"])


def test_eyeglasses_change_only_the_eye_band(people: list[FaceParameters]) -> None:
    for params in people:
        bare, glasses = render_both(params, "eyeglasses")
        x, y = feature_coordinates(params)
        eye_band = (np.abs(y - EYE_Y) < 0.35) & (np.abs(x) < 1.1)
        changed = changed_pixels(bare, glasses)
        assert changed.sum() >= 40 and not np.any(changed & ~eye_band)
        assert np.abs(bare["image"] - glasses["image"]).max() > 0.08
        np.testing.assert_array_equal(bare["segmentation"], glasses["segmentation"])


def test_male_adds_beard_and_shortens_hair(people: list[FaceParameters]) -> None:
    for params in people:
        female, male = render_both(params, "male")
        x, y = face_coordinates(params, TOGGLE_SIZE)
        chin = (np.abs(x) < 0.3) & (y > 0.65) & (y < 0.9)
        width = params.face_width
        beside_jaw = (np.abs(x) > width + 0.04) & (np.abs(x) < width + 0.14) & (y > 0.3) & (y < 0.8)
        assert np.mean(male["segmentation"][chin] == HAIR) > 0.8
        assert np.mean(female["segmentation"][chin] == HAIR) == 0.0
        assert np.mean(female["segmentation"][beside_jaw] == HAIR) > 0.8
        assert np.mean(male["segmentation"][beside_jaw] == HAIR) < 0.1
