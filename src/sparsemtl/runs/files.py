"""Durable file writes: temp file + fsync + rename, so a crash or a full disk at any moment
leaves either the previous complete file or the new complete file, never a torn one.

Temporary files carry :data:`TEMP_PREFIX`; one left behind by a killed process is removed by
:func:`clean_stale_temps` when the run directory is next opened for writing.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch

from ..errors import CheckpointError, TrainingError, one_line

TEMP_PREFIX = ".tmp-"


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write: Callable[[Any], None]) -> None:
    """Call ``write(binary_file)`` on a temporary file next to ``path``, fsync it, rename it over
    ``path``. On any failure (including KeyboardInterrupt) the temporary file is removed and the
    previous ``path`` is untouched; a failed write (disk full, file-size limit) becomes a
    :class:`TrainingError` naming the file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        full = _disk_full(exc)
        if full is not None:
            kept = "the previous version is intact" if path.exists() else "no earlier version existed"
            reason = (full.strerror or one_line(full)).lower()
            raise TrainingError(f"could not write {str(path)!r}: {reason}; {kept}") from None
        raise
    _fsync_dir(path.parent)


def _disk_full(exc: BaseException) -> OSError | None:
    """The out-of-space error behind ``exc``: torch.save reports a failed write as a RuntimeError
    of its own, with the OSError only in the exception's context chain."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def replace_durably(source: str | Path, target: str | Path) -> None:
    """Rename ``source`` over ``target`` (same folder) and make the rename survive a power cut."""
    os.replace(source, target)
    _fsync_dir(Path(target).parent)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda fh: fh.write(text.encode()))


def atomic_write_json(path: str | Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, allow_nan=True) + "\n")


def save_checkpoint(payload: dict[str, Any], path: str | Path) -> None:
    """Write a checkpoint of plain tensors/containers durably (see :func:`atomic_write`)."""
    atomic_write(path, lambda fh: torch.save(payload, fh))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load with ``weights_only=True``: no pickled code is ever executed."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # corrupt, truncated or foreign file: say which file
        raise CheckpointError(
            f"checkpoint {str(path)!r} could not be read ({_load_problem(exc)}); "
            "expected a file written by sparsemtl (a run's best.pt or last.pt, or a pruned model)"
        ) from None
    if not isinstance(payload, dict):
        kind = type(payload).__name__
        raise CheckpointError(f"checkpoint {str(path)!r}: expected a sparsemtl checkpoint, got a {kind}")
    return payload


def _load_problem(exc: Exception) -> str:
    """torch.load's complaint in a few words (its weights-only refusal is a paragraph)."""
    text = one_line(exc)
    if "WeightsUnpickler error:" in text:
        detail = text.split("WeightsUnpickler error:", 1)[1].strip().split(". ")[0].split(" Check the")[0]
        return f"not a plain-tensor torch file: {detail}"
    if "failed finding central directory" in text or "Invalid argument" in text or "EOF" in text:
        return f"truncated or not a torch file: {text}"
    return text


def clean_stale_temps(folder: str | Path) -> list[Path]:
    """Remove temporary files left by a process killed mid-write; returns what was removed."""
    removed = []
    for tmp in Path(folder).glob(f"{TEMP_PREFIX}*"):
        tmp.unlink(missing_ok=True)
        removed.append(tmp)
    return removed
