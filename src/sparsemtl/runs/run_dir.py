"""The run directory: the one owner of every file a run writes and reads.

Layout (documented for users in the README, "Run directory"):

====================  =====================================================================
``config.yaml``       the resolved config the run was started (and resumed) with
``metrics.jsonl``     one JSON line per completed epoch
``splits.json``       sample ids of every split (datasets read from files)
``data_check.json``   the pre-flight data check (samples per split, bad samples)
``last.pt``           full training state after the last committed epoch (for ``--resume``)
``best.pt``           model chosen on the validation monitor (weights, config, task specs)
``best.pending.pt``   a better model found between two ``last.pt`` writes, staged until the next
                      (``train.checkpoint_every`` > 1): it becomes ``best.pt`` right after it
``summary.json``      written once, when the run has finished: test/val metrics, sparsity, ...
``.lock``             held (``flock``) by the process writing the run; released when it dies
====================  =====================================================================

A run directory is created with one atomic ``mkdir``: two processes can never share one. A run
with ``summary.json`` is finished; one without it was interrupted and can be resumed from
``last.pt``. ``best.pt`` always matches the best epoch that ``last.pt`` records (or that epoch
is ``last.pt``'s own and is re-derived from it), which is why an improvement between two
``last.pt`` writes is staged in ``best.pending.pt``: see :meth:`RunDir.settle_pending_best`.
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path
from typing import Any

import yaml

from ..config import Config, check_run_name, config_from_dict
from ..errors import ConfigError, RunError, one_line
from .files import (
    atomic_write_json,
    atomic_write_text,
    clean_stale_temps,
    load_checkpoint,
    replace_durably,
    save_checkpoint,
)
from .summary import RunSummary

CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
SPLITS = "splits.json"
DATA_CHECK = "data_check.json"
LAST = "last.pt"
BEST = "best.pt"
PENDING_BEST = "best.pending.pt"
SUMMARY = "summary.json"
LOCK = ".lock"

#: the fields of a ``metrics.jsonl`` record that are wall-clock times (they differ between two
#: runs of the same seed; compare records without them)
TIME_FIELDS = ("seconds", "checkpoint_s", "checkpoint_write_s")

#: config keys that may differ when a run is resumed (everything else must match the run's config)
RESUME_MAY_CHANGE = (
    "train.epochs",
    "train.patience",
    "train.progress",
    "train.loggers",
    "train.device",
    "train.checkpoint_every",
    "train.async_checkpoint",
    "data.root",
    "data.num_workers",
    "data.eval_batch_size",
    "data.check",
)


class RunDir:
    """A run directory on disk; create it with :meth:`create`, reopen it with :meth:`open`."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock_fd: int | None = None

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    # ------------------------------------------------------------------ creating and opening
    @classmethod
    def create(cls, out_dir: str | Path, name: str | None, default_name: str) -> "RunDir":
        """Make a new run directory atomically and take its lock. An explicit ``name`` must not
        exist yet (unless it is the empty shell of a run killed before it wrote its config, which
        is taken over); without one, ``default_name`` gets a ``-2``, ``-3``... suffix until
        ``mkdir`` succeeds, so runs started at the same moment never share a directory."""
        out = Path(out_dir)
        if name is not None:
            check_run_name(name)
        try:
            out.mkdir(parents=True, exist_ok=True)
            if name is not None:
                path = out / name
                path.parent.mkdir(parents=True, exist_ok=True)
                try:
                    path.mkdir()
                except FileExistsError:
                    return cls._take_over(path)
                return cls(path).acquire()
            for attempt in range(1, 10_000):
                path = out / (default_name if attempt == 1 else f"{default_name}-{attempt}")
                try:
                    path.mkdir()
                    return cls(path).acquire()
                except FileExistsError:
                    continue
        except OSError as exc:
            raise RunError(f"cannot create a run directory in {str(out)!r}: {one_line(exc)}") from None
        raise RunError(f"no free run name {default_name!r}-N in {str(out)!r}")

    @classmethod
    def _take_over(cls, path: Path) -> "RunDir":
        """An existing directory may be reused only if it never became a run (no config, no
        owner): what a process killed between ``mkdir`` and its first write leaves behind."""
        if path.is_dir() and not (path / CONFIG).exists() and not any(path.glob("*.pt")):
            run = cls(path).acquire()  # a RunError if a live process is creating it right now
            if not (path / CONFIG).exists():
                return run
            run.release()
        raise RunError(
            f"run directory {str(path)!r} already exists: continue it with "
            f"'sparsemtl train --resume {path}' or choose another train.name"
        )

    @classmethod
    def open(cls, path: str | Path) -> "RunDir":
        """An existing run directory (it must hold ``config.yaml``)."""
        run = cls(path)
        if run.path.is_file():
            raise RunError(f"{str(run.path)!r} is a file, not a run directory (expected the folder holding {CONFIG})")
        if not run.path.is_dir():
            raise RunError(f"run directory {str(run.path)!r} does not exist")
        if not (run.path / CONFIG).is_file():
            raise RunError(f"{str(run.path)!r} is not a run directory: {CONFIG} is missing")
        return run

    # ------------------------------------------------------------------ ownership
    def acquire(self) -> "RunDir":
        """Take the run's write lock (released automatically when the process dies), and remove
        temporary files a killed writer left behind. A second writer gets a RunError."""
        fd = os.open(self.path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise RunError(f"run directory {str(self.path)!r} is in use by another process (pid {holder})") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._lock_fd = fd
        clean_stale_temps(self.path)
        return self

    def release(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing drops the flock
            self._lock_fd = None

    # ------------------------------------------------------------------ state
    @property
    def finished(self) -> bool:
        return (self.path / SUMMARY).is_file()

    def has(self, name: str) -> bool:
        return (self.path / name).is_file()

    # ------------------------------------------------------------------ config
    def write_config(self, cfg: Config) -> None:
        atomic_write_text(self.path / CONFIG, yaml.safe_dump(cfg.to_dict(), sort_keys=False))

    def read_config_dict(self) -> dict[str, Any]:
        path = self.path / CONFIG
        try:
            values = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise RunError(f"{str(path)!r} cannot be read: {one_line(exc)}") from None
        if not isinstance(values, dict):
            raise RunError(f"{str(path)!r}: expected a mapping of settings")
        return values

    def read_config(self) -> Config:
        try:
            return config_from_dict(self.read_config_dict())
        except ConfigError as exc:
            raise RunError(f"{str(self.path / CONFIG)!r}: {exc}") from None

    # ------------------------------------------------------------------ metrics
    def append_metrics(self, record: dict[str, Any]) -> None:
        """One line per epoch, flushed and fsynced (a crash can at most tear the last line)."""
        with open(self.path / METRICS, "a") as fh:
            fh.write(json.dumps(record, allow_nan=True) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def read_metrics(self) -> list[dict[str, Any]]:
        """Complete records only: a torn last line from a crash is ignored."""
        return read_metrics_file(self.path / METRICS)

    def keep_metrics_until(self, epoch: int) -> None:
        """Drop records of epochs after ``epoch`` (written after the last complete checkpoint)."""
        kept = [r for r in self.read_metrics() if r.get("epoch", 0) <= epoch]
        atomic_write_text(self.path / METRICS, "".join(json.dumps(r, allow_nan=True) + "\n" for r in kept))

    # ------------------------------------------------------------------ checkpoints and summaries
    def save_checkpoint(self, name: str, payload: dict[str, Any]) -> None:
        save_checkpoint(payload, self.path / name)

    def promote_pending_best(self) -> None:
        """``best.pending.pt`` becomes ``best.pt``: called once the ``last.pt`` that records
        its epoch as the best one is on disk."""
        replace_durably(self.path / PENDING_BEST, self.path / BEST)

    def settle_pending_best(self, best_epoch: int) -> None:
        """On resume: a staged ``best.pending.pt`` of the epoch ``last.pt`` names as the best is
        promoted (the crash came between ``last.pt`` and the rename); one of any other epoch
        belongs to epochs after ``last.pt``, which the resumed run trains again, and is removed."""
        if not self.has(PENDING_BEST):
            return
        if self.load_checkpoint(PENDING_BEST)["epoch"] == best_epoch:
            self.promote_pending_best()
        else:
            self.remove(PENDING_BEST)

    def load_checkpoint(self, name: str, map_location: Any = "cpu") -> dict[str, Any]:
        return load_checkpoint(self.path / name, map_location)

    def write_json(self, name: str, data: Any) -> None:
        atomic_write_json(self.path / name, data)

    def write_summary(self, summary: RunSummary) -> None:
        self.write_json(SUMMARY, summary.to_dict())

    def read_summary(self) -> RunSummary:
        path = self.path / SUMMARY
        if not path.is_file():
            raise RunError(f"run {str(self.path)!r} has not finished: {SUMMARY} is missing")
        try:
            return RunSummary.from_dict(json.loads(path.read_text()))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise RunError(f"{str(path)!r} cannot be read: {one_line(exc)}") from None

    def remove(self, name: str) -> None:
        (self.path / name).unlink(missing_ok=True)


def read_metrics_file(path: Path) -> list[dict[str, Any]]:
    """The epoch records of a ``metrics.jsonl`` (also of a run still being written): complete
    lines up to the first torn one."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return records


def config_changes(stored: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two plain config mappings."""
    changed = []
    for key in sorted(set(stored) | set(new)):
        a, b = stored.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            changed += config_changes(a, b, f"{prefix}{key}.")
        elif a != b:
            changed.append(prefix + key)
    return changed


def check_resume_config(run: RunDir, cfg: Config) -> None:
    """Only the keys in :data:`RESUME_MAY_CHANGE` may differ from the run's stored config."""
    changed = [k for k in config_changes(run.read_config().to_dict(), cfg.to_dict()) if k not in RESUME_MAY_CHANGE]
    if changed:
        raise RunError(
            f"cannot resume {str(run.path)!r} with a changed config (key {changed[0]!r}"
            f"{f' and {len(changed) - 1} more' if len(changed) > 1 else ''}); "
            f"only {', '.join(RESUME_MAY_CHANGE)} may change on resume"
        )
