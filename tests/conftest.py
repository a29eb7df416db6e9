"""Shared fixtures: tiny configs that train in seconds on 2 CPU cores."""

from __future__ import annotations

import pytest
import torch

from sparsemtl.config import Config, load_config

TINY = [
    "model.encoder=resnet10t",
    "model.head_channels=16",
    "model.aspp_rates=[1,2]",
    "model.classifier_channels=[8,8]",
    "data.image_size=[32,32]",
    "data.num_train=16",
    "data.num_val=8",
    "data.num_test=8",
    "data.batch_size=8",
    "data.eval_batch_size=8",
    "train.epochs=2",
    "train.progress=false",
    "train.device=cpu",
]


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(2)


@pytest.fixture
def tiny_config(tmp_path):
    """Build a tiny, fast config writing into a temporary folder; extra overrides win."""

    def make(*overrides: str) -> Config:
        return load_config(None, TINY + [f"train.out_dir={tmp_path}"] + list(overrides))

    return make
