"""Base class of the built-in procedural datasets: every sample is a pure function of
(seed, index, image_size), so runs are reproducible without any file."""

from __future__ import annotations

import operator
from typing import Any, ClassVar

import numpy as np
import torch
from torch.utils.data import Dataset

from ..tasks.spec import TaskSpec

MIN_IMAGE_SIDE = 16


class ProceduralDataset(Dataset):
    """Draws a parameter object per index from its own random stream, then renders it.

    Subclasses set ``task_specs`` and ``rng_salt`` (kept distinct so two datasets never share
    random streams) and implement :meth:`sample_parameters` and :meth:`render`. The parameters
    do not depend on ``image_size``: one index rendered at two sizes shows the same content.
    """

    task_specs: ClassVar[dict[str, TaskSpec]]
    rng_salt: ClassVar[int]

    def __init__(self, num_samples: int, image_size: tuple[int, int] = (64, 64), seed: int = 0) -> None:
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        if len(image_size) != 2 or min(image_size) < MIN_IMAGE_SIDE:
            raise ValueError(f"image_size must be (height, width), both >= {MIN_IMAGE_SIDE}, got {image_size}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.num_samples = num_samples
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.seed = seed

    def __len__(self) -> int:
        return self.num_samples

    def parameters(self, index: int) -> Any:
        """The random content behind sample ``index`` (no negative indexing)."""
        index = operator.index(index)
        if not 0 <= index < self.num_samples:
            raise IndexError(f"index {index} out of range for dataset of length {self.num_samples}")
        return self.sample_parameters(np.random.default_rng([self.rng_salt, self.seed, index]))

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        arrays = self.render(self.parameters(index), self.image_size)
        return {name: torch.from_numpy(value) for name, value in arrays.items()}

    @staticmethod
    def sample_parameters(rng: np.random.Generator) -> Any:
        raise NotImplementedError

    @staticmethod
    def render(params: Any, image_size: tuple[int, int]) -> dict[str, np.ndarray]:
        raise NotImplementedError
