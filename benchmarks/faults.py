"""Crash safety measured: training processes SIGKILLed at random moments, resumed, compared.

A tiny deterministic group-sparse run (synthetic scenes, 32x32, timm ``test_resnet`` encoder,
CPU) is first run uninterrupted as the reference. Each trial then starts the same run in a fresh
process, kills it with SIGKILL after a delay drawn (seeded) uniformly over the reference run's
wall time, records what the run directory held at that moment, and continues it with
``sparsemtl train --resume`` in another process (a run killed before its directory was created is
simply started again; one killed after ``summary.json`` needs nothing). The table says per
trial whether the resume worked, whether summary.json's test and val metrics and the zero groups
(count and the exact zero pattern of best.pt's encoder) equal the reference's bit for bit, and
whether the files are intact (last.pt loads at the final epoch, summary.json parses, no ``.tmp-*``
file is left, metrics.jsonl holds each epoch exactly once).

The fault tests (tests/training/test_faults.py) hit chosen moments exactly; this samples the
moments nobody chose. Timings are wall-clock on a possibly shared machine.

Usage: python benchmarks/faults.py [--trials 12] [--seed 0] [--epochs 4] [--threads 2] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sparsemtl.evaluation.machine import describe_machine, format_machine
from sparsemtl.runs import load_checkpoint
from sparsemtl.runs.files import TEMP_PREFIX

TINY = [
    "model.encoder=test_resnet",
    "model.head_channels=16",
    "model.aspp_rates=[1,2]",
    "model.classifier_channels=[8,8]",
    "data.image_size=[32,32]",
    "data.num_train=16",
    "data.num_val=8",
    "data.num_test=8",
    "data.batch_size=8",
    "data.eval_batch_size=8",
    "train.progress=false",
    "train.device=cpu",
    "train.task_patience=2",
    "sparsity.penalty=group_lasso",
    "sparsity.lam=0.05",
    "optim.lr=0.003",
    "train.deterministic=true",
]

# The CLI with a fixed torch thread count, so every process computes bitwise the same.
BOOT = (
    "import sys, torch; torch.set_num_threads(int(sys.argv[1])); "
    "from sparsemtl.cli import main; sys.exit(main(sys.argv[2:]))"
)


def cli(threads: int, *args: str) -> list[str]:
    return [sys.executable, "-c", BOOT, str(threads), *args]


def run_args(out: Path, name: str, epochs: int) -> list[str]:
    return ["train", *TINY, f"train.epochs={epochs}", f"train.out_dir={out}", f"train.name={name}"]


def dir_state(run: Path) -> str:
    """What the run directory held at the moment of the kill, in a few words."""
    if not run.is_dir():
        return "no run dir"
    if not (run / "config.yaml").is_file():
        return "no config.yaml"
    temps = sorted(p.name[len(TEMP_PREFIX) :].rsplit(".", 1)[0] for p in run.glob(f"{TEMP_PREFIX}*"))
    torn = f", torn temp of {'+'.join(temps)}" if temps else ""
    if (run / "summary.json").is_file():
        return "finished" + torn
    if not (run / "last.pt").is_file():
        return "no last.pt" + torn
    try:
        return f"last.pt epoch {load_checkpoint(run / 'last.pt')['epoch']}{torn}"
    except Exception as exc:  # noqa: BLE001 - a torn last.pt is exactly what this looks for
        return f"last.pt UNREADABLE ({type(exc).__name__}){torn}"


def zero_pattern(run: Path) -> dict[str, torch.Tensor]:
    """Which input-channel groups of best.pt's encoder convs are exactly zero."""
    model = load_checkpoint(run / "best.pt")["model"]
    return {k: v.flatten(1).abs().sum(0) == 0 for k, v in model.items() if k.startswith("encoder") and v.ndim == 4}


def files_intact(run: Path, epochs_run: int) -> str:
    """'yes' or the first thing found wrong."""
    try:
        last = load_checkpoint(run / "last.pt")
    except Exception as exc:  # noqa: BLE001
        return f"no: last.pt ({type(exc).__name__})"
    if last["epoch"] != epochs_run:
        return f"no: last.pt epoch {last['epoch']}"
    try:
        json.loads((run / "summary.json").read_text())
    except (OSError, ValueError) as exc:
        return f"no: summary.json ({type(exc).__name__})"
    temps = [p.name for p in run.glob(f"{TEMP_PREFIX}*")]
    if temps:
        return f"no: left {', '.join(temps)}"
    epochs = [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    if epochs != list(range(1, epochs_run + 1)):
        return f"no: metrics.jsonl epochs {epochs}"
    return "yes"


@dataclass
class Trial:
    killed_at: float
    state: str
    action: str
    resume_seconds: float
    resumed_ok: str
    metrics_equal: str
    zero_groups_equal: str
    intact: str


def compare(reference: Path, run: Path) -> tuple[str, str, str]:
    if not (run / "summary.json").is_file():
        return "-", "-", "-"
    ref, got = (json.loads((p / "summary.json").read_text()) for p in (reference, run))
    same = all(ref[k] == got[k] for k in ("test", "val", "best_epoch", "epochs_run"))
    pa, pb = zero_pattern(reference), zero_pattern(run)
    zeros = ref["sparsity"]["zero_groups"] == got["sparsity"]["zero_groups"] and all(
        torch.equal(pa[k], pb[k]) for k in pa
    )
    return ("yes" if same else "NO"), ("yes" if zeros else "NO"), files_intact(run, got["epochs_run"])


def one_trial(reference: Path, out: Path, name: str, delay: float, args: argparse.Namespace) -> Trial:
    run = out / name
    start = time.perf_counter()
    proc = subprocess.Popen(
        cli(args.threads, *run_args(out, name, args.epochs)), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        proc.wait(timeout=delay)
        killed_at, finished = time.perf_counter() - start, True  # it ended before the kill
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        killed_at, finished = time.perf_counter() - start, False
    proc.stderr.close()
    state = dir_state(run) + (" (exited before the kill)" if finished else "")
    if not run.is_dir():
        action, cmd = "train again", cli(args.threads, *run_args(out, name, args.epochs))
    elif (run / "summary.json").is_file():
        action, cmd = "none", None
    else:
        action, cmd = "resume", cli(args.threads, "train", "--resume", str(run))
    resume_seconds, resumed_ok = 0.0, "-"
    if cmd is not None:
        t0 = time.perf_counter()
        result = subprocess.run(cmd, capture_output=True, text=True)
        resume_seconds = time.perf_counter() - t0
        resumed_ok = "yes" if result.returncode == 0 else f"no: {result.stderr.strip()[:80]}"
    return Trial(killed_at, state, action, resume_seconds, resumed_ok, *compare(reference, run))


def markdown(headers: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2, help="torch threads in every training process")
    parser.add_argument("--keep", default=None, help="keep the run directories in this folder")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    out = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="sparsemtl-faults-"))
    out.mkdir(parents=True, exist_ok=True)
    try:
        start = time.perf_counter()
        subprocess.run(cli(args.threads, *run_args(out, "reference", args.epochs)), check=True, capture_output=True)
        duration = time.perf_counter() - start
        reference = out / "reference"
        rng = random.Random(args.seed)
        trials = []
        for i in range(args.trials):
            delay = rng.uniform(0.0, duration)
            trials.append(one_trial(reference, out, f"trial-{i:02d}", delay, args))
            t = trials[-1]
            print(f"trial {i}: killed at {t.killed_at:.1f} s ({t.state}); {t.action}: {t.resumed_ok}", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(out, ignore_errors=True)

    print()
    print(f"Machine: {format_machine(describe_machine())}; os.cpu_count() = {os.cpu_count()}")
    print(
        f"Run: synthetic scenes 32x32, test_resnet encoder, group lasso, {args.epochs} epochs, deterministic, CPU; "
        f"uninterrupted run {duration:.1f} s wall (process start to exit); "
        f"kill delays uniform in [0, {duration:.1f}) s, seed {args.seed}"
    )
    print()
    headers = [
        "trial",
        "killed at (s)",
        "run dir at the kill",
        "then",
        "resume (s)",
        "resumed ok",
        "metrics equal (exact)",
        "zero groups equal",
        "files intact",
    ]
    rows = [
        [
            i,
            f"{t.killed_at:.1f}",
            t.state,
            t.action,
            f"{t.resume_seconds:.1f}" if t.action != "none" else "-",
            t.resumed_ok,
            t.metrics_equal,
            t.zero_groups_equal,
            t.intact,
        ]
        for i, t in enumerate(trials)
    ]
    print(markdown(headers, rows))
    good = sum(t.metrics_equal == t.zero_groups_equal == t.intact == "yes" for t in trials)
    print(f"\n{good}/{len(trials)} trials ended exactly like the uninterrupted run with intact files.")


if __name__ == "__main__":
    main()
