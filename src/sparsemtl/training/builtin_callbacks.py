"""The training procedure's own callbacks, added by the trainer from the config before the
loggers and the user's callbacks, in this order:

* :class:`EarlyStop` and :class:`TaskFreezing` react to each validation on every process (they
  end the loop or freeze a head, which all processes of a distributed run must do alike);
* :class:`SparsityLog` and :class:`Checkpointing` run on the writing rank: the first completes
  the epoch's record, the second commits it in the order :mod:`sparsemtl.runs` recovers from
  (``metrics.jsonl`` line, then ``last.pt``, then ``best.pt``), so every later ``on_epoch_end``
  sees a committed epoch.

Their state lives in ``last.pt`` under the keys runs have always used (``stopper``,
``task_stoppers``), so older run directories resume.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable

from ..runs.run_dir import LAST
from ..sparsity import sparsity_report
from .callbacks import Callback
from .schedule import EarlyStopping

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
    """Commits each epoch: its ``metrics.jsonl`` line, then ``last.pt`` (the commit point a
    resume continues from), then ``best.pt`` when the epoch improved the monitor (a resume
    re-derives it from ``last.pt`` if a crash came in between)."""

    def on_epoch_end(self, trainer: Trainer, record: dict[str, Any]) -> None:
        trainer.run.append_metrics(record)
        trainer.run.save_checkpoint(LAST, trainer.state_dict())
        trainer.committed = record["epoch"]
        if record["monitor"]["improved"]:
            trainer._save_best()
