"""``synthetic-faces``: procedural faces (work in progress; replaced shortly)."""

from __future__ import annotations

from torch.utils.data import Dataset


class SyntheticFaces(Dataset):
    """Placeholder until the renderer lands."""
