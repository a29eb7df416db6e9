"""The training loop: one object that turns a :class:`Config` into a finished run directory.

Run directory contents: ``config.yaml`` (resolved config), ``metrics.jsonl`` (one line per
epoch), ``best.pt`` (model chosen on the validation monitor, never on test), ``last.pt`` (full
training state of the last epoch) and ``summary.json`` (test metrics of the best checkpoint,
sparsity report, parameter counts).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
import yaml
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset
from tqdm import tqdm

from ..config import Config, ConfigError
from ..data import build_dataset, select_tasks
from ..data.augment import AugmentedDataset, default_train_transform
from ..errors import NonFiniteLossError
from ..evaluation.baselines import load_baselines, multitask_deltas
from ..evaluation.evaluate import EvalResult, evaluate, task_loss_options
from ..models import MultiTaskModel, build_model
from ..runtime import autocast, init_process_context, seed_everything
from ..sparsity import ProxAdamW, build_grouping, model_sparsity_report, regularized_param_groups, sparsity_report
from ..tasks import WEIGHTINGS, build_weighting, get_task
from .checkpoint import load_checkpoint, save_checkpoint
from .schedule import EarlyStopping, Monitor, PenaltyScheduler, build_scheduler


@dataclass
class Loaders:
    train: DataLoader
    val: DataLoader
    test: DataLoader


class Trainer:
    """Builds data, model, loss weighting, proximal optimiser and scheduler from a config."""

    def __init__(self, cfg: Config, run_dir: str | Path | None = None) -> None:
        self.cfg = cfg
        self.context, self.device = init_process_context(cfg.train.device)
        seed_everything(cfg.train.seed, cfg.train.deterministic)
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
        self.weighting = self._build_weighting().to(self.device)
        self.structure = self._build_grouping()
        self.optimizer = self._build_optimizer()
        self.scheduler = build_scheduler(cfg.scheduler, self.optimizer, cfg.train.epochs)
        self.penalty_scheduler = PenaltyScheduler(self.optimizer, cfg.sparsity.warmup_epochs, cfg.sparsity.ramp_epochs)
        self.monitor = Monitor.parse(cfg.train.monitor, self.specs)
        # The seed's per-task early stopping: a task whose validation loss stalls for
        # `task_patience` epochs leaves the total loss and its head is frozen.
        patience = cfg.train.task_patience
        self.task_stoppers = {t: EarlyStopping(patience, False) for t in self.specs} if patience > 0 else {}
        self.frozen: list[str] = []
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.train.amp == "fp16")
        self.net = (
            DistributedDataParallel(self.model, device_ids=[self.device] if self.device.type == "cuda" else None)
            if self.context.distributed
            else self.model
        )
        self.run_dir = self.context.broadcast_path(Path(run_dir) if run_dir is not None else default_run_dir(cfg))
        if self.context.is_main:
            self._prepare_run_dir()

    # ----------------------------------------------------------------------------- building
    def _build_loaders(self, datasets: dict[str, Dataset]) -> Loaders:
        cfg, ctx = self.cfg.data, self.context
        generator = torch.Generator().manual_seed(self.cfg.train.seed)
        if ctx.distributed:
            sampler = DistributedSampler(
                datasets["train"], ctx.world_size, ctx.rank, shuffle=True, seed=self.cfg.train.seed, drop_last=True
            )
            train = DataLoader(
                datasets["train"],
                cfg.batch_size,
                sampler=sampler,
                num_workers=cfg.num_workers,
                drop_last=True,
                pin_memory=self.device.type == "cuda",
            )
        else:
            train = DataLoader(
                datasets["train"],
                cfg.batch_size,
                shuffle=True,
                generator=generator,
                num_workers=cfg.num_workers,
                drop_last=True,
                pin_memory=self.device.type == "cuda",
            )

        def eval_loader(ds: Dataset) -> DataLoader:
            # Shard without padding so distributed metrics count every sample exactly once.
            shard = Subset(ds, range(ctx.rank, len(ds), ctx.world_size)) if ctx.distributed else ds
            return DataLoader(
                shard,
                cfg.eval_batch_size,
                shuffle=False,
                num_workers=cfg.num_workers,
                pin_memory=self.device.type == "cuda",
            )

        return Loaders(train, eval_loader(datasets["val"]), eval_loader(datasets["test"]))

    def _build_weighting(self) -> torch.nn.Module:
        cfg = self.cfg.loss
        if cfg.weighting not in WEIGHTINGS:
            raise ConfigError(
                f"config key 'loss.weighting': unknown {cfg.weighting!r}; available: {', '.join(WEIGHTINGS.names())}"
            )
        if cfg.weights and cfg.weighting != "fixed":
            raise ConfigError("config key 'loss.weights': only used with loss.weighting=fixed")
        options = {"weights": cfg.weights} if cfg.weighting == "fixed" else {}
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
        lam = sp.lam if sp.penalty != "none" else 0.0
        penalty = "group_lasso" if sp.penalty == "none" else sp.penalty
        groups = regularized_param_groups(self.model, self.structure, lam, sp.reweight, penalty, sp.mcp_gamma)
        weighting_params = [p for p in self.weighting.parameters() if p.requires_grad]
        if weighting_params:
            groups.append({"params": weighting_params, "weight_decay": 0.0, "name": "loss_weighting"})
        return ProxAdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay)

    def _prepare_run_dir(self) -> None:
        if (self.run_dir / "summary.json").exists() or (self.run_dir / "best.pt").exists():
            raise ConfigError(f"run directory {str(self.run_dir)!r} already holds a run; choose another train.name")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.yaml").write_text(yaml.safe_dump(self.cfg.to_dict(), sort_keys=False))
        (self.run_dir / "metrics.jsonl").write_text("")
        ids = {split: list(ds.sample_ids) for split, ds in self.datasets.items() if hasattr(ds, "sample_ids")}
        if ids:  # datasets with files: record exactly which samples each split used
            (self.run_dir / "splits.json").write_text(json.dumps(ids))

    # ----------------------------------------------------------------------------- training
    def fit(self) -> dict[str, Any]:
        """Train with early stopping, then evaluate the best checkpoint on test; returns the summary."""
        cfg = self.cfg.train
        stopper = EarlyStopping(cfg.patience, self.monitor.higher_is_better)
        start = time.perf_counter()
        epoch, best_val = 0, None
        for epoch in range(1, cfg.epochs + 1):
            lam = self.penalty_scheduler.step(epoch)
            t0 = time.perf_counter()
            train_stats = self._train_epoch(epoch)
            val = self.evaluate("val")
            value = self.monitor.value(val)
            improved = stopper.update(value)
            if improved:
                best_val = val  # the best checkpoint's validation result: no need to evaluate it again
            self._stop_stalled_tasks(val)
            if improved and self.context.is_main:
                self._save("best.pt", epoch, value, full=False)
            if self.context.is_main:
                self._save("last.pt", epoch, value, full=True)
            self._step_scheduler(value)
            if self.context.is_main:
                self._log_epoch(epoch, lam, train_stats, val, value, improved, time.perf_counter() - t0)
            if stopper.should_stop or len(self.frozen) == len(self.specs):
                break
        return self._finish(epoch, stopper, time.perf_counter() - start, best_val)

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
            if not math.isfinite(loss):
                raise NonFiniteLossError(
                    f"training loss became {loss} at epoch {epoch}, step {step}; best checkpoint kept in {self.run_dir}"
                )
            n = batch["image"].shape[0]
            total_loss += loss * n
            count += n
            for name, value in task_losses.items():
                totals[name] += value * n
            bar.set_postfix(loss=f"{total_loss / count:.4f}")
        return {
            "loss": total_loss / count,
            "losses": {k: v / count for k, v in totals.items()},
            "task_weights": weights,
        }

    def _stop_stalled_tasks(self, val: EvalResult) -> None:
        """Freeze the head of every task whose validation loss stopped improving."""
        for task, task_stopper in self.task_stoppers.items():
            if task in self.frozen:
                continue
            task_stopper.update(val.losses[task])
            if task_stopper.should_stop:
                for p in self.model.heads[task].parameters():
                    p.requires_grad_(False)
                self.frozen.append(task)
        if self.frozen and self.context.distributed:  # DDP must not wait for gradients of frozen heads
            device_ids = [self.device] if self.device.type == "cuda" else None
            self.net = DistributedDataParallel(self.model, device_ids=device_ids)

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
        total, weights = self.weighting(losses, active=list(losses))
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        if self.cfg.train.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.train.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return float(total.detach()), {k: float(v.detach()) for k, v in losses.items()}, weights

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
    def _save(self, name: str, epoch: int, value: float, full: bool) -> None:
        payload: dict[str, Any] = {
            "format": "sparsemtl-checkpoint-v1",
            "epoch": epoch,
            "monitor": {"name": self.monitor.name, "value": value},
            "config": self.cfg.to_dict(),
            "task_specs": {n: s.to_dict() for n, s in self.specs.items()},
            "model": self.model.state_dict(),
            "loss_weighting": self.weighting.state_dict(),
        }
        if full:
            payload["optimizer"] = self.optimizer.state_dict()
            payload["scheduler"] = self.scheduler.state_dict() if self.scheduler is not None else None
            payload["scaler"] = self.scaler.state_dict()
        save_checkpoint(payload, self.run_dir / name)

    def _log_epoch(
        self,
        epoch: int,
        lam: float,
        train: dict[str, Any],
        val: EvalResult,
        value: float,
        improved: bool,
        seconds: float,
    ) -> None:
        report = sparsity_report(self.structure, self.cfg.sparsity.grouping)
        record = {
            "epoch": epoch,
            "lr": self.optimizer.param_groups[0]["lr"],
            "lam": lam,
            "train": train,
            "val": val.to_dict(),
            "monitor": {"name": self.monitor.name, "value": value, "improved": improved},
            "frozen_tasks": list(self.frozen),
            "sparsity": report.summary(),
            "seconds": seconds,
        }
        with open(self.run_dir / "metrics.jsonl", "a") as fh:
            fh.write(json.dumps(record, allow_nan=True) + "\n")
        if self.cfg.train.progress:
            print(
                f"epoch {epoch}/{self.cfg.train.epochs}: train loss {train['loss']:.4f}, "
                f"val {self.monitor.name} {value:.4f}{' *' if improved else ''}, "
                f"zero groups {report.zero_group_pct:.1f}%, {seconds:.0f} s",
                flush=True,
            )

    def _finish(
        self, epochs_run: int, stopper: EarlyStopping, seconds: float, val: EvalResult | None
    ) -> dict[str, Any]:
        self.context.barrier()
        if val is None or not (self.run_dir / "best.pt").exists():
            raise NonFiniteLossError(f"no epoch produced a finite validation {self.monitor.name}; nothing to evaluate")
        best = load_checkpoint(self.run_dir / "best.pt", self.device)
        self.model.load_state_dict(best["model"])
        self.weighting.load_state_dict(best["loss_weighting"])
        test = self.evaluate("test")
        report = model_sparsity_report(self.model, self.cfg.sparsity.grouping, self.cfg.sparsity.modules)
        summary = {
            "run_dir": str(self.run_dir),
            "tasks": list(self.specs),
            "frozen_tasks": list(self.frozen),
            "best_epoch": best["epoch"],
            "epochs_run": epochs_run,
            "stopped_early": stopper.should_stop,
            "monitor": best["monitor"],
            "val": val.to_dict(),
            "test": test.to_dict(),
            "sparsity": {**report.to_dict(), "settings": dataclasses.asdict(self.cfg.sparsity)},
            "parameters": self.model.parameter_counts(),
            "train_seconds": seconds,
            "device": str(self.device),
            "world_size": self.context.world_size,
            "note": "val and test are both evaluated with the best checkpoint (selected on val)",
        }
        if self.baselines:
            summary["delta"] = multitask_deltas(test.metrics, self.baselines, self.specs)
            summary["baselines"] = dict(self.cfg.train.baselines)
        if self.context.is_main:
            (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2, allow_nan=True))
            if self.cfg.train.progress and self.baselines:
                print("\n".join(d["describe"] for d in summary["delta"].values()), flush=True)
        return summary


def default_run_dir(cfg: Config) -> Path:
    """``out_dir/name``, or an informative timestamped name when none is given."""
    if cfg.train.name:
        return Path(cfg.train.out_dir) / cfg.train.name
    kind = "sparse" if cfg.sparsity.penalty != "none" and cfg.sparsity.lam > 0 else "dense"
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path(cfg.train.out_dir) / f"{cfg.data.name}-{'+'.join(cfg.tasks)}-{kind}-{stamp}"


def train(cfg: Config, run_dir: str | Path | None = None) -> dict[str, Any]:
    """Train one run from a config and return its summary (the Python API behind ``sparsemtl train``)."""
    return Trainer(cfg, run_dir).fit()
