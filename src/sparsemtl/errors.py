"""The project's error classes: every one of them reaches the user as one line.

The CLI catches :class:`SparsemtlError` and prints ``sparsemtl: error: <message>``; messages say
what is wrong, name the file, key or value concerned, and what was expected, e.g.
``config key 'optim.lr': expected a finite number > 0, got inf``. Raw exceptions from torch,
PIL, h5py or YAML are wrapped into one of these where the file they concern is known.
"""

from __future__ import annotations


class SparsemtlError(Exception):
    """Base of every error the CLI reports as one line (exit code :attr:`exit_code`)."""

    exit_code = 2


class ConfigError(SparsemtlError, ValueError):
    """A configuration value or key is invalid; the message names the key."""


class DataError(SparsemtlError, ValueError):
    """A dataset file is missing, unreadable or inconsistent; the message names it."""


class CheckpointError(SparsemtlError, ValueError):
    """A checkpoint or model file exists but cannot be read or does not match what is expected."""


class RunError(SparsemtlError):
    """A run directory cannot be created, resumed or read in the way asked (e.g. resuming a
    finished run, or with a changed config)."""


class TrainingError(SparsemtlError, RuntimeError):
    """Training could not go on (diverged, interrupted, disk full); the message says what was kept."""


class NonFiniteLossError(TrainingError):
    """Training diverged; the best checkpoint written so far is kept."""


class PruningVerificationError(SparsemtlError, ValueError):
    """A pruned model's outputs differ from the original's beyond float rounding."""


class DeltaError(SparsemtlError, ValueError):
    """Inconsistent metrics, baselines or kinds for a multi-task Delta."""


def one_line(text: object) -> str:
    """``text`` (an exception or a string) with all whitespace runs, newlines included, collapsed."""
    if isinstance(text, BaseException):
        return " ".join(str(text).split()) or type(text).__name__
    return " ".join(str(text).split())
