"""Where cells run: N local worker processes, or SLURM array jobs through submitit.

Both report back the same thing: for every cell id, None when it finished, else its error in
one line. Cells are processed by :mod:`sparsemtl.studies.cell` in every case.
"""

from __future__ import annotations

import os
import queue
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ..errors import ConfigError, one_line
from .cell import CELL_LOG, CELLS, run_cell_job
from .spec import SlurmSettings

Outcome = Callable[[str, "str | None"], None]  # called as each cell ends: (cell id, error or None)


def worker_env(slot: int, workers: int, gpus: int, cpus: int | None = None) -> tuple[dict[str, str], int]:
    """Environment and torch thread count of local worker ``slot``: the CPUs split evenly between
    workers, and one GPU each (round-robin) when GPUs exist."""
    threads = max(1, (cpus or os.cpu_count() or 1) // workers)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    if gpus > 0:
        env["CUDA_VISIBLE_DEVICES"] = str(slot % gpus)
    return env, threads


def _last_error(log: Path) -> str:
    """The error line a failed worker printed last (or the tail of its log)."""
    try:
        lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        lines = []
    if not lines:
        return "the worker exited without output"
    return lines[-1].removeprefix("sparsemtl: error: ")


def run_local(study_dir: Path, cell_ids: Sequence[str], workers: int, on_done: Outcome) -> None:
    """Each cell in a fresh ``python -m sparsemtl.studies`` process, at most ``workers`` at
    once; its stdout and stderr go to ``cells/<id>/cell.log``."""
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    slots: queue.Queue[int] = queue.Queue()
    for slot in range(workers):
        slots.put(slot)

    def work(cell_id: str) -> None:
        slot = slots.get()
        try:
            env, threads = worker_env(slot, workers, gpus)
            folder = study_dir / CELLS / cell_id
            folder.mkdir(parents=True, exist_ok=True)
            cmd = [sys.executable, "-m", "sparsemtl.studies", str(study_dir), cell_id, "--threads", str(threads)]
            with open(folder / CELL_LOG, "ab") as log:
                code = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env).returncode
            on_done(cell_id, None if code == 0 else _last_error(folder / CELL_LOG))
        finally:
            slots.put(slot)

    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        for future in [pool.submit(work, cell_id) for cell_id in cell_ids]:
            future.result()
    finally:  # on Ctrl-C: the running workers stop on their own (same signal), queued cells never start
        pool.shutdown(wait=True, cancel_futures=True)


def slurm_executor(folder: Path, settings: SlurmSettings, cluster: str = "slurm") -> Any:
    """A submitit executor with the study's SLURM settings (``cluster="local"`` runs the same
    jobs as local processes: what the tests use)."""
    try:
        import submitit
    except ImportError:
        raise ConfigError(
            "--launcher slurm needs submitit: pip install 'sparsemtl[study]' (or pip install submitit)"
        ) from None
    executor = submitit.AutoExecutor(folder=str(folder), cluster=cluster)
    params: dict[str, Any] = {
        "name": "sparsemtl-study",
        "timeout_min": settings.timeout_min,
        "gpus_per_node": settings.gpus_per_node,
        "cpus_per_task": settings.cpus_per_task,
        "mem_gb": settings.mem_gb,
        "slurm_partition": settings.partition,
        "slurm_array_parallelism": settings.array_parallelism,
    }
    if settings.extra:
        params["slurm_additional_parameters"] = dict(settings.extra)
    try:
        executor.update_parameters(**params)
    except (NameError, AssertionError, ValueError) as exc:
        raise ConfigError(f"study key 'slurm': submitit refused the settings: {one_line(exc)}") from None
    return executor


def run_submitit(executor: Any, study_dir: Path, cell_ids: Sequence[str], on_done: Outcome) -> None:
    """One array task per cell (``executor.map_array``), then wait for them all."""
    jobs = executor.map_array(run_cell_job, [str(study_dir)] * len(cell_ids), list(cell_ids))
    print(f"submitted {len(jobs)} job(s): {', '.join(sorted({str(job.job_id).split('_')[0] for job in jobs}))}")
    for cell_id, job in zip(cell_ids, jobs):
        try:
            outcome = job.result()
        except Exception as exc:  # noqa: BLE001 - a job that crashed, timed out or was cancelled
            lines = [line for line in str(exc).splitlines() if line.strip()]
            on_done(cell_id, f"job {job.job_id} failed: {one_line(lines[-1] if lines else exc)}")
            continue
        on_done(cell_id, outcome["error"])
