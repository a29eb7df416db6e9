"""Run the ``sparsemtl`` CLI in a child process with one fault injected at an exact moment.

The fault tests kill real processes (SIGKILL cannot be simulated in-process), and a kill timed
from the parent is a race. This script instead patches the child itself so the fault fires at a
chosen point of the training loop, every time:

``python fault_child.py FAULT -- CLI ARGS...`` where FAULT is one of

* ``none``: no fault (a plain run with the same thread count as the others)
* ``step:EPOCH:STEP[:SIGNAL]``: send SIGNAL (``KILL`` by default, or ``TERM``) to itself when
  training step STEP (0-based) of EPOCH starts, i.e. after STEP optimiser steps of that epoch,
  once a checkpoint being written in the background (``train.async_checkpoint``) is on disk, so
  the run's last complete checkpoint is known (a kill during that write is the ``save`` fault)
* ``save:KIND:EPOCH:FRACTION``: while writing the checkpoint KIND (``last`` or ``best``) of
  EPOCH, write the first FRACTION of its bytes to the file being written, fsync, then SIGKILL
* ``evaluate:SPLIT``: SIGKILL when the evaluation of SPLIT starts (``test``: after the last
  epoch, before ``summary.json``)

The torch thread count is fixed (``--threads N``, default 2) so a run finished in another
process is bitwise comparable. ``--fsize BYTES`` limits the size of any file the process writes
(``RLIMIT_FSIZE``, with SIGXFSZ ignored so a write past it fails with EFBIG): a full disk at the
moment of the next large write. The exit status is the CLI's.
"""

from __future__ import annotations

import io
import os
import resource
import signal
import sys
from typing import Any, Callable


def _die(signum: int = signal.SIGKILL) -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signum)


def _at_step(epoch: int, step: int, signum: int) -> None:
    """Signal at the start of one training step (SIGTERM then continues until Python handles it)."""
    from sparsemtl.training import Trainer

    original = Trainer._train_step
    calls: dict[int, int] = {}

    def patched(self: Trainer, batch: Any) -> Any:
        current = self.epoch + 1  # self.epoch is the last completed epoch
        index = calls.get(current, 0)
        calls[current] = index + 1
        if current == epoch and index == step:
            self.checkpointing.writer.join()
            _die(signum)
        return original(self, batch)

    Trainer._train_step = patched


def _during_save(kind: str, epoch: int, fraction: float) -> None:
    """Tear the write of one checkpoint: ``last.pt`` payloads carry the optimiser, ``best.pt``
    payloads do not. Patching ``torch.save`` (not the project's writer) means a writer that
    wrote straight to the final path would leave that file torn."""
    import torch

    original: Callable[..., None] = torch.save

    def patched(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        if isinstance(obj, dict) and obj.get("epoch") == epoch and ("optimizer" in obj) == (kind == "last"):
            buffer = io.BytesIO()
            original(obj, buffer, *args, **kwargs)
            data = buffer.getvalue()
            fh = open(f, "wb") if isinstance(f, (str, os.PathLike)) else f
            fh.write(data[: max(1, int(len(data) * fraction))])
            fh.flush()
            os.fsync(fh.fileno())
            _die()
        original(obj, f, *args, **kwargs)

    torch.save = patched


def _at_evaluate(split: str) -> None:
    from sparsemtl.training import Trainer

    original = Trainer.evaluate

    def patched(self: Trainer, which: str) -> Any:
        if which == split:
            _die()
        return original(self, which)

    Trainer.evaluate = patched


def install(fault: str) -> None:
    kind, *args = fault.split(":")
    if kind == "none":
        return
    if kind == "step":
        signum = getattr(signal, f"SIG{args[2]}") if len(args) > 2 else signal.SIGKILL
        _at_step(int(args[0]), int(args[1]), signum)
    elif kind == "save":
        _during_save(args[0], int(args[1]), float(args[2]))
    elif kind == "evaluate":
        _at_evaluate(args[0])
    else:
        raise SystemExit(f"fault_child: unknown fault {fault!r}")


def main(argv: list[str]) -> int:
    threads = 2
    while argv[:1] in (["--threads"], ["--fsize"]):
        if argv[0] == "--threads":
            threads = int(argv[1])
        else:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (int(argv[1]), resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
        argv = argv[2:]
    if len(argv) < 2 or argv[1] != "--":
        raise SystemExit("usage: fault_child.py [--threads N] [--fsize BYTES] FAULT -- CLI ARGS...")
    import torch

    torch.set_num_threads(threads)
    install(argv[0])
    from sparsemtl.cli import main as cli_main

    return cli_main(argv[2:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
