"""Run every cell of a study into one study directory, idempotently.

Layout (the contract with :mod:`sparsemtl.studies.report`)::

    STUDY_DIR/study.yaml        the resolved study as run (base config inlined, overrides applied)
    STUDY_DIR/cells.json        {"cells": [{"id", "values"}, ...]} in grid order, written first
    STUDY_DIR/study.log         one line per finished or failed cell
    STUDY_DIR/cells/<id>/       a normal run directory, plus pruned.pt/.json (sparse cells) and
                                cell.json, written last: its presence means the cell is done

Running a study again skips done cells, finishes cells whose training ended, and resumes
interrupted ones; a failed cell is logged and the others go on.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError, SparsemtlError, one_line
from ..runs import atomic_write_json, atomic_write_text
from ..tables import format_table
from ..training import RunInterrupted
from .cell import CELLS_FILE, STUDY_FILE, cell_state, run_cell
from .launchers import run_local, run_submitit, slurm_executor
from .spec import Cell, StudySpec, expand

STUDY_LOG = "study.log"
LAUNCHERS = ("local", "slurm")


@dataclass
class StudyResult:
    """What a call of :func:`run_study` found and did."""

    study_dir: Path
    cells: list[Cell]
    states: dict[str, str]  # state of every cell before this call: done / partial / new
    finished: list[str] = field(default_factory=list)  # cells completed by this call
    failed: dict[str, str] = field(default_factory=dict)  # cell id -> error, one line

    def table(self) -> str:
        """One row per cell: id, tasks, lambda, seed and its state before this call."""
        rows = [
            [
                c.id,
                "+".join(c.config.tasks),
                0.0 if c.dense else c.config.sparsity.lam,
                c.config.train.seed,
                self.states[c.id],
            ]
            for c in self.cells
        ]
        return format_table(["cell", "tasks", "lam", "seed", "state"], rows)


class _Log:
    """Progress on stdout and one line per cell in ``study.log`` (threads of the local pool share it)."""

    def __init__(self, study_dir: Path, total: int) -> None:
        self.path, self.total, self.count = study_dir / STUDY_LOG, total, 0
        self.lock = threading.Lock()

    def __call__(self, cell_id: str, error: str | None) -> None:
        with self.lock:
            self.count += 1
            text = "done" if error is None else f"FAILED: {error}"
            print(f"[{self.count}/{self.total}] {cell_id}: {text}", flush=True)
            with open(self.path, "a") as fh:
                fh.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {cell_id}: {text}\n")


def write_study_files(spec: StudySpec, study_dir: Path, cells: list[Cell]) -> None:
    """``study.yaml`` (the resolved study) and ``cells.json``, before any cell runs."""
    atomic_write_text(study_dir / STUDY_FILE, yaml.safe_dump(spec.to_dict(), sort_keys=False))
    atomic_write_json(study_dir / CELLS_FILE, {"cells": [{"id": c.id, "values": c.values} for c in cells]})


def run_study(
    spec: StudySpec,
    out_dir: str | Path,
    workers: int = 1,
    launcher: str = "local",
    dry_run: bool = False,
    executor: Any = None,
) -> StudyResult:
    """Bring every cell of ``spec`` to done in ``out_dir``.

    ``workers`` 1 runs cells one after another in this process; N > 1 runs N worker processes
    (CPU threads split between them, one GPU each when there are GPUs). ``launcher="slurm"``
    submits one SLURM array task per cell through submitit (``executor``: a ready submitit
    executor, e.g. a local one in tests) and waits for them. ``dry_run`` only reports states.
    """
    if launcher not in LAUNCHERS:
        raise ConfigError(f"argument --launcher: expected one of {', '.join(LAUNCHERS)}, got {launcher!r}")
    if workers < 1:
        raise ConfigError(f"argument --workers: expected an integer >= 1, got {workers}")
    study_dir = Path(out_dir)
    cells = expand(spec)
    result = StudyResult(study_dir, cells, {c.id: cell_state(study_dir, c) for c in cells})
    if dry_run:
        return result
    study_dir.mkdir(parents=True, exist_ok=True)
    write_study_files(spec, study_dir, cells)
    todo = [c for c in cells if result.states[c.id] != "done"]
    log = _Log(study_dir, len(todo))

    def on_done(cell_id: str, error: str | None) -> None:
        log(cell_id, error)
        if error is None:
            result.finished.append(cell_id)
        else:
            result.failed[cell_id] = error

    if not todo:
        return result
    if launcher == "slurm":
        executor = executor or slurm_executor(study_dir / "slurm", spec.slurm)
        run_submitit(executor, study_dir, [c.id for c in todo], on_done)
    elif workers > 1:
        run_local(study_dir, [c.id for c in todo], workers, on_done)
    else:
        for cell in todo:
            try:
                run_cell(study_dir, cell, spec)
            except RunInterrupted:
                raise
            except SparsemtlError as exc:
                on_done(cell.id, one_line(exc))
            except Exception as exc:  # noqa: BLE001 - a bug in one cell must not stop the others
                on_done(cell.id, f"unexpected {type(exc).__name__}: {one_line(exc)}")
            else:
                on_done(cell.id, None)
    return result
