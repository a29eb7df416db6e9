"""``sparsemtl bench``: load models from disk and measure them side by side."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch

from .config import config_from_dict
from .evaluation.latency import benchmark_models, format_bench_table
from .evaluation.machine import describe_machine
from .pruning import load_model
from .training.checkpoint import load_checkpoint


def model_file(path: str | Path) -> Path:
    """A run directory stands for its best checkpoint."""
    path = Path(path)
    return path / "best.pt" if path.is_dir() else path


def stored_image_size(path: Path) -> tuple[int, int]:
    return tuple(config_from_dict(load_checkpoint(path)["config"]).data.image_size)


def bench_command(
    models: Sequence[str],
    size: Sequence[int] | None,
    batches: Sequence[int],
    device: str,
    threads: int | None,
    min_run_time: float,
    json_path: str | None,
) -> str:
    """Benchmark every model (the first is the baseline), return the table, optionally write JSON."""
    files = [model_file(m) for m in models]
    input_size = tuple(size) if size else stored_image_size(files[0])
    loaded = {str(m): load_model(f).to(torch.device(device)).eval() for m, f in zip(models, files)}
    results = benchmark_models(loaded, input_size, batches, device, threads, min_run_time)
    machine = describe_machine(device)
    if json_path:
        Path(json_path).write_text(
            json.dumps({"machine": machine, "results": [r.to_dict() for r in results]}, indent=2)
        )
    return format_bench_table(results, machine)
