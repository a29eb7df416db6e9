"""Zero groups over the first epochs with ProxAdamW's two prox metrics at the same lambda.

``sparsity.prox_metric=corrected`` (the default) applies the prox in the gradient step's own
metric sqrt(v_hat) + eps; ``reference`` (the paper's code, used by configs/paper/) in
sqrt(v) + eps with v not bias-corrected, which is 1/sqrt(1 - beta2^t) times stronger at step t.
This trains the same multi-task model twice on built-in data (synthetic-scenes, same seed, data,
lambda and optimiser; only the metric differs) and shows how far the sparsity paths differ while
Adam's bias correction is far from 1: a table of zero groups % per epoch (from each run's
metrics.jsonl) and after each of the first steps (an optimiser step hook), and a PNG of both.

About 3 minutes on 2 idle CPU cores; 12 minutes measured on 2 cores shared with other work.

Usage: python benchmarks/prox_metric.py [--epochs 20] [--lam 3e-4] [--out DIR] [--encoder resnet10t]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import tempfile
import time
from pathlib import Path

import torch

import sparsemtl
from sparsemtl.training import Trainer

METRICS = ("corrected", "reference")
BETA2 = 0.999


def overrides(args: argparse.Namespace, metric: str, out: Path) -> list[str]:
    return [
        "tasks=[segmentation,depth,normals]",
        "data.name=synthetic-scenes",
        f"data.image_size=[{args.size},{args.size}]",
        f"data.num_train={args.train}",
        "data.num_val=64",
        "data.num_test=64",
        f"data.batch_size={args.batch}",
        "data.eval_batch_size=64",
        f"model.encoder={args.encoder}",
        f"model.output_stride={args.output_stride}",
        "model.head_channels=64",
        "model.aspp_rates=[1,2,3]",
        "sparsity.penalty=group_lasso",
        f"sparsity.lam={args.lam}",
        "sparsity.grouping=input_channels",
        f"sparsity.prox_metric={metric}",
        f"optim.lr={args.lr}",
        f"optim.betas=[0.9,{BETA2}]",
        "optim.eps=1.0e-6",  # the paper's
        "optim.weight_decay=1.0e-4",
        "scheduler.name=none",  # constant lr: only the metric changes between the runs
        "loss.weighting=uncertainty",
        f"train.epochs={args.epochs}",
        "train.device=cpu",
        "train.progress=false",
        f"train.out_dir={out}",
        f"train.name={metric}",
    ]


def run(args: argparse.Namespace, metric: str, out: Path) -> dict:
    """Train one run; zero groups % per epoch (metrics.jsonl) and after every optimiser step."""
    cfg = sparsemtl.load_config(None, overrides(args, metric, out))
    trainer = Trainer(cfg)
    groups = trainer.structure.num_groups
    per_step: list[float] = []

    def count(optimizer: torch.optim.Optimizer, *_: object) -> None:
        per_step.append(100.0 * int((trainer.structure.group_max_abs() == 0).sum()) / groups)

    trainer.optimizer.register_step_post_hook(count)
    t0 = time.perf_counter()
    trainer.fit()
    seconds = time.perf_counter() - t0
    lines = (trainer.run_dir / "metrics.jsonl").read_text().splitlines()
    per_epoch = [json.loads(line)["sparsity"]["zero_group_pct"] for line in lines]
    return {"groups": groups, "per_epoch": per_epoch, "per_step": per_step, "seconds": seconds}


def strength(step: int) -> float:
    """How much stronger the reference prox is at ``step`` (eps negligible)."""
    return 1.0 / math.sqrt(1.0 - BETA2**step)


def plot(results: dict[str, dict], steps_per_epoch: int, args: argparse.Namespace, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for metric, style in zip(METRICS, ("-o", "-s")):
        res = results[metric]
        left.plot(range(1, len(res["per_epoch"]) + 1), res["per_epoch"], style, label=metric, markersize=4)
        steps = range(1, len(res["per_step"]) + 1)
        right.plot([s / steps_per_epoch for s in steps], res["per_step"], label=metric, linewidth=1.2)
    left.set(xlabel="epoch", ylabel="zero groups (%)", title="end of each epoch (metrics.jsonl)")
    right.set(xlabel="epoch (per optimiser step)", ylabel="zero groups (%)", title="after every step")
    twin = right.twinx()
    total = len(results[METRICS[0]]["per_step"])
    twin.plot(
        [s / steps_per_epoch for s in range(1, total + 1)],
        [strength(s) for s in range(1, total + 1)],
        ":",
        color="grey",
        label="1/sqrt(1 - beta2^t)",
    )
    twin.set_yscale("log")
    twin.set_ylabel("reference / corrected prox strength", color="grey")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left")
    twin.legend(loc="upper right")
    fig.suptitle(
        f"ProxAdamW prox metric at the same lambda = {args.lam:g} ({args.encoder}, synthetic-scenes "
        f"{args.size}x{args.size}, {args.train} samples, batch {args.batch}, lr {args.lr:g})"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--lam", type=float, default=3e-4)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--encoder", default="resnet10t")
    parser.add_argument("--output-stride", type=int, default=16, choices=(8, 16, 32))
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--train", type=int, default=128, help="training samples")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--first-steps", type=int, default=32, help="steps covered by the per-step table")
    parser.add_argument("--every", type=int, default=2, help="stride of the per-step table")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="folder for the runs and the PNG (default: a temp dir)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = args.out or Path(tempfile.mkdtemp(prefix="sparsemtl-prox-metric-"))
    out.mkdir(parents=True, exist_ok=True)
    print(f"# machine: {platform.machine()} | {torch.get_num_threads()} torch threads | torch {torch.__version__}")
    print(
        f"# {args.encoder} OS{args.output_stride}, synthetic-scenes {args.size}x{args.size}, "
        f"{args.train} train samples, batch {args.batch}, lr {args.lr:g}, eps 1e-6, "
        f"lambda {args.lam:g}, input-channel groups"
    )

    results = {metric: run(args, metric, out) for metric in METRICS}
    steps_per_epoch = args.train // args.batch
    groups = results[METRICS[0]]["groups"]
    print(f"# {groups:,} encoder groups, {steps_per_epoch} steps per epoch")
    print(", ".join(f"{m}: {results[m]['seconds']:.0f} s" for m in METRICS))

    print("\nzero groups % at the end of each epoch")
    print(f"{'epoch':>5} {'step':>5} {'x stronger':>10} {'corrected':>10} {'reference':>10}")
    for e, (c, r) in enumerate(zip(results["corrected"]["per_epoch"], results["reference"]["per_epoch"]), 1):
        step = e * steps_per_epoch
        print(f"{e:>5} {step:>5} {strength(step):>10.2f} {c:>10.2f} {r:>10.2f}")

    print("\nzero groups % after each of the first steps")
    print(f"{'step':>5} {'x stronger':>10} {'corrected':>10} {'reference':>10}")
    first = zip(results["corrected"]["per_step"], results["reference"]["per_step"])
    for s, (c, r) in enumerate(first, 1):
        if s > args.first_steps:
            break
        if s == 1 or s % args.every == 0:
            print(f"{s:>5} {strength(s):>10.2f} {c:>10.2f} {r:>10.2f}")

    (out / "prox_metric.json").write_text(json.dumps({"args": vars(args) | {"out": str(out)}, **results}, indent=1))
    png = out / "prox_metric.png"
    plot(results, steps_per_epoch, args, png)
    print(f"\nplot: {png}\nnumbers: {out / 'prox_metric.json'}")


if __name__ == "__main__":
    main()
