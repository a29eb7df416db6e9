"""Trainer callbacks: what happens around the training algorithm, kept out of its loop.

The pattern users know from Lightning and Keras, kept small: a :class:`Callback` overrides the
hooks it needs, and the :class:`~sparsemtl.training.Trainer` calls every callback's hook in
order (on the writing rank only). Built in: :class:`CsvLog` and :class:`TensorBoardLog`
(``train.loggers``) and :class:`ProgressPrint` (``train.progress``); pass your own from Python
with ``train(cfg, callbacks=[...])``. ``metrics.jsonl`` is not a callback: it is part of the run
directory's commit protocol (see :mod:`sparsemtl.runs`).
"""

from __future__ import annotations

import csv
from typing import TYPE_CHECKING, Any, Callable

from ..errors import ConfigError
from ..registry import Registry

if TYPE_CHECKING:
    from ..runs import RunSummary
    from .trainer import Trainer


class Callback:
    """Hooks called by the trainer; every default does nothing."""

    def on_fit_start(self, trainer: Trainer) -> None:
        """Before the first epoch of this session (``trainer.epoch`` > 0 after a resume)."""

    def on_step_end(self, trainer: Trainer, step: int, loss: float, task_losses: dict[str, float]) -> None:
        """After each optimiser step; ``trainer.global_step`` counts steps over the whole run."""

    def on_epoch_end(self, trainer: Trainer, record: dict[str, Any]) -> None:
        """After an epoch is validated and committed; ``record`` is its ``metrics.jsonl`` line."""

    def on_fit_end(self, trainer: Trainer, summary: RunSummary) -> None:
        """After ``summary.json`` is written."""


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
