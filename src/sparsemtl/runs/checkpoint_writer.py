"""Checkpoint writes off the training loop's critical path.

A checkpoint of the paper model's full training state is about 0.8 GiB; serialising and
fsyncing it takes seconds. :func:`snapshot` copies the state into CPU memory that nothing else
references (the blocking part, a memory copy), and :class:`CheckpointWriter` then writes it in a
background thread with the same temp + fsync + rename protocol as every other file, while
training goes on. At most one write is in flight: the next one waits for it.

The writer thread is not a daemon, so an interpreter that exits (after an exception or a second
Ctrl-C) still finishes the write it started; only SIGKILL can cut it short, and the rename
protocol then leaves the previous complete file.
"""

from __future__ import annotations

import copy
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, TypeVar

import torch

T = TypeVar("T")


def _tensors(obj: Any) -> Iterator[torch.Tensor]:
    """Every tensor inside nested dicts, lists and tuples (what checkpoints are made of)."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for value in obj.values():
            yield from _tensors(value)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            yield from _tensors(value)


def snapshot(obj: T) -> T:
    """A copy of ``obj`` whose tensors live in fresh CPU memory, so training can change the
    originals while the copy is written. Containers keep their types and attributes (a module
    state dict's ``_metadata``), and tensors that shared memory still share it (views, tied
    weights), so the copy serialises to the same bytes as CPU originals would. CUDA tensors are
    copied into pinned memory without blocking, with one synchronisation at the end."""
    storages: dict[tuple[torch.device, int], torch.UntypedStorage] = {}
    copies: dict[int, Any] = {}
    devices: set[torch.device] = set()
    for tensor in _tensors(obj):
        if id(tensor) in copies:
            continue
        source = tensor.untyped_storage()
        key = (tensor.device, source.data_ptr())
        if key not in storages:
            on_cuda = tensor.device.type == "cuda"
            raw = torch.empty(0, dtype=torch.uint8, device=tensor.device).set_(source)
            target = torch.empty(raw.shape, dtype=torch.uint8, pin_memory=on_cuda)
            target.copy_(raw, non_blocking=on_cuda)
            storages[key] = target.untyped_storage()
            if on_cuda:
                devices.add(tensor.device)
        clone = torch.empty(0, dtype=tensor.dtype).set_(
            storages[key], tensor.storage_offset(), tensor.size(), tensor.stride()
        )
        copies[id(tensor)] = clone.requires_grad_(tensor.requires_grad)
    for device in devices:
        torch.cuda.synchronize(device)
    return copy.deepcopy(obj, copies)  # tensors from the memo, everything else copied as it is


@dataclass(frozen=True)
class Written:
    """A finished checkpoint write: the epoch it commits (None for a write that commits no
    epoch) and how long it took."""

    epoch: int | None
    seconds: float


class CheckpointWriter:
    """Runs checkpoint writes one at a time: in a background thread (``background=True``) or
    at once in the caller. Either way a write's outcome is collected with :meth:`poll` or
    :meth:`wait`, which re-raise its error (disk full: the same one-line error a write in the
    training loop raises) in the caller's thread."""

    def __init__(self, background: bool) -> None:
        self.background = background
        self._thread: threading.Thread | None = None
        self._outcome: Written | BaseException | None = None

    @property
    def busy(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def submit(self, write: Callable[[], None], epoch: int | None) -> None:
        """Start ``write`` (which commits ``epoch``); the previous write must have been
        collected. Without a background thread its error propagates from here."""
        if self.busy or self._outcome is not None:
            raise RuntimeError("CheckpointWriter.submit: the previous write was not collected")
        if not self.background:
            self._outcome = _timed(write, epoch)
            if isinstance(self._outcome, BaseException):
                error, self._outcome = self._outcome, None
                raise error
            return
        self._thread = threading.Thread(target=self._run, args=(write, epoch), name="sparsemtl-checkpoint")
        self._thread.start()

    def _run(self, write: Callable[[], None], epoch: int | None) -> None:
        self._outcome = _timed(write, epoch)

    def join(self) -> None:
        """Block until no write is in flight, leaving its outcome to be collected."""
        if self._thread is not None:
            self._thread.join()

    def poll(self) -> Written | None:
        """The finished write's outcome, once (None while it runs or when there is none);
        a failed write raises its error here."""
        if self.busy:
            return None
        self._thread = None
        outcome, self._outcome = self._outcome, None
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def wait(self) -> Written | None:
        """:meth:`join`, then :meth:`poll`."""
        self.join()
        return self.poll()


def _timed(write: Callable[[], None], epoch: int | None) -> Written | BaseException:
    start = time.perf_counter()
    try:
        write()
    except BaseException as exc:  # noqa: BLE001 - handed to the training loop's thread, raised there
        return exc
    return Written(epoch, time.perf_counter() - start)
