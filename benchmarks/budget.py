"""Budget-driven sparsity against the alternatives, at the same MAC budgets, measured in one run.

Setting: configs/demo_sparse.yaml (resnet18d, output stride 8, three DeepLabV3 heads on
synthetic-scenes 64x64, AdamW, cosine LR, uncertainty loss weighting) with the `coupled` grouping
(every zero group is a removable channel), trained through the Python API on CPU. For each MAC
budget B (fraction of the dense model's MACs) three ways to a model that fits it:

A. budget-driven training: one run with `sparsity.budget.macs=B`, met by epoch E/2 and held
   while the model trains on (starting lambda `--start-lam`); E epochs.
B. the best fixed lambda of a sweep: one run per `--lams` value (E epochs each; as many runs as
   there are budgets by default, so the sweep costs what A costs in total), every run pruned; per
   budget, among the runs whose pruned model meets it, the one with the best validation monitor
   (`train.monitor`, the summed task loss: selection never looks at test). "none met (closest X%)"
   when no run meets it. The sweep is shared by all budgets.
C. Torch-Pruning: the dense model (no penalty, E epochs, shared by all budgets) pruned with
   `GroupMagnitudeImportance` (L2 group norm, mean-normalised per group) ranked globally over the
   encoder's channels (every head layer is ignored, so heads lose only the input channels the
   encoder no longer writes: the same scope as A and B's `sparsity.modules: encoder.*`); the ratio
   that brings the whole model's MACs to the budget is found by bisection (rebuilt from the dense
   weights each try), then the pruned model is fine-tuned for E epochs by a compact loop that
   mirrors the trainer: same data, task losses and label smoothing, the uncertainty weighting
   continued from the dense run, AdamW and cosine LR from the config, best epoch kept on the
   validation monitor.

Every model is reported as its pruned (A, B: `prune_run`; C: Torch-Pruning) model: MACs as % of
the dense model's, parameters, median latency at batch 1 of the BN-folded model on CPU with
`--threads` threads, test mIoU, depth RMSE and normals mean angle of the selected checkpoint, and
the training cost (epochs; wall-clock seconds of training, for C also of the ratio search). A
dense row (C's dense run) gives the reference. Results go to `--out`/results.json; `--reprint`
prints a results file again.

Usage: python benchmarks/budget.py [--budgets 0.6 0.4 0.25] [--lams 1e-5 3e-5 1e-4] [--epochs 8]
       [--num-train 384] [--threads 2] [--out DIR] [--quick] [--reprint results.json]
The defaults train 10 runs of 8 epochs: 20 minutes measured on an idle 2-core AMD EPYC with 2
threads; --quick (2 epochs, 64 training samples, 1 budget, 1 lambda) takes 1-2 minutes.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch_pruning as tp
from torch import nn
from torch.utils.data import DataLoader

from sparsemtl.config import Config, load_config
from sparsemtl.data import build_dataset
from sparsemtl.data.collate import TaskCollate
from sparsemtl.errors import ConfigError, TrainingError
from sparsemtl.evaluation.evaluate import EvalResult, evaluate, task_loss_options
from sparsemtl.evaluation.fold import fold_batchnorm
from sparsemtl.evaluation.latency import measure_latency
from sparsemtl.evaluation.machine import describe_machine, format_machine
from sparsemtl.models.complexity import count_macs, count_parameters
from sparsemtl.pruning import prune_run
from sparsemtl.runs import RunSummary, atomic_write_json, load_checkpoint, open_model
from sparsemtl.runtime import seed_everything
from sparsemtl.tables import format_table
from sparsemtl.tasks import TaskSpec, build_weighting, get_task
from sparsemtl.training import train
from sparsemtl.training.schedule import Monitor, build_scheduler

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo_sparse.yaml"
#: largest Torch-Pruning ratio tried (higher ratios empty whole layers)
MAX_RATIO = 0.95
#: bisection steps on the Torch-Pruning ratio (ratio resolution MAX_RATIO / 2**steps)
RATIO_STEPS = 12
HEADERS = ["budget", "method", "MACs %", "params", "ms b1", "mIoU", "depth rmse", "normals °", "epochs", "train s"]


@dataclass
class Loaders:
    train: DataLoader
    val: DataLoader
    test: DataLoader


# ------------------------------------------------------------------------------- shared pieces
def make_config(args: argparse.Namespace, overrides: list[str]) -> Config:
    """The base config with the benchmark's common settings, then ``overrides``."""
    common = [
        "sparsity.grouping=coupled",
        "train.progress=false",
        "train.device=cpu",
        f"train.epochs={args.epochs}",
        f"data.num_train={args.num_train}",
    ]
    if args.quick:
        common += ["data.num_val=32", "data.num_test=32"]
    return load_config(CONFIG, common + overrides)


def timed_train(cfg: Config, run_dir: Path) -> tuple[RunSummary, float]:
    """Train one run; the wall-clock seconds of the whole ``train`` call."""
    t0 = time.perf_counter()
    summary = train(cfg, run_dir)
    return summary, time.perf_counter() - t0


def latency_ms(model: nn.Module, args: argparse.Namespace) -> float:
    """Median milliseconds per batch-1 forward of the BN-folded ``model`` on CPU."""
    size = (args.size, args.size)
    folded = fold_batchnorm(model, torch.rand(1, 3, *size))
    return measure_latency(folded, size, 1, "cpu", args.threads, args.min_run_time).median * 1e3


def headline(metrics: dict[str, dict[str, float]]) -> dict[str, float]:
    return {
        "miou": metrics["segmentation"]["miou"],
        "depth_rmse": metrics["depth"]["rmse"],
        "normals_mean_angle": metrics["normals"]["mean_angle"],
    }


def measure_pruned(run_dir: Path, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Prune a finished run and measure the pruned model."""
    result = prune_run(run_dir, out)
    return {
        "macs_fraction": result.macs_after / result.macs_before,
        "params": result.params_after,
        "latency_ms": latency_ms(result.model, args),
    }


# ------------------------------------------------------------------------------- A: budget-driven
def budget_driven(args: argparse.Namespace, budget: float) -> dict[str, Any]:
    deadline = max(1, args.epochs // 2)
    cfg = make_config(
        args,
        [f"sparsity.lam={args.start_lam}", f"sparsity.budget.macs={budget}", f"sparsity.budget_epochs={deadline}"],
    )
    name = f"budget-{budget:g}"
    row = {"budget": budget, "method": "budget-driven", "epochs": str(args.epochs)}
    try:
        summary, seconds = timed_train(cfg, args.out / "runs" / name)
    except ConfigError as exc:  # e.g. a budget below what the regularised layers can reach
        return {**row, "note": f"refused: {exc}"}
    report = summary.sparsity["budget"]
    measured = measure_pruned(Path(summary.run_dir), args.out / "pruned" / f"{name}.pt", args)
    note = report["message"]
    if not math.isclose(report["achieved_fraction"], measured["macs_fraction"], rel_tol=1e-9):
        note += f" (MISMATCH: the pruned model has {measured['macs_fraction']:.4%} of the dense MACs)"
    return {
        **row,
        **measured,
        **headline(summary.test["metrics"]),
        "seconds": seconds,
        "note": note,
        "controller_fraction": report["achieved_fraction"],
        "met": report["met"],
        "lam_trajectory": [(p["step"], p["lam"], p["fraction"]) for p in report["trajectory"]],
        "run_dir": summary.run_dir,
    }


# ------------------------------------------------------------------------------- B: fixed-lambda sweep
def sweep(args: argparse.Namespace) -> list[dict[str, Any]]:
    """One fixed-lambda run per ``--lams`` value, each pruned and measured."""
    runs = []
    for lam in args.lams:
        cfg = make_config(args, [f"sparsity.lam={lam}"])
        name = f"lam-{lam:g}"
        summary, seconds = timed_train(cfg, args.out / "runs" / name)
        measured = measure_pruned(Path(summary.run_dir), args.out / "pruned" / f"{name}.pt", args)
        runs.append(
            {
                "lam": lam,
                **measured,
                **headline(summary.test["metrics"]),
                "monitor": summary.monitor,
                "seconds": seconds,
                "run_dir": summary.run_dir,
            }
        )
        print(f"  sweep lam {lam:g}: {measured['macs_fraction']:.1%} MACs", flush=True)
    return runs


def best_of_sweep(runs: list[dict[str, Any]], budget: float, monitor: Monitor, epochs: int) -> dict[str, Any]:
    """The run with the best validation monitor among those whose pruned model meets ``budget``."""
    row = {
        "budget": budget,
        "method": "best fixed lambda",
        "epochs": f"{epochs * len(runs)} (sweep)",
        "seconds": sum(r["seconds"] for r in runs),
    }
    meeting = [r for r in runs if r["macs_fraction"] <= budget]
    if not meeting:
        closest = min(r["macs_fraction"] for r in runs)
        return {**row, "macs_fraction": closest, "note": f"none met (closest {closest:.1%})"}
    best = min(meeting, key=lambda r: monitor.for_minimisation(r["monitor"]["value"]))
    keys = ("macs_fraction", "params", "latency_ms", "miou", "depth_rmse", "normals_mean_angle")
    note = f"lam {best['lam']:g} ({len(meeting)} of {len(runs)} runs met the budget)"
    return {**row, **{k: best[k] for k in keys}, "note": note, "lam": best["lam"], "run_dir": best["run_dir"]}


# ------------------------------------------------------------------------------- C: Torch-Pruning
def tp_prune(dense: nn.Module, ratio: float, size: tuple[int, int]) -> nn.Module:
    """A copy of ``dense`` with ``ratio`` of the encoder's channels removed (global L2 ranking)."""
    model = copy.deepcopy(dense)
    pruner = tp.pruner.BasePruner(
        model,
        torch.rand(1, 3, *size),
        tp.importance.GroupMagnitudeImportance(p=2),
        global_pruning=True,
        pruning_ratio=ratio,
        ignored_layers=[model.heads],
    )
    pruner.step()
    return model


def ratio_for_budget(dense: nn.Module, budget: float, size: tuple[int, int]) -> tuple[float, nn.Module] | None:
    """The smallest ratio (to the bisection's resolution) whose pruned model has at most
    ``budget`` of the dense MACs, and that model; None if even ``MAX_RATIO`` does not reach it.

    Torch-Pruning skips a group its threshold would empty, so MACs need not fall monotonically
    with the ratio: the bisection keeps a ratio that meets the budget at every step, so the
    result always meets it, though a slightly smaller ratio might too."""
    dense_macs = count_macs(dense, size)
    low, high = 0.0, MAX_RATIO
    best = tp_prune(dense, high, size)
    if count_macs(best, size) > budget * dense_macs:
        return None
    for _ in range(RATIO_STEPS):  # invariant: `high` meets the budget, `low` does not
        mid = (low + high) / 2
        model = tp_prune(dense, mid, size)
        if count_macs(model, size) <= budget * dense_macs:
            high, best = mid, model
        else:
            low = mid
    return high, best


def build_loaders(cfg: Config, specs: dict[str, TaskSpec]) -> Loaders:
    """The trainer's loaders (one process): shuffled, seeded, full batches for training."""
    data = {split: build_dataset(cfg.data, split, cfg.tasks) for split in ("train", "val", "test")}
    common = {"num_workers": cfg.data.num_workers, "collate_fn": TaskCollate(specs)}
    generator = torch.Generator().manual_seed(cfg.train.seed)
    return Loaders(
        DataLoader(data["train"], cfg.data.batch_size, shuffle=True, generator=generator, drop_last=True, **common),
        DataLoader(data["val"], cfg.data.eval_batch_size, shuffle=False, **common),
        DataLoader(data["test"], cfg.data.eval_batch_size, shuffle=False, **common),
    )


def fine_tune(
    cfg: Config, model: nn.Module, weighting_state: dict[str, Any], specs: dict[str, TaskSpec], loaders: Loaders
) -> tuple[EvalResult, int]:
    """Train ``model`` for ``train.epochs`` as the trainer would without a penalty; the best
    validation epoch's weights are loaded back. Returns the test result and that epoch."""
    seed_everything(cfg.train.seed, cfg.train.deterministic)
    device, smoothing = torch.device("cpu"), cfg.loss.label_smoothing
    weighting = build_weighting(cfg.loss.weighting, list(specs))
    weighting.load_state_dict(weighting_state)  # continued from the dense run, like the model
    groups: list[dict[str, Any]] = [{"params": [p for p in model.parameters() if p.requires_grad]}]
    extra = [p for p in weighting.parameters() if p.requires_grad]
    if extra:
        groups.append({"params": extra, "weight_decay": 0.0})
    opt = cfg.optim
    optimizer = torch.optim.AdamW(groups, lr=opt.lr, betas=opt.betas, eps=opt.eps, weight_decay=opt.weight_decay)
    scheduler = build_scheduler(cfg.scheduler, optimizer, cfg.train.epochs)
    monitor = Monitor.parse(cfg.train.monitor, specs)
    options = {name: task_loss_options(spec, smoothing) for name, spec in specs.items()}
    best_value, best_state, best_epoch = math.nan, None, 0
    for epoch in range(1, cfg.train.epochs + 1):
        model.train()
        weighting.train()
        for batch in loaders.train:
            outputs = model(batch["image"])
            losses = {
                name: get_task(spec.kind).loss(outputs[name].float(), batch[name], spec, **options[name])
                for name, spec in specs.items()
            }
            total, _ = weighting(losses, active=list(losses))
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            if cfg.train.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
            optimizer.step()
        val = evaluate(model, loaders.val, specs, device, label_smoothing=smoothing)
        value = monitor.value(val)
        if monitor.improves(value, best_value):
            best_value, best_state, best_epoch = value, copy.deepcopy(model.state_dict()), epoch
        scheduler.step()
    if best_state is None:
        raise TrainingError(f"fine-tuning produced no finite validation {monitor.name}")
    model.load_state_dict(best_state)
    return evaluate(model, loaders.test, specs, device, label_smoothing=smoothing), best_epoch


def dense_reference(args: argparse.Namespace) -> tuple[dict[str, Any], Path]:
    """Train the dense model (C's starting point); its row and run directory."""
    cfg = make_config(args, ["sparsity.penalty=none", "sparsity.lam=0"])
    summary, seconds = timed_train(cfg, args.out / "runs" / "dense")
    model = open_model(summary.run_dir).model
    row = {
        "budget": None,
        "method": "dense",
        "macs_fraction": 1.0,
        "params": count_parameters(model),
        "latency_ms": latency_ms(model, args),
        **headline(summary.test["metrics"]),
        "epochs": str(args.epochs),
        "seconds": seconds,
        "note": "",
        "run_dir": summary.run_dir,
    }
    return row, Path(summary.run_dir)


def torch_pruning(args: argparse.Namespace, budget: float, dense_row: dict[str, Any], dense_dir: Path) -> dict:
    size = (args.size, args.size)
    source = open_model(dense_dir)
    cfg, specs = source.config, source.specs
    row = {"budget": budget, "method": "Torch-Pruning + FT", "epochs": f"{args.epochs} dense + {args.epochs}"}
    t0 = time.perf_counter()
    found = ratio_for_budget(source.model, budget, size)
    if found is None:
        return {**row, "note": f"unreachable: ratio {MAX_RATIO} keeps more than {budget:.0%} of the MACs"}
    ratio, model = found
    weighting_state = load_checkpoint(dense_dir / "best.pt", "cpu")["loss_weighting"]
    test, best_epoch = fine_tune(cfg, model, weighting_state, specs, build_loaders(cfg, specs))
    seconds = time.perf_counter() - t0
    return {
        **row,
        "macs_fraction": count_macs(model, size) / count_macs(source.model, size),
        "params": count_parameters(model),
        "latency_ms": latency_ms(model, args),
        **headline(test.metrics),
        "seconds": dense_row["seconds"] + seconds,
        "note": f"ratio {ratio:.4f}, best fine-tuning epoch {best_epoch}",
        "ratio": ratio,
    }


# ------------------------------------------------------------------------------- output
def table_rows(rows: list[dict[str, Any]]) -> list[list[Any]]:
    def fmt(row: dict[str, Any], key: str, spec: str) -> str:
        value = row.get(key)
        return "-" if value is None else format(value, spec)

    return [
        [
            "-" if r["budget"] is None else f"{r['budget']:.0%}",
            r["method"],
            fmt(r, "macs_fraction", ".1%").rstrip("%"),
            fmt(r, "params", ","),
            fmt(r, "latency_ms", ".2f"),
            fmt(r, "miou", ".2f"),
            fmt(r, "depth_rmse", ".4f"),
            fmt(r, "normals_mean_angle", ".2f"),
            r["epochs"],
            fmt(r, "seconds", ".0f"),
        ]
        for r in rows
    ]


def print_results(results: dict[str, Any]) -> None:
    s = results["settings"]
    print(f"# {format_machine(results['machine'])}")
    print(
        f"# demo_sparse (resnet18d, coupled grouping), synthetic-scenes {s['size']}px, {s['num_train']} train "
        f"samples, {s['epochs']} epochs; latency: BN-folded, CPU, batch 1, {s['threads']} threads, median"
    )
    print(format_table(HEADERS, table_rows(results["rows"])))
    print("\nnotes:")
    for r in results["rows"]:
        if r.get("note"):
            budget = "-" if r["budget"] is None else f"{r['budget']:.0%}"
            print(f"  {budget} {r['method']}: {r['note']}")
    print(
        "  the fixed-lambda sweep and the dense run of Torch-Pruning are shared by every budget; "
        "their cost is counted in full in each row"
    )
    for run in results["sweep"]:
        print(f"  sweep lam {run['lam']:g}: pruned model {run['macs_fraction']:.1%} of the dense MACs")


# ------------------------------------------------------------------------------- main
def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.6, 0.4, 0.25], help="MAC fractions in (0, 1)")
    parser.add_argument(
        "--lams",
        type=float,
        nargs="+",
        default=[1e-5, 3e-5, 1e-4],
        help="fixed lambdas to sweep (on the demo: 100%, 62.5%, 15.8% of the MACs)",
    )
    parser.add_argument("--start-lam", type=float, default=1e-4, help="budget controller's starting lambda")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--num-train", type=int, default=384)
    parser.add_argument("--threads", type=int, default=2, help="torch threads for training and timing")
    parser.add_argument("--min-run-time", type=float, default=1.0, help="seconds of timing per model")
    parser.add_argument("--out", type=Path, default=None, help="results directory (default: a new temp dir)")
    parser.add_argument("--quick", action="store_true", help="smoke test: 2 epochs, 64 samples, 1 budget, 1 lambda")
    parser.add_argument("--reprint", type=Path, default=None, help="print a results.json again and exit")
    args = parser.parse_args()
    if args.quick:
        args.epochs, args.num_train, args.min_run_time = 2, 64, 0.2
        args.budgets, args.lams = args.budgets[1:2] or args.budgets[:1], args.lams[-1:]
    if not all(0 < b < 1 for b in args.budgets) or min(args.lams) <= 0 or args.start_lam <= 0:
        parser.error("--budgets take fractions in (0, 1); --lams and --start-lam numbers > 0")
    if args.epochs < 2 or args.threads < 1:
        parser.error("--epochs must be >= 2 (the budget is met by epoch E/2) and --threads >= 1")
    if args.out is None and args.reprint is None:
        args.out = Path(tempfile.mkdtemp(prefix="sparsemtl-budget-"))
    elif args.out is not None and (args.out / "runs").exists():
        parser.error(f"--out {str(args.out)!r} already holds runs; choose a new directory")
    return args


def main() -> None:
    args = parse_args()
    if args.reprint is not None:
        print_results(json.loads(args.reprint.read_text()))
        return
    torch.set_num_threads(args.threads)
    args.size = make_config(args, []).data.image_size[0]
    print(f"# results in {args.out}", flush=True)
    dense_row, dense_dir = dense_reference(args)
    print(f"  dense: {dense_row['seconds']:.0f} s", flush=True)
    sweep_runs = sweep(args)
    source = open_model(dense_dir)
    monitor = Monitor.parse(source.config.train.monitor, source.specs)
    rows = [dense_row]
    for budget in args.budgets:
        rows.append(budget_driven(args, budget))
        rows.append(best_of_sweep(sweep_runs, budget, monitor, args.epochs))
        rows.append(torch_pruning(args, budget, dense_row, dense_dir))
        print(f"  budget {budget:.0%} done", flush=True)
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "reprint")}
    results = {"machine": describe_machine(), "settings": settings, "rows": rows, "sweep": sweep_runs}
    atomic_write_json(args.out / "results.json", results)
    print()
    print_results(results)
    print(f"\nresults: {args.out / 'results.json'}")


if __name__ == "__main__":
    main()
