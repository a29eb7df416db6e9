"""One study cell, start to finish: train (or resume), prune, measure, tidy, then ``cell.json``.

Each step is idempotent, so a cell interrupted anywhere is completed by running it again:
``cell.json`` is written last and atomically, and its presence means the cell is done. The same
entry point serves every launcher: in-process (one worker), a subprocess per cell
(``python -m sparsemtl.studies STUDY_DIR CELL_ID``) and a SLURM array task
(:func:`run_cell_job`).
"""

from __future__ import annotations

import argparse
import dataclasses
import fcntl
import json
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch

from ..config import Config
from ..errors import RunError, SparsemtlError, one_line
from ..evaluation.latency import benchmark_models
from ..evaluation.machine import describe_machine
from ..models.complexity import count_macs, count_parameters
from ..pruning import prune_run
from ..runs import RESUME_MAY_CHANGE, RunDir, atomic_write_json, open_model
from ..runs.run_dir import config_changes
from ..runtime import resolve_device
from ..training import resume, train
from .spec import BenchSettings, Cell, StudySpec, expand, load_study

STUDY_FILE = "study.yaml"
CELLS_FILE = "cells.json"
CELLS = "cells"
CELL_JSON = "cell.json"
CELL_LOG = "cell.log"
CELL_LOCK = ".cell.lock"
PRUNED = "pruned.pt"


def cell_dir(study_dir: str | Path, cell: Cell) -> Path:
    return Path(study_dir) / CELLS / cell.id


def cell_state(study_dir: str | Path, cell: Cell) -> str:
    """``done`` (cell.json written), ``partial`` (a run was started) or ``new``."""
    folder = cell_dir(study_dir, cell)
    if (folder / CELL_JSON).is_file():
        return "done"
    return "partial" if (folder / "config.yaml").is_file() else "new"


@contextmanager
def cell_lock(folder: Path) -> Iterator[None]:
    """Hold the cell for this process (``flock``, released when the process dies): two workers or
    two studies never process the same cell at once. Separate from the run's own ``.lock``, which
    training takes and releases inside this one."""
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / CELL_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "?"
            raise RunError(f"cell {str(folder)!r} is being run by another process (pid {holder})") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        yield
    finally:
        os.close(fd)


def _run_config(cell: Cell, folder: Path) -> Config:
    """The cell's config, writing into its own folder of the study."""
    train_cfg = dataclasses.replace(cell.config.train, out_dir=str(folder.parent), name=folder.name)
    return dataclasses.replace(cell.config, train=train_cfg)


#: keys that only say where the run lives: a study folder may be moved or named by another path
_LOCATION_KEYS = ("train.out_dir", "train.name")


def _train_or_resume(cfg: Config, folder: Path) -> None:
    """Train a new cell, resume an interrupted one, or do nothing for a finished run. A run
    started with another config (the study file changed since) is refused, never mixed in."""
    if not (folder / "config.yaml").is_file():
        train(cfg, folder)
        return
    run = RunDir.open(folder)
    wanted = cfg.to_dict()
    changed = [k for k in config_changes(run.read_config().to_dict(), wanted) if k not in _LOCATION_KEYS]
    refused = [k for k in changed if k not in RESUME_MAY_CHANGE]
    if refused:
        raise RunError(
            f"cell {str(folder)!r} was started with another config (key {refused[0]!r} differs from the study's); "
            "restore the study file, or delete the cell folder to run it again"
        )
    if run.finished:
        return
    resume(folder, [f"{key}={json.dumps(_lookup(wanted, key))}" for key in changed])


def _lookup(values: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        values = values[part]
    return values


def _latency(model: torch.nn.Module, input_size: tuple[int, int], bench: BenchSettings) -> dict[str, Any] | None:
    """Median ms per batch size of the BN-folded deployed model, on the study's device."""
    if not bench.batches:
        return None
    device = resolve_device(bench.device, key="study key 'bench.device'")
    result = benchmark_models({"model": model}, input_size, bench.batches, device, bench.threads, bench.min_run_time)
    return {
        "device": str(device),
        "threads": bench.threads,
        "machine": describe_machine(device),
        "ms": {str(lat.batch): lat.median * 1000.0 for lat in result[0].latencies},
    }


def _finish(folder: Path, cell: Cell, spec: StudySpec) -> dict[str, Any]:
    """Prune (sparse cells, verified), measure, drop ``last.pt``; returns the cell record."""
    summary = json.loads((folder / "summary.json").read_text())
    cfg = cell.config
    size = tuple(cfg.data.image_size)
    t0 = time.perf_counter()
    if cell.dense:
        model = open_model(folder).model
        params = count_parameters(model)
        macs = count_macs(model, size)
        cost = {"params": params, "macs": macs, "params_dense": params, "macs_dense": macs, "removed_channels": 0}
    else:
        pruned = prune_run(folder, folder / PRUNED)  # PruningVerificationError if outputs changed
        model = pruned.model
        cost = {
            "params": pruned.params_after,
            "macs": pruned.macs_after,
            "params_dense": pruned.params_before,
            "macs_dense": pruned.macs_before,
            "removed_channels": pruned.removed_channels,
        }
    cost |= {"input_size": list(size), "zero_group_pct": float(summary["sparsity"]["zero_group_pct"])}
    t1 = time.perf_counter()
    latency = _latency(model, size, spec.bench)
    t2 = time.perf_counter()
    if not spec.prune.keep_last:
        (folder / "last.pt").unlink(missing_ok=True)
    return {
        "id": cell.id,
        "values": cell.values,
        "tasks": list(cfg.tasks),
        "lam": 0.0 if cell.dense else float(cfg.sparsity.lam),
        "seed": cfg.train.seed,
        "dense": cell.dense,
        "summary": "summary.json",
        "cost": cost,
        "latency": latency,
        "seconds": {"train": float(summary["train_seconds"]), "prune": t1 - t0, "bench": t2 - t1},
    }


def run_cell(study_dir: str | Path, cell: Cell, spec: StudySpec) -> dict[str, Any]:
    """Bring one cell to ``done`` and return its ``cell.json`` record (read back when already done)."""
    folder = cell_dir(study_dir, cell)
    if (folder / CELL_JSON).is_file():
        return json.loads((folder / CELL_JSON).read_text())
    with cell_lock(folder):
        if (folder / CELL_JSON).is_file():  # another process finished it while we waited to look
            return json.loads((folder / CELL_JSON).read_text())
        _train_or_resume(_run_config(cell, folder), folder)
        record = _finish(folder, cell, spec)
        atomic_write_json(folder / CELL_JSON, record)
    return record


def find_cell(study_dir: str | Path, cell_id: str) -> tuple[StudySpec, Cell]:
    """The resolved study of ``study_dir`` and its cell ``cell_id``."""
    spec = load_study(Path(study_dir) / STUDY_FILE)
    for cell in expand(spec):
        if cell.id == cell_id:
            return spec, cell
    raise RunError(f"study {str(study_dir)!r} has no cell {cell_id!r}")


def run_cell_job(study_dir: str, cell_id: str) -> dict[str, Any]:
    """The function a SLURM (submitit) array task runs: errors come back as data, in one line."""
    try:
        spec, cell = find_cell(study_dir, cell_id)
        run_cell(study_dir, cell, spec)
    except SparsemtlError as exc:
        return {"id": cell_id, "ok": False, "error": one_line(exc)}
    return {"id": cell_id, "ok": True, "error": None}


def main(argv: list[str] | None = None) -> int:
    """``python -m sparsemtl.studies STUDY_DIR CELL_ID [--threads N]``: one cell in a local worker process."""
    parser = argparse.ArgumentParser(prog="python -m sparsemtl.studies")
    parser.add_argument("study_dir")
    parser.add_argument("cell_id")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads of this worker")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        spec, cell = find_cell(args.study_dir, args.cell_id)
        run_cell(args.study_dir, cell, spec)
    except SparsemtlError as exc:
        print(f"sparsemtl: error: {one_line(exc)}", file=sys.stderr, flush=True)
        return exc.exit_code
    except KeyboardInterrupt:
        print("sparsemtl: error: interrupted", file=sys.stderr, flush=True)
        return 130
    return 0
