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


#: the layers whose MACs are their weight's size times the positions they are applied at
WEIGHT_OPS = (nn.Conv2d, nn.Linear)


def analytic_conv_macs(model: nn.Module, input_size: tuple[int, int], batch: int = 1) -> int:
    """Independent cross-check: sum over conv and linear layers of output positions x weight
    size (= output elements x MACs per element), with output shapes recorded by forward hooks."""
    positions = output_positions(model, input_size, batch)
    return sum(n * model.get_submodule(name).weight.numel() for name, n in positions.items())


@torch.no_grad()
def output_positions(model: nn.Module, input_size: tuple[int, int], batch: int = 1) -> dict[str, int]:
    """Per conv/linear layer (:data:`WEIGHT_OPS`), the positions it is applied at (output
    elements / output channels, summed over calls) in one eval-mode forward of a
    (batch, 3, H, W) input; layers the forward does not run are left out."""
    positions: dict[str, int] = {}

    def recorder(name: str):
        def record(module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
            width = module.out_features if isinstance(module, nn.Linear) else module.out_channels
            positions[name] = positions.get(name, 0) + output.numel() // width

        return record

    handles = [m.register_forward_hook(recorder(n)) for n, m in model.named_modules() if isinstance(m, WEIGHT_OPS)]
    was_training = model.training
    model.eval()
    try:
        ref = next(model.parameters())
        model(torch.zeros(batch, 3, *input_size, dtype=ref.dtype, device=ref.device))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return positions
