"""Geometry-aware training augmentation for multi-task dense samples.

Every transform maps ``(sample, generator) -> new sample`` and draws its randomness only from
the ``torch.Generator`` it is given, so a transform is a pure function of the sample and the
generator state. :class:`AugmentedDataset` derives one generator per ``(seed, epoch, index)``,
which keeps runs reproducible whatever the number of DataLoader workers.

Sample format (see :mod:`sparsemtl.data.synthetic_scenes`): ``image`` float (3, H, W) in
[0, 1]; one entry per target, e.g. segmentation int64 (H, W) with 255 void, depth (1, H, W)
metres with 0 invalid, normals (3, H, W) camera-frame unit vectors (x right, y down, z
forward), all-zero invalid; optional ``intrinsics`` (3, 3) in the pixel-centre convention (pixel
``u`` is sampled at ``u + 0.5``). How a dense target is mirrored, resampled and changed by a
zoom is its task kind's business (:class:`sparsemtl.tasks.TaskKind` ``flip``,
``interpolation``, ``zoom``); entries that are not dense maps (attribute scalars, ids) pass
through untouched.

Geometry. A crop of the window ``rows [top, top + h), cols [left, left + w)`` resized to
(H, W) is the image of the same scene seen by a camera with ``fx' = fx * W / w``,
``cx' = (cx - left) * W / w`` (same for y). Dividing depth by the zoom factor ``s`` on top of
that (MTAN / LibMTL: "zooming in = moving closer") scales the whole scene by ``1 / s``, a
similarity: back-projected points stay on the same (scaled) surfaces and normals are
unchanged. A horizontal flip is the image of the mirrored scene (``X -> -X``) with
``cx' = W - cx``, so normals' x component is negated. Hence depth, normals and the updated
intrinsics stay mutually consistent after any composition of these transforms.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from ..tasks import TaskKind, get_task

Sample = dict[str, Tensor]
Transform = Callable[[Mapping[str, Tensor], torch.Generator], Sample]

IMAGE_KEY = "image"
INTRINSICS_KEY = "intrinsics"


def _kind_of(key: str, kinds: Mapping[str, str] | None) -> TaskKind | None:
    """The task kind of sample entry ``key``: from ``kinds``, else the kind named like the key."""
    name = (kinds or {}).get(key, key)
    try:
        return get_task(name)
    except KeyError:
        return None


def _dense_keys(
    sample: Mapping[str, Tensor], kinds: Mapping[str, str] | None
) -> tuple[tuple[int, int], dict[str, TaskKind]]:
    """The (H, W) of ``sample`` and its dense targets (key -> kind); unknown dense tensors raise."""
    if IMAGE_KEY not in sample:
        raise KeyError(f"sample has no {IMAGE_KEY!r} entry (keys: {sorted(sample)})")
    image = sample[IMAGE_KEY]
    if image.ndim != 3:
        raise ValueError(f"image must be (C, H, W), got shape {tuple(image.shape)}")
    size = (int(image.shape[-2]), int(image.shape[-1]))
    dense: dict[str, TaskKind] = {}
    for key, value in sample.items():
        if key in (IMAGE_KEY, INTRINSICS_KEY) or not isinstance(value, Tensor):
            continue
        kind = _kind_of(key, kinds)
        if kind is not None and kind.head == "dense":
            if tuple(value.shape[-2:]) != size:
                raise ValueError(f"{key!r} has shape {tuple(value.shape)}, expected (..., {size[0]}, {size[1]})")
            dense[key] = kind
        elif kind is None and value.ndim >= 2 and tuple(value.shape[-2:]) == size:
            raise ValueError(
                f"sample entry {key!r} looks like a dense map but its task kind is unknown; "
                f"pass kinds={{{key!r}: <kind>}} to the transform"
            )
    return size, dense


class RandomHorizontalFlip:
    """Mirror the sample left-right with probability ``p``.

    Every dense target is mirrored by its kind (e.g. normals also negate x); intrinsics, if
    present, get ``cx' = W - cx`` and a negated skew. ``kinds`` maps sample keys to task kinds
    (default: keys named after their kind).
    """

    def __init__(self, p: float = 0.5, kinds: Mapping[str, str] | None = None) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be in [0, 1], got {p}")
        self.p = float(p)
        self.kinds = dict(kinds or {})

    def __call__(self, sample: Mapping[str, Tensor], generator: torch.Generator) -> Sample:
        draw = float(torch.rand((), generator=generator))  # always drawn: stream length is fixed
        if draw >= self.p:
            return dict(sample)
        return hflip(sample, self.kinds)

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


def hflip(sample: Mapping[str, Tensor], kinds: Mapping[str, str] | None = None) -> Sample:
    """Deterministic left-right mirror of ``sample`` (see :class:`RandomHorizontalFlip`)."""
    (_, width), dense = _dense_keys(sample, kinds)
    out = dict(sample)
    out[IMAGE_KEY] = sample[IMAGE_KEY].flip(-1)
    for key, kind in dense.items():
        out[key] = kind.flip(sample[key])
    if INTRINSICS_KEY in sample:
        k = sample[INTRINSICS_KEY].clone()
        k[0, 2] = width - k[0, 2]
        k[0, 1] = -k[0, 1]
        out[INTRINSICS_KEY] = k
    return out


class RandomScaleCrop:
    """MTAN / LibMTL scale augmentation: zoom in by a random ``s`` drawn from ``scales``.

    A window of size ``(round(H / s), round(W / s))`` at a uniformly random position is
    resized back to (H, W): the image bilinearly, each dense target as its kind says
    (``interpolation``: nearest neighbour, pixel-centre aligned, for segmentation / depth /
    normals / edges, so labels never leave the original label set and void / invalid pixels
    stay exactly 255 / 0), then its values changed by the kind's ``zoom`` (depth is divided by
    ``s``: zooming in = moving closer; 0 stays 0; normals keep their direction). Intrinsics, if
    present, become those of the crop-and-resize camera (``fx' = fx * W / w``,
    ``cx' = (cx - left) * W / w``).
    """

    def __init__(self, scales: Sequence[float] = (1.0, 1.2, 1.5), kinds: Mapping[str, str] | None = None) -> None:
        scales = tuple(float(s) for s in scales)
        if not scales or any(not np.isfinite(s) or s < 1.0 for s in scales):
            raise ValueError(f"scales must be a non-empty sequence of finite values >= 1, got {scales}")
        self.scales = scales
        self.kinds = dict(kinds or {})

    def __call__(self, sample: Mapping[str, Tensor], generator: torch.Generator) -> Sample:
        height, width = _dense_keys(sample, self.kinds)[0]
        scale = self.scales[int(torch.randint(len(self.scales), (), generator=generator))]
        crop_h = min(height, max(1, round(height / scale)))
        crop_w = min(width, max(1, round(width / scale)))
        top = int(torch.randint(height - crop_h + 1, (), generator=generator))
        left = int(torch.randint(width - crop_w + 1, (), generator=generator))
        return scale_crop(sample, scale, (top, left, crop_h, crop_w), self.kinds)

    def __repr__(self) -> str:
        return f"RandomScaleCrop(scales={self.scales})"


def _nearest_index(start: int, crop: int, size: int) -> Tensor:
    """Source indices of ``size`` output pixels resampled from ``[start, start + crop)``.

    Output pixel ``i`` has its centre at ``i + 0.5``, i.e. at ``start + (i + 0.5) * crop / size``
    in the source, whose nearest pixel is the floor of that (PyTorch's ``nearest-exact``).
    """
    index = torch.floor((torch.arange(size, dtype=torch.float64) + 0.5) * (crop / size)).long()
    return start + index.clamp_(0, crop - 1)


def scale_crop(
    sample: Mapping[str, Tensor],
    scale: float,
    window: tuple[int, int, int, int],
    kinds: Mapping[str, str] | None = None,
) -> Sample:
    """Crop ``window = (top, left, height, width)``, resize back, let each kind change its
    values for the zoom ``scale``."""
    (height, width), dense = _dense_keys(sample, kinds)
    top, left, crop_h, crop_w = window
    if not (
        0 <= top and 0 <= left and crop_h >= 1 and crop_w >= 1 and top + crop_h <= height and left + crop_w <= width
    ):
        raise ValueError(f"crop window {window} does not fit in an image of size {(height, width)}")
    if scale <= 0:
        raise ValueError(f"scale must be positive, got {scale}")
    out = dict(sample)
    identity = (top, left, crop_h, crop_w) == (0, 0, height, width)

    image = sample[IMAGE_KEY]
    if not identity:
        window_img = image[:, top : top + crop_h, left : left + crop_w]
        resized = F.interpolate(
            window_img.unsqueeze(0).float(), size=(height, width), mode="bilinear", align_corners=False
        )[0]
        image = resized.to(image.dtype) if image.dtype.is_floating_point else resized.round().to(image.dtype)
    out[IMAGE_KEY] = image

    rows = _nearest_index(top, crop_h, height)
    cols = _nearest_index(left, crop_w, width)
    for key, kind in dense.items():
        value = sample[key]
        if not identity and kind.interpolation == "nearest":
            value = value[..., rows, :][..., cols]
        elif not identity:
            value = _bilinear(value[..., top : top + crop_h, left : left + crop_w], (height, width))
        out[key] = kind.zoom(value, scale)

    if INTRINSICS_KEY in sample:
        k = sample[INTRINSICS_KEY]
        k64 = k.double().clone()
        sx, sy = width / crop_w, height / crop_h
        k64[0, :] = torch.stack((k64[0, 0] * sx, k64[0, 1] * sx, (k64[0, 2] - left) * sx))
        k64[1, :] = torch.stack((k64[1, 0] * sy, k64[1, 1] * sy, (k64[1, 2] - top) * sy))
        out[INTRINSICS_KEY] = k64.to(k.dtype)
    return out


def _bilinear(window: Tensor, size: tuple[int, int]) -> Tensor:
    """A (..., h, w) float map resized to ``size`` (pixel-centre aligned)."""
    lead = window.shape[:-2]
    flat = window.reshape(1, -1, *window.shape[-2:]).float()
    resized = F.interpolate(flat, size=size, mode="bilinear", align_corners=False)
    return resized.reshape(*lead, *size).to(window.dtype)


class Compose:
    """Apply ``transforms`` in order, all drawing from the same generator."""

    def __init__(self, transforms: Sequence[Transform]) -> None:
        self.transforms = list(transforms)

    def __call__(self, sample: Mapping[str, Tensor], generator: torch.Generator) -> Sample:
        out = dict(sample)
        for transform in self.transforms:
            out = transform(out, generator)
        return out

    def __repr__(self) -> str:
        return f"Compose({self.transforms!r})"


def default_train_transform(kinds: Mapping[str, str] | None = None) -> Compose:
    """The MTAN / LibMTL training augmentation: scale-crop in {1, 1.2, 1.5}, then a 50% flip."""
    return Compose([RandomScaleCrop(kinds=kinds), RandomHorizontalFlip(kinds=kinds)])


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The 63-bit generator seed of sample ``index`` in ``epoch`` (a SeedSequence hash)."""
    if min(seed, epoch, index) < 0:
        raise ValueError(f"seed, epoch and index must be >= 0, got {(seed, epoch, index)}")
    state = np.random.SeedSequence([seed, epoch, index]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))


class AugmentedDataset(Dataset):
    """Applies ``transform`` to ``dataset[index]`` with a generator seeded by ``(seed, epoch, index)``.

    The generator seed is :func:`sample_seed` of ``(seed, self.epoch, index)`` — a hash, so
    neighbouring indices / epochs get unrelated streams. It depends neither on the worker that
    loads the sample nor on the order samples are requested, so a run is reproducible with
    any ``num_workers``. Call :meth:`set_epoch` before iterating each epoch to get fresh
    augmentations; with ``persistent_workers=True`` the workers hold copies of the dataset and
    do not see the new epoch, so use non-persistent workers (the default) with ``set_epoch``.
    """

    def __init__(self, dataset: Dataset, transform: Transform, seed: int = 0) -> None:
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.dataset = dataset
        self.transform = transform
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Sample:
        if index < 0:
            index += len(self)
        generator = torch.Generator().manual_seed(sample_seed(self.seed, self.epoch, index))
        return self.transform(self.dataset[index], generator)

    def __getattr__(self, name: str):
        # Forward dataset attributes (task_specs, image_size, ...) so the wrapper is a drop-in.
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)
