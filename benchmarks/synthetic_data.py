"""Throughput of the procedural datasets: samples/s per dataset and resolution, this machine.

Generation runs in the data-loader workers during training, so its speed bounds how many
workers a run needs. Run with the package installed (or ``PYTHONPATH=src``)::

    python benchmarks/synthetic_data.py --samples 200 --sizes 64 128 256
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import torch

from sparsemtl.data.synthetic_faces import SyntheticFaces
from sparsemtl.data.synthetic_scenes import SyntheticScenes

DATASETS = {"synthetic-scenes": SyntheticScenes, "synthetic-faces": SyntheticFaces}
WARMUP_SAMPLES = 3


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=200, help="samples timed per dataset and size")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256], help="square image sides")
    parser.add_argument("--datasets", nargs="+", choices=sorted(DATASETS), default=list(DATASETS))
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def machine_description() -> str:
    processor = platform.processor() or platform.machine()
    return (
        f"{processor} | {os.cpu_count()} CPUs | torch threads {torch.get_num_threads()} | "
        f"python {platform.python_version()} | numpy {np.__version__} | torch {torch.__version__}"
    )


def samples_per_second(dataset_cls: type, size: int, samples: int, seed: int) -> float:
    """Time ``samples`` consecutive ``__getitem__`` calls after a short warm-up."""
    dataset = dataset_cls(samples + WARMUP_SAMPLES, (size, size), seed=seed)
    for index in range(WARMUP_SAMPLES):
        dataset[samples + index]
    start = time.perf_counter()
    for index in range(samples):
        dataset[index]
    return samples / (time.perf_counter() - start)


def format_row(cells: list[str]) -> str:
    return " | ".join(f"{cell:>16}" for cell in cells)


def main() -> None:
    args = parse_args()
    print(f"# synthetic data throughput, single process ({machine_description()})")
    print(f"# {args.samples} samples per cell, seed {args.seed}")
    print(format_row(["dataset"] + [f"{size}x{size}" for size in args.sizes]))
    for name in args.datasets:
        rates = [samples_per_second(DATASETS[name], size, args.samples, args.seed) for size in args.sizes]
        print(format_row([name] + [f"{rate:.1f}/s" for rate in rates]))


if __name__ == "__main__":
    main()
