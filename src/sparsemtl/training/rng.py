"""Capture and restore every random number generator a training run draws from, as plain
tensors and containers (so the state fits a ``weights_only`` checkpoint)."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def rng_state(loader_generator: torch.Generator | None = None) -> dict[str, Any]:
    """Python, NumPy, torch CPU, every CUDA device, and the data loader's shuffling generator."""
    version, internal, gauss = random.getstate()
    np_state = np.random.get_state(legacy=False)
    return {
        "python": {"version": version, "internal": torch.tensor(internal, dtype=torch.int64), "gauss": gauss},
        "numpy": {
            "bit_generator": np_state["bit_generator"],
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "loader": loader_generator.get_state() if loader_generator is not None else None,
    }


def set_rng_state(state: dict[str, Any], loader_generator: torch.Generator | None = None) -> None:
    """Inverse of :func:`rng_state` (CUDA states only when the same devices exist)."""
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["internal"].cpu().tolist()), py["gauss"]))
    npst = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": npst["bit_generator"],
            "state": {"key": npst["key"].cpu().numpy().astype(np.uint32), "pos": npst["pos"]},
            "has_gauss": npst["has_gauss"],
            "gauss": npst["gauss"],
        }
    )
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    if loader_generator is not None and state["loader"] is not None:
        loader_generator.set_state(state["loader"].cpu())
