"""Augmentation: flips and scale-crops keep labels, invalid pixels and 3-D geometry consistent."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from sparsemtl.data.augment import (
    AugmentedDataset,
    Compose,
    RandomHorizontalFlip,
    RandomScaleCrop,
    default_train_transform,
    hflip,
    sample_seed,
    scale_crop,
)

H, W = 48, 64
PLANE_NORMAL = torch.tensor([0.2, -0.4, -0.9], dtype=torch.float64)
PLANE_NORMAL = PLANE_NORMAL / PLANE_NORMAL.norm()
PLANE_OFFSET = -3.0  # plane: n . P = PLANE_OFFSET, in front of the camera


def intrinsics() -> torch.Tensor:
    return torch.tensor([[50.0, 0.0, 36.5], [0.0, 52.0, 23.7], [0.0, 0.0, 1.0]], dtype=torch.float64)


def rays(k: torch.Tensor, height: int = H, width: int = W) -> torch.Tensor:
    """(3, H, W) viewing rays ``K^-1 [u + 0.5, v + 0.5, 1]`` (z component 1)."""
    v, u = torch.meshgrid(
        torch.arange(height, dtype=torch.float64), torch.arange(width, dtype=torch.float64), indexing="ij"
    )
    pix = torch.stack((u + 0.5, v + 0.5, torch.ones_like(u))).reshape(3, -1)
    return (torch.linalg.inv(k.double()) @ pix).reshape(3, height, width)


def planar_sample() -> dict[str, torch.Tensor]:
    """A tilted plane rendered analytically, with an invalid block and void labels."""
    k = intrinsics()
    r = rays(k)
    depth = PLANE_OFFSET / torch.einsum("c,chw->hw", PLANE_NORMAL, r)
    assert (depth > 0).all()
    normals = PLANE_NORMAL.view(3, 1, 1).expand(3, H, W).clone()
    invalid = torch.zeros(H, W, dtype=torch.bool)
    invalid[5:15, 40:55] = True
    invalid[30:, :6] = True
    depth[invalid] = 0.0
    normals[:, invalid] = 0.0
    u = torch.arange(W).expand(H, W)
    seg = (u // 11).long() * 2  # labels 0, 2, 4, ..., 10 (gaps catch interpolation artefacts)
    seg[20:26, :] = 255
    image = torch.rand(3, H, W, generator=torch.Generator().manual_seed(0))
    return {
        "image": image.float(),
        "segmentation": seg,
        "depth": depth.unsqueeze(0).float(),
        "normals": normals.float(),
        "intrinsics": k.float(),
        "has_sphere": torch.tensor(1.0),
    }


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def assert_samples_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_flip_twice_is_identity():
    sample = planar_sample()
    twice = hflip(hflip(sample))
    assert_samples_equal(twice, sample)
    flip = RandomHorizontalFlip(p=1.0)
    assert_samples_equal(flip(flip(sample, gen()), gen()), sample)


def test_flip_negates_normal_x_on_valid_pixels_only_and_updates_cx():
    sample = planar_sample()
    out = hflip(sample)
    mirrored = sample["normals"].flip(-1)
    valid = mirrored.abs().sum(0) > 0
    assert torch.equal(out["normals"][0][valid], -mirrored[0][valid])
    assert torch.equal(out["normals"][1:], mirrored[1:])
    zero = out["normals"][:, ~valid]
    assert (zero == 0).all() and not torch.signbit(zero).any()  # zeros stay +0, not -0
    assert torch.equal(out["depth"], sample["depth"].flip(-1))
    assert torch.equal(out["segmentation"], sample["segmentation"].flip(-1))
    assert out["intrinsics"][0, 2].item() == pytest.approx(W - 36.5)
    assert out["has_sphere"] is sample["has_sphere"]


def test_flip_probability_zero_and_input_untouched():
    sample = planar_sample()
    copy = {k: v.clone() for k, v in sample.items()}
    assert_samples_equal(RandomHorizontalFlip(p=0.0)(sample, gen()), sample)
    hflip(sample)
    scale_crop(sample, 1.5, (3, 5, 32, 43))
    assert_samples_equal(sample, copy)


def test_scale_crop_with_unit_scale_is_identity():
    sample = planar_sample()
    out = RandomScaleCrop(scales=(1.0,))(sample, gen(3))
    assert_samples_equal(out, sample)


@pytest.mark.parametrize("scale,window", [(1.5, (7, 11, 32, 43)), (1.2, (0, 10, 40, 53)), (2.0, (24, 32, 24, 32))])
def test_depth_divided_by_scale_at_nearest_sampled_pixels(scale, window):
    sample = planar_sample()
    top, left, h, w = window
    out = scale_crop(sample, scale, window)
    crop = sample["depth"][:, top : top + h, left : left + w]
    # Independent reference: PyTorch's pixel-centre nearest resampling.
    expected = F.interpolate(crop.unsqueeze(0), size=(H, W), mode="nearest-exact")[0] / scale
    assert torch.equal(out["depth"], expected)
    # Each output pixel is some source pixel of the window divided by s (no interpolation).
    gap = (out["depth"].reshape(-1, 1) * scale - crop.reshape(1, -1)).abs().min(dim=1).values
    assert gap.max() < 1e-5


def test_labels_stay_in_label_set_and_invalid_stays_invalid():
    sample = planar_sample()
    transform = RandomScaleCrop(scales=(1.2, 1.5, 1.7))
    in_labels = set(sample["segmentation"].unique().tolist())
    seen_void = False
    for seed in range(20):
        out = transform(sample, gen(seed))
        assert set(out["segmentation"].unique().tolist()) <= in_labels
        assert out["segmentation"].dtype == torch.int64
        seen_void |= bool((out["segmentation"] == 255).any())
        depth_invalid = out["depth"][0] == 0
        normals_invalid = out["normals"].abs().sum(0) == 0
        assert torch.equal(depth_invalid, normals_invalid)  # co-located before, co-located after
        valid_norm = out["normals"][:, ~normals_invalid].norm(dim=0)
        assert torch.allclose(valid_norm, torch.ones_like(valid_norm), atol=1e-5)  # directions untouched
        assert out["image"].min() >= 0 and out["image"].max() <= 1
        assert out["image"].shape == (3, H, W) and out["depth"].shape == (1, H, W)
        assert out["has_sphere"] is sample["has_sphere"]
    assert seen_void


def fitted_plane_angle_deg(sample: dict[str, torch.Tensor]) -> tuple[float, float]:
    """(angle between the fitted plane of the back-projected depth and the normals map,
    max spread of the valid normals), both in degrees."""
    k = sample["intrinsics"].double()
    depth = sample["depth"][0].double()
    valid = depth > 0
    points = (depth * rays(k))[:, valid].T  # (N, 3)
    centred = points - points.mean(0)
    fitted = torch.linalg.svd(centred, full_matrices=False).Vh[-1]
    normals = sample["normals"].double()[:, valid].T
    assert torch.equal(valid, sample["normals"].abs().sum(0) > 0)
    mean = normals.mean(0)
    mean = mean / mean.norm()
    spread = torch.rad2deg(torch.arccos((normals @ mean).clamp(-1, 1))).max().item()
    angle = math.degrees(math.acos(min(1.0, abs(float(fitted @ mean)))))
    return angle, spread


def test_planar_scene_is_consistent_before_augmentation():
    angle, spread = fitted_plane_angle_deg(planar_sample())
    assert angle < 0.01 and spread < 0.05


@pytest.mark.parametrize("seed", range(8))
def test_flip_and_scale_crop_keep_depth_and_normals_geometrically_consistent(seed):
    sample = planar_sample()
    transform = Compose([RandomScaleCrop(scales=(1.2, 1.5, 2.0)), RandomHorizontalFlip(p=0.5)])
    out = transform(sample, gen(seed))
    angle, spread = fitted_plane_angle_deg(out)
    assert spread < 0.05  # nearest sampling: the normals are still the one plane normal
    assert angle < 0.5, f"augmented depth's plane is {angle:.3f} deg off the augmented normals"


def test_consistency_check_detects_a_flip_that_forgets_the_normals():
    out = hflip(planar_sample())
    out["normals"][0] = -out["normals"][0]  # undo the negation: inconsistent sample
    assert fitted_plane_angle_deg(out)[0] > 10


def test_consistency_check_detects_stale_intrinsics():
    sample = planar_sample()
    flipped = hflip(sample)
    flipped["intrinsics"] = sample["intrinsics"]  # cx not mirrored (principal point is off-centre)
    assert fitted_plane_angle_deg(flipped)[0] > 0.5
    cropped = scale_crop(sample, 1.5, (8, 10, 32, 43))
    cropped["intrinsics"] = sample["intrinsics"]
    assert fitted_plane_angle_deg(cropped)[0] > 1


def test_forced_flip_then_crop_has_expected_intrinsics():
    sample = planar_sample()
    out = scale_crop(hflip(sample), 1.5, (8, 10, 32, 43))
    k = out["intrinsics"].double()
    sx, sy = W / 43, H / 32
    expected = torch.tensor([[50 * sx, 0, (W - 36.5 - 10) * sx], [0, 52 * sy, (23.7 - 8) * sy], [0, 0, 1]])
    assert torch.allclose(k, expected.double(), atol=1e-4)
    assert fitted_plane_angle_deg(out)[0] < 0.5


def test_transforms_are_deterministic_given_the_generator():
    sample = planar_sample()
    transform = default_train_transform()
    assert_samples_equal(transform(sample, gen(5)), transform(sample, gen(5)))
    outputs = [transform(sample, gen(s))["depth"] for s in range(10)]
    assert any(not torch.equal(outputs[0], o) for o in outputs[1:])


def test_unknown_dense_key_raises_and_custom_kinds_work():
    sample = planar_sample()
    sample["seg13"] = sample.pop("segmentation")
    with pytest.raises(ValueError, match="seg13"):
        hflip(sample)
    kinds = {"seg13": "segmentation", "depth": "depth", "normals": "normals"}
    out = RandomHorizontalFlip(p=1.0, kinds=kinds)(sample, gen())
    assert torch.equal(out["seg13"], sample["seg13"].flip(-1))
    with pytest.raises(ValueError):
        RandomScaleCrop(scales=(0.5,))
    with pytest.raises(ValueError):
        RandomHorizontalFlip(p=1.5)


class _ListDataset(torch.utils.data.Dataset):
    def __init__(self, n: int) -> None:
        self.items = [planar_sample() for _ in range(n)]
        self.task_specs = {"depth": None}

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        return self.items[index]


def test_augmented_dataset_is_reproducible_per_epoch_and_index():
    base = _ListDataset(4)
    a = AugmentedDataset(base, default_train_transform(), seed=7)
    b = AugmentedDataset(base, default_train_transform(), seed=7)
    # Order of access (as with several DataLoader workers) does not matter.
    first = [a[i] for i in range(4)]
    for i in reversed(range(4)):
        assert_samples_equal(b[i], first[i])
    a.set_epoch(1)
    assert any(not torch.equal(a[i]["depth"], first[i]["depth"]) for i in range(4))
    a.set_epoch(0)
    assert_samples_equal(a[2], first[2])
    assert a.task_specs is base.task_specs and len(a) == 4
    assert sample_seed(7, 0, 1) != sample_seed(7, 1, 0) != sample_seed(8, 0, 0)


def test_augmented_dataset_with_dataloader_workers_matches_serial():
    ds = AugmentedDataset(_ListDataset(4), default_train_transform(), seed=3)
    serial = [ds[i]["depth"] for i in range(4)]
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2, shuffle=False)
    batched = torch.cat([batch["depth"] for batch in loader])
    assert torch.equal(batched, torch.stack(serial))
