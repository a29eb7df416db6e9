"""``sparsemtl bench``: open models from disk and measure them side by side."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from .errors import ConfigError
from .evaluation.latency import benchmark_models, format_bench_table
from .evaluation.machine import describe_machine
from .runs import atomic_write_json, open_model
from .runtime import resolve_device


def bench_command(
    models: Sequence[str],
    size: Sequence[int] | None,
    batches: Sequence[int],
    device: str,
    threads: int | None,
    min_run_time: float,
    json_path: str | None,
    channels_last: bool = False,
) -> str:
    """Benchmark every model (the first is the baseline), return the table, optionally write JSON;
    ``channels_last`` runs models and inputs in that memory format."""
    bad = [b for b in batches if b < 1]
    if bad:
        raise ConfigError(f"argument --batch: expected batch sizes >= 1, got {bad[0]}")
    if size is not None and min(size) < 16:
        raise ConfigError(f"argument --size: expected two integers >= 16 (height, width), got {list(size)}")
    if threads is not None and threads < 1:
        raise ConfigError(f"argument --threads: expected an integer >= 1, got {threads}")
    if not min_run_time > 0 or min_run_time == float("inf"):
        raise ConfigError(f"argument --min-run-time: expected a finite number of seconds > 0, got {min_run_time}")
    target = resolve_device(device, key="argument --device")
    opened = [open_model(m) for m in models]
    input_size = tuple(size) if size else tuple(opened[0].config.data.image_size)
    loaded = {str(m): f.model.eval() for m, f in zip(models, opened)}  # benchmark_models moves folded copies
    results = benchmark_models(loaded, input_size, batches, str(target), threads, min_run_time, channels_last)
    machine = describe_machine(str(target))
    if json_path:
        atomic_write_json(Path(json_path), {"machine": machine, "results": [r.to_dict() for r in results]})
    return format_bench_table(results, machine)
