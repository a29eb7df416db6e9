"""Keep generated samples in memory so procedural data costs its generation time only once."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset


class MaterializedDataset(Dataset):
    """Generates every sample of ``dataset`` once, up front, and serves them from memory.

    Eager (not lazy) so that DataLoader worker processes, which fork after construction, share
    the samples instead of each regenerating them.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset
        self.samples = [dataset[i] for i in range(len(dataset))]  # type: ignore[arg-type]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.samples[index]

    def __getattr__(self, name: str):
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)
