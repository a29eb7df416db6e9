"""A latency model of a network's layers, measured once on the target device.

A millisecond budget needs the latency of many candidate pruned models during training, far too
often to prune and time each one. As latency-aware pruning work does, we time every conv and
linear layer alone, at its own input size, on a grid of kept input x output widths (fractions of
its original widths), and predict a pruned model as the sum of its layers' times, interpolated
bilinearly in the grid, plus the rest of the network (activations, additions, resampling: the
dense model's measured latency minus its layers' sum), held constant; where the layers alone sum
to more than the network (small layers timed alone pay call overhead and cold caches), their
times are scaled to the network's instead. Layers with the same
configuration share one table. Holding the rest constant overestimates a pruned model's latency
slightly, so the prediction errs on the side of meeting the budget; the trainer measures the real
pruned model at the end of the run.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.benchmark import Timer

from ..models.complexity import WEIGHT_OPS
from ..pruning.cost import LayerWidth
from .fold import fold_batchnorm
from .latency import fixed_threads, measure_latency

#: kept width as a fraction of the original, per axis of a layer's table
FRACTIONS = (0.125, 0.25, 0.5, 0.75, 1.0)


@dataclass(frozen=True)
class LayerTable:
    """Milliseconds of one layer configuration at ``inputs`` x ``outputs`` kept widths
    (``times[i][j]``); a depthwise conv has one axis (inputs == outputs, ``times[i][0]``)."""

    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    times: tuple[tuple[float, ...], ...]
    depthwise: bool

    def predict(self, width: LayerWidth) -> float:
        if self.depthwise:
            i, a = _bracket(self.inputs, width.out_channels)
            return _lerp(self.times[i][0], self.times[i + 1][0], a) if len(self.inputs) > 1 else self.times[0][0]
        i, a = _bracket(self.inputs, width.in_channels)
        j, b = _bracket(self.outputs, width.out_channels)
        row = [self.times[k] for k in (i, min(i + 1, len(self.inputs) - 1))]
        cols = (j, min(j + 1, len(self.outputs) - 1))
        low = _lerp(row[0][cols[0]], row[0][cols[1]], b)
        high = _lerp(row[1][cols[0]], row[1][cols[1]], b)
        return _lerp(low, high, a)


@dataclass(frozen=True)
class LatencyModel:
    """Per-layer tables (by layer name) and the constant rest, for one input size, batch and
    device; :meth:`predict` takes the widths of :class:`~sparsemtl.pruning.cost.PrunedCost`."""

    layers: dict[str, LayerTable]
    rest_ms: float
    dense_ms: float
    batch: int
    device: str
    threads: int
    scale: float = 1.0

    def predict(self, widths: Sequence[LayerWidth]) -> float:
        """Predicted milliseconds per forward of a model with these layer widths."""
        return self.rest_ms + self.scale * sum(self.layers[w.name].predict(w) for w in widths if w.name in self.layers)


def measure_latency_model(
    model: nn.Module,
    input_size: tuple[int, int],
    batch: int = 1,
    device: str | torch.device = "cpu",
    threads: int | None = None,
    fractions: Sequence[float] = FRACTIONS,
    min_run_time: float = 0.02,
) -> LatencyModel:
    """Time ``model``'s layers on ``device`` (see the module docstring). The model itself is
    not changed: a BN-folded copy is moved to ``device``."""
    device = torch.device(device)
    threads = threads or torch.get_num_threads()
    folded = fold_batchnorm(model).to(device)  # the default trace input shares the cached graph
    inputs = _layer_inputs(folded, input_size, batch, device)
    shared: dict[tuple, LayerTable] = {}
    layers: dict[str, LayerTable] = {}
    with fixed_threads(threads), torch.inference_mode():
        for name, op in folded.named_modules():
            if isinstance(op, WEIGHT_OPS) and name in inputs:
                key = _config(op, inputs[name])
                if key not in shared:
                    shared[key] = _measure_layer(op, inputs[name], device, threads, fractions, min_run_time)
                layers[name] = shared[key]
    dense = measure_latency(folded, input_size, batch, device, threads, min_run_time=max(0.2, 10 * min_run_time))
    dense_ms = dense.median * 1e3
    full = sum(table.times[-1][-1] for table in layers.values())
    # Alone, small layers can take longer than inside the network (caches, call overhead): then
    # their times are scaled down to the network's and the rest is taken as 0.
    scale = min(1.0, dense_ms / full) if full > 0 else 1.0
    return LatencyModel(layers, max(0.0, dense_ms - full), dense_ms, batch, str(device), threads, scale)


def _bracket(grid: Sequence[int], value: int) -> tuple[int, float]:
    """Index ``i`` and weight ``a`` with value = (1 - a) grid[i] + a grid[i + 1]; clamped at
    the ends (below the smallest width the smallest width's time is used)."""
    if len(grid) == 1 or value <= grid[0]:
        return 0, 0.0
    if value >= grid[-1]:
        return len(grid) - 2, 1.0
    i = bisect.bisect_right(grid, value) - 1
    return i, (value - grid[i]) / (grid[i + 1] - grid[i])


def _lerp(x: float, y: float, a: float) -> float:
    return x + (y - x) * a


def _grid(size: int, step: int, fractions: Sequence[float]) -> tuple[int, ...]:
    """Widths ``fraction * size`` rounded to multiples of ``step`` (at least one step), distinct."""
    return tuple(sorted({max(step, round(f * size / step) * step) for f in fractions}))


@torch.no_grad()
def _layer_inputs(model: nn.Module, input_size: tuple[int, int], batch: int, device: torch.device) -> dict:
    """The input shape every conv/linear layer sees in one eval forward."""
    shapes: dict[str, tuple[int, ...]] = {}

    def recorder(name: str):
        def record(module: nn.Module, args: tuple) -> None:  # returns None: the inputs stay as they are
            shapes.setdefault(name, tuple(args[0].shape))

        return record

    handles = [
        m.register_forward_pre_hook(recorder(name)) for name, m in model.named_modules() if isinstance(m, WEIGHT_OPS)
    ]
    model.eval()
    try:
        model(torch.zeros(batch, 3, *input_size, device=device))
    finally:
        for h in handles:
            h.remove()
    return shapes


def _config(op: nn.Module, shape: tuple[int, ...]) -> tuple:
    if isinstance(op, nn.Linear):
        return ("linear", op.in_features, op.out_features, shape)
    geometry = (op.kernel_size, op.stride, op.padding, op.dilation, op.groups)
    return ("conv", op.in_channels, op.out_channels, *geometry, shape)


def _measure_layer(
    op: nn.Module,
    shape: tuple[int, ...],
    device: torch.device,
    threads: int,
    fractions: Sequence[float],
    min_run_time: float,
) -> LayerTable:
    if isinstance(op, nn.Linear):
        ins, outs = _grid(op.in_features, 1, fractions), _grid(op.out_features, 1, fractions)
        rows = [[_time_linear(shape, i, o, device, threads, min_run_time) for o in outs] for i in ins]
        return LayerTable(ins, outs, _frozen(rows), False)
    depthwise = op.groups > 1 and op.groups == op.in_channels
    if depthwise:
        multiplier = op.out_channels // op.groups
        widths = _grid(op.in_channels, 1, fractions)
        rows = [[_time_conv(op, shape, c, c * multiplier, c, device, threads, min_run_time)] for c in widths]
        return LayerTable(widths, tuple(w * multiplier for w in widths), _frozen(rows), True)
    ins, outs = _grid(op.in_channels, op.groups, fractions), _grid(op.out_channels, op.groups, fractions)
    rows = [[_time_conv(op, shape, i, o, op.groups, device, threads, min_run_time) for o in outs] for i in ins]
    return LayerTable(ins, outs, _frozen(rows), False)


def _frozen(rows: list[list[float]]) -> tuple[tuple[float, ...], ...]:
    return tuple(tuple(r) for r in rows)


def _time_conv(
    op: nn.Conv2d, shape: tuple[int, ...], cin: int, cout: int, groups: int, device, threads: int, min_run_time: float
) -> float:
    x = torch.rand(shape[0], cin, *shape[2:], device=device)
    w = torch.rand(cout, cin // groups, *op.kernel_size, device=device)
    b = None if op.bias is None else torch.rand(cout, device=device)
    args = {"x": x, "w": w, "b": b, "F": F, "s": op.stride, "p": op.padding, "d": op.dilation, "g": groups}
    return _time("F.conv2d(x, w, b, s, p, d, g)", args, device, threads, min_run_time)


def _time_linear(shape: tuple[int, ...], cin: int, cout: int, device, threads: int, min_run_time: float) -> float:
    x = torch.rand(*shape[:-1], cin, device=device)
    args = {"x": x, "w": torch.rand(cout, cin, device=device), "b": torch.rand(cout, device=device), "F": F}
    return _time("F.linear(x, w, b)", args, device, threads, min_run_time)


def _time(stmt: str, env: dict, device: torch.device, threads: int, min_run_time: float) -> float:
    """Median milliseconds of ``stmt`` after a warm-up run."""
    timer = Timer(stmt, globals=env, num_threads=threads)
    timer.timeit(1)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return timer.blocked_autorange(min_run_time=min_run_time).median * 1e3
