"""The traced dependency graph of a model (Torch-Pruning): which layers feed which, as executed.

Used wherever the wiring of a model matters: coupled channel sets (:mod:`sparsemtl.sparsity.channels`),
pruning and its verification, and BatchNorm folding (:mod:`sparsemtl.evaluation.fold`).
"""

from __future__ import annotations

import torch
import torch_pruning as tp
from torch import nn


def dependency_graph(model: nn.Module, example_inputs: torch.Tensor | None = None) -> tp.DependencyGraph:
    """Trace ``model`` with Torch-Pruning.

    Tracing needs autograd, so grad is enabled and the input requires grad (frozen layers still
    get a ``grad_fn``). Torch-Pruning leaves the model in eval mode; every submodule's flag is
    restored. The input is passed as a 1-tuple because Torch-Pruning first tries
    ``model(*example_inputs)``, which would unpack a tensor along its batch dimension.
    """
    ref = next(model.parameters())
    x = torch.rand(1, 3, 64, 64, dtype=ref.dtype) if example_inputs is None else example_inputs
    x = x.detach().to(ref.device).requires_grad_(x.is_floating_point())
    modes = [(m, m.training) for m in model.modules()]
    try:
        with torch.enable_grad():
            return tp.DependencyGraph().build_dependency(model, example_inputs=(x,), verbose=False)
    finally:
        for module, training in modes:
            module.training = training
