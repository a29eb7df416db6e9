"""Cost of writing ``last.pt``: synchronous vs background (``train.async_checkpoint``) writes.

The state is what the trainer writes each epoch for the paper model (resnet50d, output stride 8,
three DeepLabV3 heads): model, ProxAdamW with its Adam moments after one real step, config, task
specs and every RNG, about 0.8 GiB. Per checkpoint, interleaved (sync, background, sync, ...):

* sync: the loop is blocked for the whole write (torch.save + fsync + rename);
* background: the loop is blocked only while the state is copied to CPU memory; the write then
  runs in the writer thread, timed until it is on disk;
* with ``--steps N``: the training step time while a background write is in flight vs with no
  write (the writer thread shares the interpreter with the training loop).

The background file is checked against the synchronous one (same bytes on CPU; same tensors
from CUDA, whose copy is stored as CPU tensors). Write to the disk runs use (``--dir``): a
tmpfs such as /tmp measures memory copies, not the disk.

Usage: python benchmarks/checkpoint_cost.py [--model paper|small] [--repeats 5] [--device cpu]
       [--dir .] [--steps 0] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from paper_model import PAPER_MODEL, SPECS
from prox import make_batch, train_step

from sparsemtl.config import Config, ModelConfig
from sparsemtl.evaluation.machine import describe_machine, format_machine
from sparsemtl.models import build_model
from sparsemtl.runs import CHECKPOINT_FORMAT, load_checkpoint, save_checkpoint
from sparsemtl.runs.checkpoint_writer import CheckpointWriter, snapshot
from sparsemtl.sparsity import ProxAdamW, input_channels, regularized_param_groups
from sparsemtl.tables import format_table
from sparsemtl.training.rng import rng_state

SMALL_MODEL = ModelConfig(encoder="resnet18d", head_channels=32, aspp_rates=(1, 2))


def training_state(model_cfg: ModelConfig, device: torch.device, batch: dict[str, torch.Tensor]) -> tuple:
    """Model, optimiser and the trainer-like ``last.pt`` payload after one ProxAdamW step."""
    model = build_model(model_cfg, SPECS).to(device)
    structure = input_channels(model, ["encoder.*"])
    optimizer = ProxAdamW(regularized_param_groups(model, structure, 1e-5), lr=1e-4, weight_decay=0.1)
    train_step(model, optimizer, batch)
    cfg = Config(tasks=tuple(SPECS), model=model_cfg)
    state = {
        "format": CHECKPOINT_FORMAT,
        "epoch": 1,
        "monitor": {"name": "loss", "value": 1.0},
        "config": cfg.to_dict(),
        "task_specs": {name: spec.to_dict() for name, spec in SPECS.items()},
        "model": model.state_dict(),
        "loss_weighting": {},
        "optimizer": optimizer.state_dict(),
        "scheduler": None,
        "best_epoch": 1,
        "seconds": 0.0,
        "global_step": 1,
        "rng": rng_state(),
    }
    return model, optimizer, state


def write_sync(state: dict[str, Any], path: Path) -> float:
    start = time.perf_counter()
    save_checkpoint(state, path)
    return time.perf_counter() - start


def write_background(state: dict[str, Any], path: Path, writer: CheckpointWriter) -> tuple[float, float, float]:
    """(seconds blocked copying, seconds the background write took, seconds until on disk)."""
    start = time.perf_counter()
    copy = snapshot(state)
    writer.submit(lambda: save_checkpoint(copy, path), epoch=1)
    blocked = time.perf_counter() - start
    written = writer.wait()
    return blocked, written.seconds, time.perf_counter() - start


def step_times(model, optimizer, batch, steps: int, device: torch.device, writer=None, state=None, path=None):
    """Training step times, with a background write started before the first (if ``writer``)."""
    if writer is not None:
        copy = snapshot(state)
        writer.submit(lambda: save_checkpoint(copy, path), epoch=1)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        train_step(model, optimizer, batch)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    in_flight = writer is not None and writer.busy
    if writer is not None:
        writer.wait()
    return times, in_flight


def same_checkpoint(a: Path, b: Path) -> str:
    if a.read_bytes() == b.read_bytes():
        return "identical bytes"
    left, right = load_checkpoint(a), load_checkpoint(b)
    return "same tensors" if equal(left, right) else "DIFFERENT"


def equal(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a.cpu(), b.cpu())
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(equal(x, y) for x, y in zip(a, b))
    return a == b


def spread(values: list[float]) -> tuple[float, float, float]:
    return statistics.median(values), min(values), max(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["paper", "small"], default="paper")
    parser.add_argument("--repeats", type=int, default=5, help="timed checkpoints per way of writing")
    parser.add_argument("--device", default="cpu", help="where the model and optimiser state live")
    parser.add_argument("--dir", default=".", help="folder on the disk runs write to (a temp folder inside)")
    parser.add_argument("--steps", type=int, default=0, help="training steps timed with and without a write")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--size", type=int, default=128, help="image size of the training step")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    model_cfg = PAPER_MODEL if args.model == "paper" else SMALL_MODEL
    batch = make_batch(2, args.size, 0, device)
    model, optimizer, state = training_state(model_cfg, device, batch)
    writer = CheckpointWriter(background=True)

    with tempfile.TemporaryDirectory(prefix="checkpoint-cost-", dir=args.dir) as folder:
        sync_path, async_path = Path(folder) / "sync.pt", Path(folder) / "async.pt"
        write_sync(state, sync_path)  # warm-up: file caches, pinned memory
        write_background(state, async_path, writer)
        size_mib = sync_path.stat().st_size / 2**20
        check = same_checkpoint(sync_path, async_path)
        sync_s, blocked_s, background_s, total_s = [], [], [], []
        for _ in range(args.repeats):  # interleaved, so drifts in machine load hit both alike
            sync_s.append(write_sync(state, sync_path))
            blocked, background, total = write_background(state, async_path, writer)
            blocked_s.append(blocked)
            background_s.append(background)
            total_s.append(total)
        idle_steps, busy_steps, overlapped = [], [], False
        if args.steps:
            idle_steps = step_times(model, optimizer, batch, args.steps, device)[0]
            busy_steps, overlapped = step_times(model, optimizer, batch, args.steps, device, writer, state, async_path)

    print(f"# machine: {format_machine(describe_machine(device))}")
    params = sum(p.numel() for p in model.parameters())
    print(f"# model: {args.model} ({model_cfg.encoder}, {params:,} parameters), state on {device}")
    print(f"# checkpoint: {size_mib:.1f} MiB, {args.repeats} writes each, written to {Path(args.dir).resolve()}")
    print(f"# background file vs synchronous file: {check}\n")
    rows = [
        ("sync: loop blocked (= full write)", *spread(sync_s)),
        ("background: loop blocked (CPU copy)", *spread(blocked_s)),
        ("background: write in the thread", *spread(background_s)),
        ("background: copy + write until on disk", *spread(total_s)),
    ]
    if busy_steps:
        rows += [
            (f"train step, no write ({len(idle_steps)} steps)", *spread(idle_steps)),
            (f"train step, write in flight ({len(busy_steps)} steps)", *spread(busy_steps)),
        ]
    print(format_table(["seconds per checkpoint", "median", "min", "max"], rows))
    saved = statistics.median(sync_s) - statistics.median(blocked_s)
    print(f"\nloop time saved per checkpoint (median): {saved:.3f} s")
    if busy_steps and not overlapped:
        print("note: the write finished before the last timed step; raise --steps to cover it")


if __name__ == "__main__":
    main()
