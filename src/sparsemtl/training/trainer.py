"""The training loop: one object that turns a :class:`Config` into a finished run directory.

The loop is the algorithm: train an epoch, validate, keep the best epoch, step the LR; what
reacts to it is a callback (:mod:`.builtin_callbacks`, added from the config): early stopping,
per-task freezing, and the commit. The run directory (:class:`sparsemtl.runs.RunDir`) is owned
by :mod:`sparsemtl.runs`; the trainer writes through it. After every epoch the metrics line is
appended, then (every ``train.checkpoint_every`` epochs and after the last one; from a CPU copy
in the background with ``train.async_checkpoint``) ``last.pt`` (the full training state: model,
optimiser with the prox warm start, LR scheduler, loss weighting, the callbacks' state such as
early stopping and per-task stoppers, frozen heads, GradScaler, every RNG, the best validation
result) is written atomically: that is the commit point :func:`resume` continues from.
``best.pt`` is written after it, and re-derived from ``last.pt`` on resume if a crash came in
between (see :class:`.builtin_callbacks.Checkpointing`).
"""

from __future__ import annotations

import dataclasses
import math
import signal
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator

import torch
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset
from tqdm import tqdm

from ..config import Config, ConfigError, apply_overrides, config_from_dict
from ..data import build_dataset, select_tasks
from ..data.augment import AugmentedDataset, default_train_transform
from ..data.check import DataCheckReport, check_data
from ..data.collate import TaskCollate
from ..errors import DataError, NonFiniteLossError, RunError, TrainingError, one_line
from ..evaluation.baselines import load_baselines, multitask_deltas
from ..evaluation.evaluate import EvalResult, evaluate, task_loss_options
from ..models import MultiTaskModel, build_model
from ..runs import CHECKPOINT_FORMAT, RunDir, RunSummary, check_resume_config, load_checkpoint
from ..runs.run_dir import BEST, DATA_CHECK, LAST, SPLITS
from ..runtime import autocast, init_process_context, seed_everything
from ..sparsity import ProxAdamW, build_grouping, model_sparsity_report, regularized_param_groups, sparsity_report
from ..tasks import WEIGHTINGS, build_weighting, get_task
from .budget import BudgetControl
from .builtin_callbacks import Checkpointing, EarlyStop, SparsityLog, TaskFreezing
from .callbacks import Callback, build_callbacks
from .rng import rng_state, set_rng_state
from .schedule import Monitor, PenaltyScheduler, build_scheduler


class RunInterrupted(TrainingError):
    """Ctrl-C or SIGTERM stopped training; the message says which checkpoint is complete."""

    exit_code = 130


@dataclass
class Loaders:
    train: DataLoader
    val: DataLoader
    test: DataLoader


class Trainer:
    """Builds data, model, loss weighting, proximal optimiser and scheduler from a config.

    ``run`` is the run directory to continue (``resume=True``: its ``last.pt``, if any, is
    loaded so :meth:`fit` continues after its epoch), or the path of a new run directory, or
    None for ``train.out_dir/train.name`` (a unique informative name when that is unset). A new
    directory is created only once everything has been built and checked, so a refused config
    leaves nothing behind. Only rank 0 writes.
    """

    def __init__(
        self,
        cfg: Config,
        run: RunDir | str | Path | None = None,
        resume: bool = False,
        callbacks: list[Callback] | None = None,
    ) -> None:
        self.cfg = cfg
        self.context, self.device = init_process_context(cfg.train.device)
        configured = build_callbacks(cfg.train.loggers, cfg.train.progress, callbacks)  # before reading any data
        seed_everything(cfg.train.seed, cfg.train.deterministic)
        self.data_check = self._check_data()
        datasets = {split: build_dataset(cfg.data, split, cfg.tasks) for split in ("train", "val", "test")}
        if len(datasets["train"]) < cfg.data.batch_size * self.context.world_size:
            raise ConfigError(
                f"config key 'data.batch_size': {cfg.data.batch_size} is larger than the "
                f"training split ({len(datasets['train'])} samples)"
            )
        if cfg.data.augment:
            kinds = {name: spec.kind for name, spec in datasets["train"].task_specs.items()}
            datasets["train"] = AugmentedDataset(datasets["train"], default_train_transform(kinds), cfg.data.seed)
        self.datasets = datasets
        self.specs = select_tasks(datasets["train"], cfg.tasks)
        self.baselines = load_baselines(cfg.train.baselines, self.specs)
        self.loaders = self._build_loaders(datasets)
        self.model: MultiTaskModel = build_model(cfg.model, self.specs).to(self.device)
        if cfg.data.batch_size < 2 and any(isinstance(m, _BatchNorm) for m in self.model.modules()):
            raise ConfigError(
                f"config key 'data.batch_size': expected >= 2 per process (the model has BatchNorm layers, "
                f"which cannot train on one sample), got {cfg.data.batch_size}"
            )
        self.weighting = self._build_weighting().to(self.device)
        self.structure = self._build_grouping()
        self.optimizer = self._build_optimizer()
        self.scheduler = build_scheduler(cfg.scheduler, self.optimizer, cfg.train.epochs)
        self.penalty_scheduler = PenaltyScheduler(self.optimizer, cfg.sparsity.warmup_epochs, cfg.sparsity.ramp_epochs)
        self.monitor = Monitor.parse(cfg.train.monitor, self.specs)
        self.budget = BudgetControl(cfg) if cfg.sparsity.budget is not None else None
        self.checkpointing = Checkpointing(cfg.train.checkpoint_every, cfg.train.async_checkpoint)
        procedure = [
            EarlyStop(cfg.train.patience, self.monitor.higher_is_better),
            TaskFreezing(self.specs, cfg.train.task_patience),
            *([self.budget] if self.budget is not None else []),
            SparsityLog(),
            self.checkpointing,
        ]
        _check_state_keys(procedure + configured)
        self.callbacks = [c for c in procedure + configured if c.all_ranks or self.context.is_main]
        self.should_stop = False  # set by a callback: end training after this epoch
        self.frozen: list[str] = []  # tasks out of the loss, their heads frozen
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.train.amp == "fp16")
        self.net = self._wrap()
        if self.budget is not None:
            self.budget.prepare(self)
        if not resume and self.context.is_main:
            run = new_run(cfg, run)
        self.run = run if self.context.is_main else None
        self.run_path = self.context.broadcast_path(run.path if run is not None else Path())
        self.epoch = 0  # last completed epoch
        self.global_step = 0  # optimiser steps over the whole run
        self.committed = 0  # last epoch whose last.pt is on disk
        self.best_epoch = 0
        self.best_val: EvalResult | None = None
        self.best_value = math.nan  # the monitored value of the best epoch
        self.seconds = 0.0  # training time of earlier sessions of this run
        self.resumed = 0
        if resume:
            self._resume()
        elif self.context.is_main:
            self._write_run_files()

    # ----------------------------------------------------------------------------- building
    def _build_loaders(self, datasets: dict[str, Dataset]) -> Loaders:
        cfg, ctx = self.cfg.data, self.context
        common: dict[str, Any] = {
            "num_workers": cfg.num_workers,
            "pin_memory": self.device.type == "cuda",
            "collate_fn": TaskCollate(self.specs),  # each task's targets batched by their kind
        }
        if ctx.distributed:
            sampler = DistributedSampler(
                datasets["train"], ctx.world_size, ctx.rank, shuffle=True, seed=self.cfg.train.seed, drop_last=True
            )
            train = DataLoader(datasets["train"], cfg.batch_size, sampler=sampler, drop_last=True, **common)
        else:
            generator = torch.Generator().manual_seed(self.cfg.train.seed)
            train = DataLoader(
                datasets["train"], cfg.batch_size, shuffle=True, generator=generator, drop_last=True, **common
            )

        def eval_loader(ds: Dataset) -> DataLoader:
            # Shard without padding so distributed metrics count every sample exactly once.
            shard = Subset(ds, range(ctx.rank, len(ds), ctx.world_size)) if ctx.distributed else ds
            return DataLoader(shard, cfg.eval_batch_size, shuffle=False, **common)

        return Loaders(train, eval_loader(datasets["val"]), eval_loader(datasets["test"]))

    def _build_weighting(self) -> torch.nn.Module:
        cfg = self.cfg.loss
        if cfg.weighting not in WEIGHTINGS:
            raise ConfigError(
                f"config key 'loss.weighting': unknown {cfg.weighting!r}; available: {', '.join(WEIGHTINGS.names())}"
            )
        options = {"weights": cfg.weights} if cfg.weighting == "fixed" else {}
        if cfg.weighting == "dwa":  # DWA counts its epochs in steps
            options = {"steps_per_epoch": len(self.loaders.train)}
        if getattr(WEIGHTINGS.get(cfg.weighting), "needs_gradients", False) and self.context.distributed:
            raise ConfigError(
                f"config key 'loss.weighting': {cfg.weighting!r} combines per-task gradients itself, "
                "which distributed (DDP) training does not support; use one process"
            )
        try:
            return build_weighting(cfg.weighting, list(self.specs), **options)
        except ValueError as exc:
            raise ConfigError(f"config key 'loss.weights': {exc}") from None

    def _build_grouping(self):
        cfg = self.cfg.sparsity
        try:
            return build_grouping(cfg.grouping, self.model, cfg.modules)
        except KeyError as exc:
            raise ConfigError(f"config key 'sparsity.grouping': {exc.args[0]}") from None
        except ValueError as exc:
            raise ConfigError(f"config key 'sparsity.modules': {exc}") from None

    def _build_optimizer(self) -> ProxAdamW:
        cfg, sp = self.cfg.optim, self.cfg.sparsity
        groups = regularized_param_groups(self.model, self.structure, sp.lam, sp.reweight, sp.penalty, sp.mcp_gamma)
        weighting_params = [p for p in self.weighting.parameters() if p.requires_grad]
        if weighting_params:
            groups.append({"params": weighting_params, "weight_decay": 0.0, "name": "loss_weighting"})
        return ProxAdamW(
            groups,
            lr=cfg.lr,
            betas=cfg.betas,
            eps=cfg.eps,
            weight_decay=cfg.weight_decay,
            prox_metric=sp.prox_metric,
            native_prox=cfg.native_prox,
        )

    def _wrap(self) -> torch.nn.Module:
        """The model as the training step calls it: DDP-wrapped in a distributed run."""
        if not self.context.distributed:
            return self.model
        return DistributedDataParallel(self.model, device_ids=[self.device] if self.device.type == "cuda" else None)

    def _check_data(self) -> DataCheckReport | None:
        """The pre-flight pass over every data file (``data.check``): a corrupt test image or a
        millimetre depth tree stops the run now, not after the last epoch."""
        if not self.cfg.data.check:
            return None
        report = check_data(self.cfg.data, self.cfg.tasks, raise_errors=False)
        if self.cfg.train.progress and self.context.is_main:
            print(report.summary(), flush=True)
        if not report.ok:
            raise DataError(report.failure())
        return report

    def _write_run_files(self) -> None:
        self.run.write_config(self.cfg)
        if self.data_check is not None:
            self.run.write_json(DATA_CHECK, self.data_check.to_dict())
        ids = {split: list(ds.sample_ids) for split, ds in self.datasets.items() if hasattr(ds, "sample_ids")}
        if ids:  # datasets with files: record exactly which samples each split used
            self.run.write_json(SPLITS, ids)

    # ----------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """The full training state after :attr:`epoch` (what ``last.pt`` holds)."""
        return {
            **self._model_payload(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict(),
            **{c.state_key: c.state_dict() for c in self.callbacks if c.state_key is not None},
            "frozen": list(self.frozen),
            "best_epoch": self.best_epoch,
            "best_val": self.best_val.to_dict() if self.best_val is not None else None,
            "seconds": self.seconds,
            "global_step": self.global_step,
            "resumed": self.resumed,
            "rng": rng_state(self.loaders.train.generator),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.weighting.load_state_dict(state["loss_weighting"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        for callback in self.callbacks:
            if callback.state_key is not None:
                callback.load_state_dict(state[callback.state_key])
        self.freeze(list(state["frozen"]))
        self.epoch = int(state["epoch"])
        self.best_epoch = int(state["best_epoch"])
        self.best_val = EvalResult.from_dict(state["best_val"]) if state["best_val"] is not None else None
        self.best_value = float(state["monitor"]["value"])
        self.seconds = float(state["seconds"])
        self.global_step = int(state.get("global_step", self.epoch * len(self.loaders.train)))
        self.resumed = int(state["resumed"])
        set_rng_state(state["rng"], self.loaders.train.generator)

    def _resume(self) -> None:
        """Continue after the last complete epoch of the run directory (from scratch if none)."""
        last = self.run_path / LAST
        if not last.is_file():  # killed before the first epoch was committed: start afresh
            if self.context.is_main:
                self.run.keep_metrics_until(0)
                self.run.settle_pending_best(0)
                self._write_run_files()
            return
        try:
            # on the CPU: RNG states must stay CPU tensors; model and optimiser state are copied
            # onto the parameters' device by load_state_dict
            self.load_state_dict(load_checkpoint(last, "cpu"))
        except (KeyError, RuntimeError, ValueError, TypeError) as exc:
            raise RunError(f"{str(last)!r} cannot be resumed: {one_line(exc)}") from None
        self.resumed += 1
        self.committed = self.epoch
        if self.context.is_main:
            if self.data_check is not None:
                self.run.write_json(DATA_CHECK, self.data_check.to_dict())
            self.run.keep_metrics_until(self.epoch)
            self.run.settle_pending_best(self.best_epoch)
            best_on_disk = self.run.load_checkpoint(BEST)["epoch"] if self.run.has(BEST) else None
            if self.best_epoch == self.epoch and best_on_disk != self.epoch:
                self._save_best()  # the crash came between last.pt and best.pt

    # ----------------------------------------------------------------------------- training
    def fit(self) -> RunSummary:
        """Train with early stopping from the epoch after :attr:`epoch`, then evaluate the best
        checkpoint on test; returns the summary. Ctrl-C and SIGTERM stop with a
        :class:`RunInterrupted` that names the last complete checkpoint."""
        try:
            with _sigterm_as_interrupt():
                try:
                    self._call("on_fit_start")
                    self._epochs()
                    if self.context.is_main:
                        self.checkpointing.flush(self)  # the last epoch committed and on disk
                    summary = self._finish()
                    self._call("on_fit_end", summary)
                    return summary
                except KeyboardInterrupt:
                    self.checkpointing.settle(self)  # a checkpoint being written still lands
                    raise RunInterrupted(self._interrupted_message()) from None
        finally:
            self.checkpointing.writer.join()  # never leave the run (and its lock) mid-write
            if self.run is not None:
                self.run.release()

    @property
    def run_dir(self) -> Path:
        return self.run_path

    def _epochs(self) -> None:
        """Train an epoch, validate, keep the best epoch, step the LR; the callbacks react
        (early stopping and task freezing on validation) and commit the epoch (at its end)."""
        while not self._done():
            epoch = self.epoch + 1
            lam = self.penalty_scheduler.step(epoch)
            t0 = time.perf_counter()
            train_stats = self._train_epoch(epoch)
            val = self.evaluate("val")
            self.epoch = epoch
            value = self.monitor.value(val)
            improved = self.monitor.improves(value, self.best_value)
            if improved:  # the best epoch's validation is kept: no need to evaluate it again
                self.best_epoch, self.best_val, self.best_value = epoch, val, value
            self._call("on_validation_end", val)
            self._step_scheduler(value)
            seconds = time.perf_counter() - t0
            self.seconds += seconds
            self._call("on_epoch_end", self._record(lam, train_stats, val, value, improved, seconds))
            self.should_stop = self._stop_agreed()

    def _call(self, hook: str, *args: Any) -> None:
        for callback in self.callbacks:
            getattr(callback, hook)(self, *args)

    def _stop_agreed(self) -> bool:
        """Whether a callback on any process asked to stop, so that all leave the loop together
        (the all-reduce is also the end-of-epoch barrier while rank 0 writes)."""
        flag = self.context.all_reduce_(torch.tensor([float(self.should_stop)]))
        return bool(flag.item() > 0)

    def _done(self) -> bool:
        """The epoch budget is spent, a callback asked to stop, or every task's head is frozen."""
        every_head_frozen = bool(self.specs) and len(self.frozen) == len(self.specs)
        return self.epoch >= self.cfg.train.epochs or self.should_stop or every_head_frozen

    def _interrupted_message(self) -> str:
        where = str(self.run_path)
        if self.committed == 0:
            return f"training interrupted ({where}): no epoch was completed, so there is no checkpoint yet"
        return (
            f"training interrupted ({where}): the last complete checkpoint is epoch {self.committed} in last.pt; "
            f"continue with 'sparsemtl train --resume {where}'"
        )

    def _train_epoch(self, epoch: int) -> dict[str, Any]:
        self.net.train()
        for task in self.frozen:  # frozen heads keep their BatchNorm statistics too
            self.model.heads[task].eval()
        sampler = self.loaders.train.sampler
        if isinstance(sampler, DistributedSampler):
            sampler.set_epoch(epoch)
        if isinstance(self.datasets["train"], AugmentedDataset):
            self.datasets["train"].set_epoch(epoch)  # fresh, reproducible augmentations per epoch
        totals = {name: 0.0 for name in self.specs}
        total_loss, count = 0.0, 0
        weights: dict[str, float] = {}
        bar = tqdm(
            self.loaders.train,
            desc=f"epoch {epoch}",
            leave=False,
            disable=None if self.cfg.train.progress and self.context.is_main else True,  # None: off when not a TTY
        )
        for step, batch in enumerate(bar):
            loss, task_losses, weights = self._train_step(batch)
            self.global_step += 1
            if not math.isfinite(loss):
                kept = (
                    f"the best checkpoint (epoch {self.checkpointing.best_saved}) is kept in {self.run.path / BEST}"
                    if self.checkpointing.best_saved and self.run is not None
                    else "no checkpoint was written before it"
                )
                raise NonFiniteLossError(f"training loss became {loss} at epoch {epoch}, step {step}; {kept}")
            n = batch["image"].shape[0]
            total_loss += loss * n
            count += n
            for name, value in task_losses.items():
                totals[name] += value * n
            bar.set_postfix(loss=f"{total_loss / count:.4f}")
            self._call("on_step_end", step, loss, task_losses)
        return {
            "loss": total_loss / count,
            "losses": {k: v / count for k, v in totals.items()},
            "task_weights": weights,
        }

    def freeze(self, tasks: list[str]) -> None:
        """Take ``tasks`` out of training: their losses leave the total and their heads (weights
        and BatchNorm statistics) stop changing. A distributed model is re-wrapped, once for all
        of them, so that DDP stops waiting for their gradients."""
        if not tasks:
            return
        for task in tasks:
            for p in self.model.heads[task].parameters():
                p.requires_grad_(False)
            self.frozen.append(task)
        if self.context.distributed:
            self.net = self._wrap()

    def _train_step(self, batch: dict[str, torch.Tensor]) -> tuple[float, dict[str, float], dict[str, float]]:
        images = batch["image"].to(self.device, non_blocking=True)
        with autocast(self.device, self.cfg.train.amp):
            outputs = self.net(images)
        losses = {}
        for name, spec in self.specs.items():
            if name in self.frozen:
                continue
            target = batch[name].to(self.device, non_blocking=True)
            options = task_loss_options(spec, self.cfg.loss.label_smoothing)
            losses[name] = get_task(spec.kind).loss(outputs[name].float(), target, spec, **options)
        self.optimizer.zero_grad(set_to_none=True)
        if getattr(self.weighting, "needs_gradients", False):  # it writes the combined gradients itself
            shared = {id(p) for p in self.model.encoder.parameters()}
            total, weights = self.weighting.backward(
                losses,
                self.model.encoder.parameters(),
                [p for p in self.model.parameters() if id(p) not in shared],
                active=list(losses),
                scale=self.scaler.scale,
            )
        else:
            total, weights = self.weighting(losses, active=list(losses))
            self.scaler.scale(total).backward()
        if self.cfg.train.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.train.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return float(total.detach()), {k: float(v.detach()) for k, v in losses.items()}, weights

    def restart_model_selection(self) -> None:
        """Forget the best epoch so far: the models before now may not be selected (e.g. they
        exceed a sparsity budget). Callbacks hear it (early stopping starts counting again)."""
        self.best_epoch, self.best_val, self.best_value = 0, None, math.nan
        self._call("on_selection_restart")

    def _step_scheduler(self, value: float) -> None:
        if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            self.scheduler.step(self.monitor.for_minimisation(value))
        elif self.scheduler is not None:
            self.scheduler.step()

    def evaluate(self, split: str) -> EvalResult:
        loader = getattr(self.loaders, split)
        return evaluate(
            self.model, loader, self.specs, self.device, self.cfg.train.amp, self.cfg.loss.label_smoothing, self.context
        )

    # ----------------------------------------------------------------------------- outputs
    def _model_payload(self) -> dict[str, Any]:
        """What every checkpoint holds: enough to rebuild and use the model on its own."""
        return {
            "format": CHECKPOINT_FORMAT,
            "epoch": self.epoch,
            "monitor": {"name": self.monitor.name, "value": self.best_value},
            "config": self.cfg.to_dict(),
            "task_specs": {n: s.to_dict() for n, s in self.specs.items()},
            "model": self.model.state_dict(),
            "loss_weighting": self.weighting.state_dict(),
        }

    def _save_best(self) -> None:
        """Called right after the best epoch's last.pt: the current model is the best one."""
        self.run.save_checkpoint(BEST, self._model_payload())

    def _record(
        self, lam: float, train: dict[str, Any], val: EvalResult, value: float, improved: bool, seconds: float
    ) -> dict[str, Any]:
        """The epoch's ``metrics.jsonl`` line as the loop knows it (the callbacks add to it and
        write it)."""
        return {
            "epoch": self.epoch,
            "step": self.global_step,
            "lr": self.optimizer.param_groups[0]["lr"],
            "lam": lam,
            "train": train,
            "val": val.to_dict(),
            "monitor": {"name": self.monitor.name, "value": value, "improved": improved},
            "frozen_tasks": list(self.frozen),
            "seconds": seconds,
        }

    def layer_sparsity_image(self, height: int = 64, bar: int = 4) -> torch.Tensor:
        """Per-layer zero-group share as a bar chart image (height x layers*bar, values 0..1):
        one bar per regularised layer, in model order, full height = every group zero."""
        report = sparsity_report(self.structure, self.cfg.sparsity.grouping)
        shares = torch.tensor([layer.zero_group_pct / 100.0 for layer in report.layers])
        levels = torch.arange(height, 0, -1, dtype=torch.float32).unsqueeze(1) / height  # top row = 1
        filled = (levels <= shares.unsqueeze(0) + 1e-9).float()
        return filled.repeat_interleave(bar, dim=1)

    def _finish(self) -> RunSummary:
        """Evaluate the best checkpoint on test and write ``summary.json``."""
        self.context.barrier()
        if self.best_val is None:
            raise NonFiniteLossError(
                f"no epoch produced a finite validation {self.monitor.name}; there is no best checkpoint to evaluate"
            )
        best = load_checkpoint(self.run_path / BEST, self.device)
        self.model.load_state_dict(best["model"])
        self.weighting.load_state_dict(best["loss_weighting"])
        test = self.evaluate("test")
        summary = RunSummary(
            run_dir=str(self.run_path),
            tasks=list(self.specs),
            task_kinds={name: spec.kind for name, spec in self.specs.items()},
            frozen_tasks=list(self.frozen),
            best_epoch=int(best["epoch"]),
            epochs_run=self.epoch,
            stopped_early=self.should_stop,
            monitor=best["monitor"],
            val=self.best_val.to_dict(),
            test=test.to_dict(),
            sparsity={**self._final_sparsity(), "settings": dataclasses.asdict(self.cfg.sparsity)},
            parameters=self.model.parameter_counts(),
            train_seconds=self.seconds,
            timing=self.checkpointing.timing(),
            device=str(self.device),
            world_size=self.context.world_size,
            resumed=self.resumed,
            data_check=self._data_check_summary(),
        )
        if self.baselines:
            summary.delta = multitask_deltas(test.metrics, self.baselines, self.specs)
            summary.baselines = dict(self.cfg.train.baselines)
        if self.context.is_main:
            self.run.write_summary(summary)
            if self.cfg.train.progress and self.baselines:
                print("\n".join(d["describe"] for d in summary.delta.values()), flush=True)
        return summary

    def _final_sparsity(self) -> dict[str, Any]:
        """Zero groups of the best model, and for a sparse run which channels could be removed.
        A dense run needs no channel analysis; a model the analysis cannot handle is reported as
        such instead of failing a finished run."""
        sp = self.cfg.sparsity
        if not sp.enabled:
            return {**sparsity_report(self.structure, sp.grouping).to_dict(), "channel_analysis": "not run (dense)"}
        try:
            report = model_sparsity_report(self.model, sp.grouping, sp.modules)
        except Exception as exc:  # noqa: BLE001 - any model the tracer cannot prove: keep the run, say why
            fallback = sparsity_report(self.structure, sp.grouping).to_dict()
            return {**fallback, "channel_analysis": f"unavailable: {type(exc).__name__}: {one_line(exc)}"}
        result = {**report.to_dict(), "channel_analysis": "done"}
        if self.budget is not None:
            result["budget"] = self.budget.report(self)
            if self.cfg.train.progress and self.context.is_main:
                print(result["budget"]["message"], flush=True)
        return result

    def _data_check_summary(self) -> dict[str, Any]:
        if self.data_check is None:
            return {"checked": False}
        report = self.data_check
        skipped = len(report.bad_samples)
        return {"checked": True, "ok": report.ok, "bad_samples_skipped": skipped, "seconds": round(report.seconds, 3)}


#: What ``last.pt`` holds besides the callbacks' states (``Trainer.state_dict``).
TRAINER_STATE_KEYS = frozenset(
    {"format", "epoch", "monitor", "config", "task_specs", "model", "loss_weighting", "optimizer", "scheduler"}
    | {"scaler", "frozen", "best_epoch", "best_val", "seconds", "global_step", "resumed", "rng"}
)


def _check_state_keys(callbacks: list[Callback]) -> None:
    """Two states under one ``last.pt`` key would overwrite each other: refuse it up front."""
    seen: set[str] = set()
    for callback in callbacks:
        key = callback.state_key
        if key is not None and (key in seen or key in TRAINER_STATE_KEYS):
            raise TrainingError(
                f"callback {type(callback).__name__} keeps its state under {key!r}, which another callback "
                "or the trainer already uses in last.pt; give it its own state_key"
            )
        if key is not None:
            seen.add(key)


def default_run_name(cfg: Config) -> str:
    """An informative name: dataset, tasks, dense/sparse and the start time (a suffix is added
    by :meth:`RunDir.create` when another run took the name first)."""
    kind = "sparse" if cfg.sparsity.enabled else "dense"
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"{cfg.data.name}-{'+'.join(cfg.tasks)}-{kind}-{stamp}"


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (preemption, ``kill``) stops training like Ctrl-C: between two atomic writes."""

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def new_run(cfg: Config, path: str | Path | None = None) -> RunDir:
    """A new, locked run directory: ``path``, or ``train.out_dir/train.name``, or a unique
    informative name in ``train.out_dir``."""
    if path is None:
        return RunDir.create(cfg.train.out_dir, cfg.train.name, default_run_name(cfg))
    path = Path(path)
    return RunDir.create(path.parent, path.name, path.name)


def train(cfg: Config, run_dir: str | Path | None = None, callbacks: list[Callback] | None = None) -> RunSummary:
    """Train one run from a config into a new run directory (``run_dir``, or
    ``train.out_dir/train.name``, or an informative unique name) and return its summary."""
    return Trainer(cfg, run_dir, callbacks=callbacks).fit()


def resume(
    run_dir: str | Path, overrides: list[str] | None = None, callbacks: list[Callback] | None = None
) -> RunSummary:
    """Continue an interrupted run from its last complete epoch with all training state.

    Only the keys in :data:`sparsemtl.runs.RESUME_MAY_CHANGE` may be overridden; a finished run
    cannot be resumed. A run killed after its last epoch but before ``summary.json`` finishes by
    evaluating its best checkpoint."""
    run = RunDir.open(run_dir)
    if run.finished:
        raise RunError(f"run {str(run.path)!r} has already finished (summary.json exists); start a new run instead")
    cfg = config_from_dict(apply_overrides(run.read_config_dict(), list(overrides or [])))
    check_resume_config(run, cfg)
    context, _ = init_process_context(cfg.train.device)
    if context.is_main:
        run.acquire()
        run.write_config(cfg)
    return Trainer(cfg, run, resume=True, callbacks=callbacks).fit()
