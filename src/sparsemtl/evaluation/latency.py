"""Honest latency: wall-clock inference time of BN-folded models, reported next to params and MACs.

Settings follow the README ("Shrinking: physical pruning and honest measurement", Measuring):
``torch.utils.benchmark.Timer`` with ``blocked_autorange`` (it synchronises accelerators around
every block), ``inference_mode``, a fixed thread count, warm-up runs first, batch 1 and batch N,
and the median with the interquartile range rather than a mean that one descheduled block can
move. Every compared model is BN-folded, so BatchNorm passes do not blur the comparison.
Optionally models and inputs run in ``torch.channels_last`` memory format, which many CPU and GPU
convolution kernels prefer; the format is recorded with every measurement.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator, Sequence

import torch
from torch import nn
from torch.utils.benchmark import Timer

from ..models.complexity import count_macs, count_parameters
from ..tables import format_table
from .fold import fold_batchnorm
from .machine import format_machine

BENCH_HEADERS = ["model", "batch", "params", "GMACs/img", "median ms", "IQR ms", "speed-up", "MAC reduction"]


@dataclass(frozen=True)
class LatencyResult:
    """Per-forward time in seconds over ``measurements`` timed blocks of ``runs_per_measurement``
    forwards each."""

    median: float
    p25: float
    p75: float
    measurements: int
    runs_per_measurement: int
    batch: int
    device: str
    threads: int
    channels_last: bool = False

    @property
    def iqr(self) -> float:
        return self.p75 - self.p25

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"iqr": self.iqr}


@dataclass
class BenchResult:
    """One model: size and compute of the model as given, latency of its BN-folded copy."""

    name: str
    params: int
    macs: int
    input_size: tuple[int, int]
    latencies: list[LatencyResult] = field(default_factory=list)

    def latency(self, batch: int) -> LatencyResult | None:
        return next((r for r in self.latencies if r.batch == batch), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "params": self.params,
            "macs": self.macs,
            "input_size": list(self.input_size),
            "latencies": [r.to_dict() for r in self.latencies],
        }


def measure_latency(
    model: nn.Module,
    input_size: tuple[int, int],
    batch_size: int,
    device: str | torch.device = "cpu",
    threads: int | None = None,
    min_run_time: float = 1.0,
    warmup: int = 3,
    channels_last: bool = False,
) -> LatencyResult:
    """Time eval-mode forwards of ``model`` (already on ``device``) on a random
    ``(batch_size, 3, H, W)`` input.

    ``threads`` (default: the current count) is fixed for warm-up and timing; the thread count
    and every module's training flag are restored afterwards. ``channels_last`` makes the input
    channels-last; the model must have been converted by the caller
    (``model.to(memory_format=torch.channels_last)``, as :func:`benchmark_models` does), since
    converting it here would change the caller's model in place.
    """
    device = _checked_device(model, device)
    threads = threads or torch.get_num_threads()
    x = torch.rand(batch_size, 3, *input_size, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    timer = Timer("model(x)", globals={"model": model, "x": x}, num_threads=threads)
    with fixed_threads(threads), _eval_mode(model), torch.inference_mode():
        for _ in range(warmup):
            model(x)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        measurement = timer.blocked_autorange(min_run_time=min_run_time)
    p25, median, p75 = (
        torch.tensor(measurement.times, dtype=torch.float64)
        .quantile(torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64))
        .tolist()
    )
    return LatencyResult(
        median,
        p25,
        p75,
        len(measurement.times),
        measurement.number_per_run,
        batch_size,
        str(device),
        threads,
        channels_last,
    )


def benchmark_models(
    models: dict[str, nn.Module],
    input_size: tuple[int, int],
    batch_sizes: Sequence[int] = (1, 8),
    device: str | torch.device = "cpu",
    threads: int | None = None,
    min_run_time: float = 1.0,
    channels_last: bool = False,
) -> list[BenchResult]:
    """Params and MACs (batch 1) of each model as given, latency of its BN-folded copy per batch
    size (copy and inputs channels-last with ``channels_last``). The first model is the baseline
    of :func:`format_bench_table`."""
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    results = []
    for name, model in models.items():
        result = BenchResult(name, count_parameters(model), count_macs(model, input_size, 1), tuple(input_size))
        trace_input = torch.rand(1, 3, *input_size)
        folded = fold_batchnorm(model, trace_input).to(device, memory_format=memory_format)
        for batch in batch_sizes:
            lat = measure_latency(folded, input_size, batch, device, threads, min_run_time, channels_last=channels_last)
            result.latencies.append(lat)
        results.append(result)
    return results


def bench_rows(results: Sequence[BenchResult]) -> list[list[Any]]:
    """One row per model and batch (:data:`BENCH_HEADERS`); speed-up and MAC reduction are
    relative to the first model at the same batch (nan where it was not measured)."""
    if not results:
        return []
    base = results[0]
    return [_bench_row(result, lat, base) for result in results for lat in result.latencies]


def _bench_row(result: BenchResult, lat: LatencyResult, base: BenchResult) -> list[Any]:
    base_lat = base.latency(lat.batch)
    return [
        result.name,
        lat.batch,
        result.params,
        result.macs / 1e9,
        lat.median * 1e3,
        lat.iqr * 1e3,
        base_lat.median / lat.median if base_lat is not None else float("nan"),
        base.macs / result.macs if result.macs else float("nan"),
    ]


def format_bench_table(results: Sequence[BenchResult], machine: dict[str, Any]) -> str:
    """The benchmark table under a header line naming the machine and settings."""
    settings = ""
    if results and results[0].latencies:
        first = results[0].latencies[0]
        h, w = results[0].input_size
        layout = ", channels_last" if first.channels_last else ""
        settings = f"\ninput {h}x{w}, device {first.device}, {first.threads} threads, BN folded{layout}"
    return format_machine(machine) + settings + "\n" + format_table(BENCH_HEADERS, bench_rows(results))


def _checked_device(model: nn.Module, device: str | torch.device) -> torch.device:
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("CUDA device requested but torch.cuda.is_available() is False")
    param = next(model.parameters(), None)
    if param is not None and param.device.type != device.type:
        raise ValueError(f"model is on {param.device}, not on the requested device {device}")
    return device


@contextmanager
def fixed_threads(threads: int) -> Iterator[None]:
    """Set the torch intra-op thread count for a block and restore it after."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode for a block; every submodule's own flag is restored after (a model may keep
    some parts, e.g. frozen BNs, in eval mode while training)."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training
