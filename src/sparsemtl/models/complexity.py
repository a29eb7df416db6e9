"""Model size and compute: parameter counts and multiply-accumulates (MACs).

A property of a model, so it lives with the models: pruning reports it before/after and
evaluation next to latency.

MACs come from ``torch.utils.flop_counter.FlopCounterMode``, which counts the aten
convolutions and matmuls however they are called (it reports FLOPs = 2 x MACs).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_macs(model: nn.Module, input_size: tuple[int, int], batch: int = 1) -> int:
    """MACs of one eval-mode forward on a (batch, 3, H, W) input."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    with FlopCounterMode(display=False) as counter:
        model(torch.zeros(batch, 3, *input_size, device=device))
    model.train(was_training)
    return counter.get_total_flops() // 2


def analytic_conv_macs(model: nn.Module, input_size: tuple[int, int], batch: int = 1) -> int:
    """Independent cross-check: sum over conv and linear layers of output elements x MACs per
    element, with output shapes recorded by forward hooks."""
    total = 0

    def conv_hook(module: nn.Conv2d, _inputs, output: torch.Tensor) -> None:
        nonlocal total
        per_output = (module.in_channels // module.groups) * module.kernel_size[0] * module.kernel_size[1]
        total += output.numel() * per_output

    def linear_hook(module: nn.Linear, _inputs, output: torch.Tensor) -> None:
        nonlocal total
        total += output.numel() * module.in_features

    handles = [m.register_forward_hook(conv_hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    handles += [m.register_forward_hook(linear_hook) for m in model.modules() if isinstance(m, nn.Linear)]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            device = next(model.parameters()).device
            model(torch.zeros(batch, 3, *input_size, device=device))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return total
