"""What the file-based datasets (NYU-v2, CelebAMask-HQ) share: reading an image file into an
array, resizing a sample's tensors, and keeping the samples that load."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..errors import DataError, one_line


def read_image(path: Path, mode: str | None) -> np.ndarray:
    try:
        with Image.open(path) as img:
            img.load()
            return np.asarray(img.convert(mode) if mode else img)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"{path}: corrupt or truncated image ({one_line(exc)})") from None


def keep_loadable(
    ids: list[str], load: Callable[[str], Any], label: str | None = None
) -> tuple[list[str], list[tuple[str, str]]]:
    """Load (or check) every sample once: the ids that load, and (id, message) for those that raise
    DataError. With a ``label`` (the ``skip_bad_samples`` option of the loaders), one warning says
    how many were skipped, and a DataError says when none is left; without, the caller reports."""
    good, skipped = [], []
    for sample_id in ids:
        try:
            load(sample_id)
        except DataError as exc:
            skipped.append((sample_id, one_line(exc)))
        else:
            good.append(sample_id)
    if skipped and label is not None:
        if not good:
            raise DataError(f"{label}: all {len(ids)} samples are bad; first: {skipped[0][1]}")
        warnings.warn(
            f"{label}: skipped {len(skipped)} bad sample(s) of {len(ids)}; first: {skipped[0][1]}", stacklevel=3
        )
    return good, skipped


def resize_sample(
    sample: dict[str, torch.Tensor], size: tuple[int, int], targets: bool = True
) -> dict[str, torch.Tensor]:
    """Image bilinear; labels, depth and normals nearest (only with ``targets``), so void/invalid
    pixels stay exactly invalid."""
    out = {}
    for name, value in sample.items():
        if name != "image" and not targets:
            out[name] = value
            continue
        batch = value.unsqueeze(0).unsqueeze(0) if value.ndim == 2 else value.unsqueeze(0)
        if name == "image":
            resized = F.interpolate(batch, size=size, mode="bilinear", align_corners=False).clamp_(0.0, 1.0)
        else:
            resized = F.interpolate(batch.float(), size=size, mode="nearest").to(value.dtype)
        out[name] = resized[0, 0] if value.ndim == 2 else resized[0]
    return out
