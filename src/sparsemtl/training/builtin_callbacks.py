"""The training procedure's own callbacks, added by the trainer from the config before the
loggers and the user's callbacks, in this order:

* :class:`EarlyStop` and :class:`TaskFreezing` react to each validation on every process (they
  end the loop or freeze a head, which all processes of a distributed run must do alike);
* :class:`SparsityLog` and :class:`Checkpointing` run on the writing rank: the first completes
  the epoch's record, the second writes it and commits the epoch in the order
  :mod:`sparsemtl.runs` recovers from (``metrics.jsonl`` line, then ``last.pt``, then
  ``best.pt``), every ``train.checkpoint_every`` epochs and after the last one; with
  ``train.async_checkpoint`` the files are written in the background while the next epoch
  trains, so a later ``on_epoch_end`` sees the line written but not necessarily the commit.

Their state lives in ``last.pt`` under the keys runs have always used (``stopper``,
``task_stoppers``), so older run directories resume.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Callable, Iterable

from ..runs.checkpoint_writer import CheckpointWriter, Written, snapshot
from ..runs.run_dir import BEST, LAST, PENDING_BEST
from ..sparsity import sparsity_report
from .callbacks import Callback
from .schedule import EarlyStopping

#: the checkpoint times of each ``metrics.jsonl`` record, summed into ``summary.json`` ``timing``
TIMING = ("checkpoint_s", "checkpoint_write_s")

if TYPE_CHECKING:
    from ..evaluation.evaluate import EvalResult
    from .trainer import Trainer


class EarlyStop(Callback):
    """Stop after ``train.patience`` epochs without a better validation monitor (0: never)."""

    all_ranks = True
    state_key = "stopper"

    def __init__(self, patience: int, higher_is_better: bool) -> None:
        self.stopper = EarlyStopping(patience, higher_is_better)

    def on_fit_start(self, trainer: Trainer) -> None:
        self._stop_if_due(trainer)  # a resumed run may be due already (train.patience may change on resume)

    def on_validation_end(self, trainer: Trainer, val: EvalResult) -> None:
        self.stopper.update(trainer.monitor.value(val))
        self._stop_if_due(trainer)

    def on_selection_restart(self, trainer: Trainer) -> None:
        self.stopper = EarlyStopping(self.stopper.patience, self.stopper.higher_is_better)

    def _stop_if_due(self, trainer: Trainer) -> None:
        if self.stopper.should_stop:
            trainer.should_stop = True

    def state_dict(self) -> dict[str, float | int]:
        return self.stopper.state_dict()

    def load_state_dict(self, state: dict[str, float | int]) -> None:
        self.stopper.load_state_dict(state)


class TaskFreezing(Callback):
    """The seed's per-task early stopping (``train.task_patience``, 0: off): a task whose
    validation loss has not improved for that many epochs leaves the total loss and its head is
    frozen (:meth:`Trainer.freeze`)."""

    all_ranks = True
    state_key = "task_stoppers"

    def __init__(self, tasks: Iterable[str], patience: int) -> None:
        self.stoppers = {task: EarlyStopping(patience, False) for task in tasks} if patience > 0 else {}

    def on_validation_end(self, trainer: Trainer, val: EvalResult) -> None:
        stalled = []
        for task, stopper in self.stoppers.items():
            if task not in trainer.frozen:
                stopper.update(val.losses[task])
                if stopper.should_stop:
                    stalled.append(task)
        if stalled:
            trainer.freeze(stalled)

    def state_dict(self) -> dict[str, dict[str, float | int]]:
        return {task: stopper.state_dict() for task, stopper in self.stoppers.items()}

    def load_state_dict(self, state: dict[str, dict[str, float | int]]) -> None:
        for task, stopper_state in state.items():
            self.stoppers[task].load_state_dict(stopper_state)


class SparsityLog(Callback):
    """Adds ``sparsity`` (zero groups and weights of the regularised layers) to the epoch record."""

    def on_epoch_end(self, trainer: Trainer, record: dict[str, Any]) -> None:
        record["sparsity"] = sparsity_report(trainer.structure, trainer.cfg.sparsity.grouping).summary()


class Checkpointing(Callback):
    """Commits epochs to the run directory: each epoch's ``metrics.jsonl`` line, then ``last.pt``
    (the commit point a resume continues from) every ``every`` epochs and after the last epoch
    of the loop, then ``best.pt`` when the epoch improved the monitor (a resume re-derives it
    from ``last.pt`` if a crash came in between). An improvement between two ``last.pt`` writes
    is staged in ``best.pending.pt`` and becomes ``best.pt`` right after the next ``last.pt``,
    so ``best.pt`` never holds a model of epochs a resume would train again.

    With ``background`` the state is copied to CPU memory (the only part that blocks the loop)
    and written by a :class:`~sparsemtl.runs.checkpoint_writer.CheckpointWriter` thread while
    the next epoch trains; ``trainer.committed`` advances only once ``last.pt`` is on disk, and
    a failed write raises its error at the next epoch end at the latest. Each record gets
    ``checkpoint_s`` (seconds the loop was blocked by checkpointing since the previous line:
    copying and waiting for the previous write, or, written synchronously, the previous
    epoch's write) and ``checkpoint_write_s`` (seconds of the writes finished since then)."""

    def __init__(self, every: int = 1, background: bool = False) -> None:
        self.every = every
        self.writer = CheckpointWriter(background)
        self.written = 0  # the last epoch whose last.pt was handed to the writer
        self.best_saved = 0  # the epoch best.pt holds once the writer is idle
        self.pending_best = 0  # an improved epoch staged in best.pending.pt (0: none)
        self._blocked = 0.0  # loop seconds spent on checkpoints since the last metrics line
        self._write_s = 0.0  # seconds of the writes finished since the last metrics line
        self.totals = dict.fromkeys(TIMING, 0.0)

    def on_fit_start(self, trainer: Trainer) -> None:
        self.written, self.best_saved = trainer.committed, trainer.best_epoch
        records = trainer.run.read_metrics()  # the committed epochs' records (a resume dropped the rest)
        self.totals = {key: sum(float(r.get(key, 0.0)) for r in records) for key in TIMING}

    def on_epoch_end(self, trainer: Trainer, record: dict[str, Any]) -> None:
        start = time.perf_counter()
        self._collect(trainer, self.writer.poll())  # a failed background write stops the run here
        epoch = record["epoch"]
        due = epoch % self.every == 0 or trainer._done()
        write = None
        if due or trainer.best_epoch == epoch:
            self._collect(trainer, self.writer.wait())  # at most one write in flight
            write = self._commit(trainer) if due else self._stage_best(trainer)
        self._blocked += time.perf_counter() - start
        record["checkpoint_s"], record["checkpoint_write_s"] = self._blocked, self._write_s
        trainer.run.append_metrics(record)  # the line before its last.pt: a resume drops uncommitted lines
        self._count()
        if write is not None:
            start = time.perf_counter()
            self.writer.submit(write, epoch if due else None)
            self._collect(trainer, self.writer.poll())  # written at once unless in the background
            self._blocked += time.perf_counter() - start

    def flush(self, trainer: Trainer) -> None:
        """After the loop, on the writing rank: commit the last epoch if a later callback ended
        the loop after this one had run, and wait until every write is on disk (the test
        evaluation reads ``best.pt``)."""
        start = time.perf_counter()
        self._collect(trainer, self.writer.wait())
        if self.written < trainer.epoch:
            self.writer.submit(self._commit(trainer), trainer.epoch)
            self._collect(trainer, self.writer.wait())
        self._blocked += time.perf_counter() - start
        self._count()

    def settle(self, trainer: Trainer) -> None:
        """Wait for a write in flight (on Ctrl-C or SIGTERM: the checkpoint a copy was taken
        for still lands) and raise its error if it failed."""
        self._collect(trainer, self.writer.wait())

    def timing(self) -> dict[str, float]:
        """Totals of the run's committed epochs, for ``summary.json``."""
        return {key: round(value, 3) for key, value in self.totals.items()}

    def _commit(self, trainer: Trainer) -> Callable[[], None]:
        """The write of ``last.pt`` for the current epoch, then of ``best.pt``: the current model
        if the epoch improved, else a model staged since the previous ``last.pt``."""
        run, epoch, staged = trainer.run, trainer.epoch, self.pending_best
        improved = trainer.best_epoch == epoch
        state, best = trainer.state_dict(), None  # best None: _finish_best saves the live model
        if self.writer.background:
            state, best = snapshot((state, trainer._model_payload() if improved else None))

        def write() -> None:
            run.save_checkpoint(LAST, state)
            self._finish_best(trainer, improved, staged, best)

        self.written, self.pending_best = epoch, 0
        self.best_saved = epoch if improved else staged or self.best_saved
        return write

    def _finish_best(self, trainer: Trainer, improved: bool, staged: int, best: dict[str, Any] | None = None) -> None:
        """``best.pt`` once ``last.pt`` is on disk: the epoch's model (``best``, its background
        copy; written synchronously, the live model) or the staged one."""
        if improved:
            if best is None:
                trainer._save_best()
            else:
                trainer.run.save_checkpoint(BEST, best)
            if staged:
                trainer.run.remove(PENDING_BEST)  # a better model came since it was staged
        elif staged:
            trainer.run.promote_pending_best()

    def _stage_best(self, trainer: Trainer) -> Callable[[], None]:
        """The write of ``best.pending.pt``: an improved epoch that is not a commit point."""
        payload = trainer._model_payload()
        if self.writer.background:
            payload = snapshot(payload)
        self.pending_best = trainer.epoch
        return lambda: trainer.run.save_checkpoint(PENDING_BEST, payload)

    def _collect(self, trainer: Trainer, written: Written | None) -> None:
        if written is None:
            return
        self._write_s += written.seconds
        if written.epoch is not None:
            trainer.committed = written.epoch

    def _count(self) -> None:
        """Add the time since the last line to the run's totals (a record or the final flush)."""
        self.totals["checkpoint_s"] += self._blocked
        self.totals["checkpoint_write_s"] += self._write_s
        self._blocked = self._write_s = 0.0
