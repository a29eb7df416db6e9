"""BatchNorm folding: merge each eval-mode BatchNorm into the conv that feeds it.

Latency comparisons must run on folded models: an unfolded BN is a separate pass over the
activations, a fixed cost that does not shrink with the MACs and would blur the speed-up of a
pruned model (README, "Shrinking: physical pruning and honest measurement"). Both models of a comparison are folded.

Pairs are found from the model graph (:func:`sparsemtl.models.graph.model_graph`, the traced
graph shared with the sparsity report) and one hooked forward, so the wiring inside timm
``features_only`` wrappers and torchvision's ASPP is seen as executed, not guessed from the module
order. The graph is the original model's (cached, often already traced for the sparsity report);
it answers for the copy being folded by module name. A pair is folded only where folding is exact:
- the BN's input *is* the conv's output tensor, not modified in place in between (forward hooks
  compare the tensor object and its version counter);
- the BN is the conv's only consumer (Torch-Pruning's dependency graph: exactly one node reads
  the conv; for timm's ``BatchNormAct2d`` that node is the graph's anonymous batch-norm op);
- each module runs once per forward (a shared module would change its other uses);
- the BN normalises with running statistics in eval mode.
As a last guard the folded copy is compared with the original on the trace input.
"""

from __future__ import annotations

import copy
from collections import Counter

import torch
from timm.layers import BatchNormAct2d
from torch import nn

from ..models.graph import ModelGraph, model_graph, trace_input


def fold_batchnorm(model: nn.Module, example_inputs: torch.Tensor | None = None) -> nn.Module:
    """An eval-mode deep copy with every foldable BatchNorm2d merged into its conv and replaced by
    ``nn.Identity()`` (timm's ``BatchNormAct2d`` by its activation); the original keeps its weights
    and modes (it only gains its cached model graph).

    ``example_inputs`` is the trace input (default: one random 64x64 RGB image); BNs the trace
    does not reach, or that cannot be folded exactly, stay in the copy.
    """
    ref = next(model.parameters())
    x = torch.rand(1, 3, 64, 64) if example_inputs is None else example_inputs
    x = x.to(device=ref.device, dtype=ref.dtype)
    graph = model_graph(model, x)
    folded = copy.deepcopy(model).eval()
    names = {module: name for name, module in folded.named_modules()}
    record = _ForwardRecord()
    expected = record.run(folded, x)
    for conv, bn in _exact_pairs(graph, record, names):
        _fold_into_conv(conv, bn)
        _replace(folded, names[bn], _without_norm(bn))
    with torch.no_grad():
        _check_close(expected, folded(x))
    return folded


def foldable_pairs(
    model: nn.Module, example_inputs: torch.Tensor | None = None
) -> list[tuple[nn.Conv2d, nn.BatchNorm2d]]:
    """The (conv, BN) pairs of ``model`` whose folding leaves every output unchanged
    (``example_inputs`` as for :func:`fold_batchnorm`)."""
    x = trace_input(model, example_inputs)
    graph = model_graph(model, x)
    record = _ForwardRecord()
    modes = [(m, m.training) for m in model.modules()]
    try:
        record.run(model.eval(), x)
    finally:
        for module, training in modes:
            module.training = training
    return _exact_pairs(graph, record, {module: name for name, module in model.named_modules()})


def _exact_pairs(
    graph: ModelGraph, record: _ForwardRecord, names: dict[nn.Module, str]
) -> list[tuple[nn.Conv2d, nn.BatchNorm2d]]:
    """The recorded (conv, BN) pairs that pass every exactness test; ``record`` ran a model with
    the graph's structure whose modules are called ``names``."""
    pairs = []
    for bn, conv in record.bn_input_from.items():
        node = graph.node(names[conv])
        sole_reader = node is not None and len(set(node.outputs)) == 1
        if sole_reader and record.calls[conv] == record.calls[bn] == 1 and _foldable_norm(bn):
            pairs.append((conv, bn))
    return pairs


class _ForwardRecord:
    """Forward hooks noting how often each conv and BN runs and which conv output each BN reads
    unmodified."""

    def __init__(self) -> None:
        self.calls: Counter[nn.Module] = Counter()
        self.bn_input_from: dict[nn.BatchNorm2d, nn.Conv2d] = {}
        self._produced: dict[int, tuple[torch.Tensor, int, nn.Conv2d]] = {}

    def run(self, model: nn.Module, x: torch.Tensor) -> object:
        """``model(x)`` without grad, recorded; returns the outputs."""
        handles = []
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                handles.append(m.register_forward_hook(self._conv_ran))
            elif isinstance(m, nn.BatchNorm2d):
                handles.append(m.register_forward_pre_hook(self._bn_runs))
        try:
            with torch.no_grad():
                return model(x)
        finally:
            for handle in handles:
                handle.remove()
            self._produced.clear()

    def _conv_ran(self, conv: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
        self.calls[conv] += 1
        self._produced[id(output)] = (output, output._version, conv)

    def _bn_runs(self, bn: nn.Module, inputs: tuple) -> None:
        self.calls[bn] += 1
        x = inputs[0]
        output, version, conv = self._produced.get(id(x), (None, -1, None))
        if output is x and x._version == version:
            self.bn_input_from[bn] = conv


def _foldable_norm(bn: nn.BatchNorm2d) -> bool:
    """Plain ``nn.BatchNorm2d`` or timm's ``BatchNormAct2d`` (for other subclasses it is not known
    what their forward adds), normalising with running statistics."""
    plain = type(bn) in (nn.BatchNorm2d, BatchNormAct2d)
    return plain and bn.track_running_stats and bn.running_var is not None


def _check_close(expected: object, actual: object) -> None:
    """Folding is exact up to float rounding; anything more means a pair was wrongly folded."""
    expected = expected if isinstance(expected, dict) else {"output": expected}
    actual = actual if isinstance(actual, dict) else {"output": actual}
    for key, value in expected.items():
        tol = 1e-4 * float(value.abs().max()) + 1e-6
        if not torch.allclose(actual[key], value, rtol=0.0, atol=tol):
            raise RuntimeError(f"BatchNorm folding changed output {key!r}: please report this model")


@torch.no_grad()
def _fold_into_conv(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """BN(W x + b) = s * (W x + b - mean) + beta with s = gamma / sqrt(var + eps), so the conv gets
    W' = s * W and b' = s * (b - mean) + beta. Computed in float64, stored in the conv's dtype."""
    mean, var = bn.running_mean.double(), bn.running_var.double()
    gamma = bn.weight.double() if bn.affine else torch.ones_like(var)
    beta = bn.bias.double() if bn.affine else torch.zeros_like(var)
    bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(var)
    scale = gamma * torch.rsqrt(var + bn.eps)
    weight = conv.weight.double() * scale.view(-1, 1, 1, 1)
    dtype, grad = conv.weight.dtype, conv.weight.requires_grad
    conv.weight = nn.Parameter(weight.to(dtype), requires_grad=grad)
    conv.bias = nn.Parameter((scale * (bias - mean) + beta).to(dtype), requires_grad=grad)


def _without_norm(bn: nn.BatchNorm2d) -> nn.Module:
    """What is left of a folded BN: nothing, or the dropout and activation of a ``BatchNormAct2d``."""
    return nn.Sequential(bn.drop, bn.act) if isinstance(bn, BatchNormAct2d) else nn.Identity()


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent), attr, new)
