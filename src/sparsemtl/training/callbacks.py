"""Trainer callbacks: what happens around the training algorithm, kept out of its loop.

The pattern users know from Lightning and Keras, kept small: a :class:`Callback` overrides the
hooks it needs, and the :class:`~sparsemtl.training.Trainer` calls every callback's hook in
order. The training procedure's own callbacks come first (early stopping, task freezing, the
epoch's sparsity and its commit to the run directory: see :mod:`.builtin_callbacks`), then the
loggers here, :class:`CsvLog` and :class:`TensorBoardLog` (``train.loggers``), and
:class:`ProgressPrint` (``train.progress``), then your own, passed from Python with
``train(cfg, callbacks=[...])``.
"""

from __future__ import annotations

import csv
from typing import TYPE_CHECKING, Any, Callable, ClassVar

from ..errors import ConfigError
from ..registry import Registry

if TYPE_CHECKING:
    from ..evaluation.evaluate import EvalResult
    from ..runs import RunSummary
    from .trainer import Trainer


class Callback:
    """Hooks called by the trainer; every default does nothing.

    A callback runs on the writing process (rank 0) only, unless ``all_ranks`` is set: one that
    changes the model or the loop (freezing a head) must run on every process of a distributed
    run. Setting ``trainer.should_stop = True`` ends training after the current epoch (on every
    process, whichever asked). A callback with state names its own entry of ``last.pt`` in
    ``state_key`` and implements :meth:`state_dict`/:meth:`load_state_dict`, so a resumed run
    continues it; the epoch's ``last.pt`` holds the state as of ``on_validation_end`` (it is
    written before the later callbacks' ``on_epoch_end``).
    """

    all_ranks: ClassVar[bool] = False
    state_key: ClassVar[str | None] = None

    def on_fit_start(self, trainer: Trainer) -> None:
        """Before the first epoch of this session (``trainer.epoch`` > 0 after a resume)."""

    def on_step_end(self, trainer: Trainer, step: int, loss: float, task_losses: dict[str, float]) -> None:
        """After each optimiser step; ``trainer.global_step`` counts steps over the whole run."""

    def on_validation_end(self, trainer: Trainer, val: EvalResult) -> None:
        """After the validation of epoch ``trainer.epoch`` (``trainer.best_epoch`` already
        updated), before its record is written: where early stopping and freezing react."""

    def on_epoch_end(self, trainer: Trainer, record: dict[str, Any]) -> None:
        """With the epoch's ``metrics.jsonl`` record. The built-in callbacks run first and commit
        the epoch (metrics line, ``last.pt``, ``best.pt``), so the loggers and yours see it
        committed, unless ``train.checkpoint_every`` skips this epoch's ``last.pt`` or
        ``train.async_checkpoint`` writes it in the background: ``trainer.committed`` is the
        last epoch whose ``last.pt`` is known to be on disk."""

    def on_selection_restart(self, trainer: Trainer) -> None:
        """The epochs so far are out of model selection (``trainer.restart_model_selection``)."""

    def on_fit_end(self, trainer: Trainer, summary: RunSummary) -> None:
        """After ``summary.json`` is written."""

    def state_dict(self) -> Any:
        """What ``last.pt`` keeps under ``state_key``."""
        return None

    def load_state_dict(self, state: Any) -> None:
        """Continue from :meth:`state_dict`'s value in a resumed ``last.pt``."""


LOGGERS: Registry[Callable[[], Callback]] = Registry("logger")


def flatten(record: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"val": {"metrics": {"depth": {"rmse": 1}}}}`` -> ``{"val/metrics/depth/rmse": 1}``
    (lists are kept whole, as text)."""
    flat: dict[str, Any] = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "/"))
        else:
            flat[name] = value
    return flat


@LOGGERS.register("csv")
class CsvLog(Callback):
    """``metrics.csv``: one row per epoch, one column per flattened ``metrics.jsonl`` field,
    rewritten from ``metrics.jsonl`` each epoch so it always matches it (also after a resume)."""

    def on_epoch_end(self, trainer: Trainer, record: dict[str, Any]) -> None:
        rows = [flatten(r) for r in trainer.run.read_metrics()]
        columns = list(dict.fromkeys(k for row in rows for k in row))
        path = trainer.run / "metrics.csv"
        with open(path, "w", newline="") as fh:
            writer = csv.DictWriter(fh, columns)
            writer.writeheader()
            writer.writerows(rows)


@LOGGERS.register("tensorboard")
class TensorBoardLog(Callback):
    """TensorBoard event files in ``<run>/tensorboard``: per step the training losses, per epoch
    lr, lambda, zero groups, task weights, per-task losses and metrics (train and val), and an
    image of the per-layer zero-group share. Needs the ``tensorboard`` extra."""

    def __init__(self) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError(
                "config key 'train.loggers': 'tensorboard' needs the tensorboard package "
                "(pip install -e '.[tensorboard]')"
            ) from None
        self._writer_class = SummaryWriter
        self.writer: Any = None

    def on_fit_start(self, trainer: Trainer) -> None:
        # purge_step hides the events a killed session wrote after the last committed epoch
        # (epoch events carry the step count at the end of their epoch, so they stay)
        self.writer = self._writer_class(str(trainer.run / "tensorboard"), purge_step=trainer.global_step + 1)

    def on_step_end(self, trainer: Trainer, step: int, loss: float, task_losses: dict[str, float]) -> None:
        self.writer.add_scalar("step/loss", loss, trainer.global_step)
        for task, value in task_losses.items():
            self.writer.add_scalar(f"step/loss/{task}", value, trainer.global_step)

    def on_epoch_end(self, trainer: Trainer, record: dict[str, Any]) -> None:
        step = trainer.global_step
        for name in ("lr", "lam"):
            self.writer.add_scalar(f"epoch/{name}", record[name], step)
        for name, value in flatten({"train": record["train"], "val": record["val"]}).items():
            if isinstance(value, (int, float)):
                self.writer.add_scalar(f"epoch/{name}", value, step)
        sparsity = record["sparsity"]
        self.writer.add_scalar("epoch/sparsity/zero_group_pct", sparsity["zero_group_pct"], step)
        self.writer.add_scalar("epoch/sparsity/zero_weight_pct", sparsity["zero_weight_pct"], step)
        self.writer.add_image("sparsity/per_layer_zero_groups", trainer.layer_sparsity_image(), step, dataformats="HW")
        self.writer.flush()

    def on_selection_restart(self, trainer: Trainer) -> None:
        """The epochs so far are out of model selection (``trainer.restart_model_selection``)."""

    def on_fit_end(self, trainer: Trainer, summary: RunSummary) -> None:
        for name, value in flatten({"test": summary.test}).items():
            if isinstance(value, (int, float)):
                self.writer.add_scalar(f"final/{name}", value, trainer.global_step)
        self.writer.close()


class ProgressPrint(Callback):
    """One line per epoch on stdout (``train.progress``)."""

    def on_epoch_end(self, trainer: Trainer, record: dict[str, Any]) -> None:
        monitor = record["monitor"]
        print(
            f"epoch {record['epoch']}/{trainer.cfg.train.epochs}: train loss {record['train']['loss']:.4f}, "
            f"val {monitor['name']} {monitor['value']:.4f}{' *' if monitor['improved'] else ''}, "
            f"zero groups {record['sparsity']['zero_group_pct']:.1f}%, {record['seconds']:.0f} s",
            flush=True,
        )


def build_callbacks(loggers: tuple[str, ...], progress: bool, extra: list[Callback] | None = None) -> list[Callback]:
    """The configured loggers, then progress printing, then the user's own callbacks."""
    built = []
    for name in loggers:
        try:
            factory = LOGGERS.get(name)
        except KeyError as exc:
            raise ConfigError(f"config key 'train.loggers': {exc.args[0]}") from None
        built.append(factory())
    if progress:
        built.append(ProgressPrint())
    return built + list(extra or [])
