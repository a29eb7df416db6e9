"""What has never run on CUDA, run once on a GPU machine, with its figures in one table.

1. Training on CUDA with AMP off, fp16 (GradScaler) and bf16: a small group-sparse run each
   (synthetic-scenes, resnet18d, 64x64): finite metrics, zero groups, wall time.
2. Resume on CUDA: a deterministic run stopped by SIGTERM in epoch 2 and resumed with
   ``--resume`` against the uninterrupted run (test metrics and zero groups compared).
3. Prune the bf16 run (round-to 1 and 8) and ``sparsemtl bench`` dense vs pruned on the GPU (BN
   folded), contiguous and channels-last.
3b. A MAC budget (0.5 by epoch 2, bf16) steered on the GPU, alone and under torchrun (NCCL, one
   process: one GPU cannot host two NCCL ranks).
4. The paper model's optimiser step on the GPU: fused AdamW vs ProxAdamW (same model, batch,
   interleaved, CUDA-synchronised), and the prox alone.

Usage: python benchmarks/cuda_check.py [--out DIR] [--skip-train] (needs a CUDA device)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SMALL = [
    "--config",
    str(ROOT / "configs" / "demo_sparse.yaml"),
    "model.encoder=resnet18d",
    "data.num_train=256",
    "data.num_val=64",
    "data.num_test=64",
    "train.epochs=3",
    "train.device=cuda",
    "train.progress=false",
    "scheduler.name=none",
]


def cli(*args: str, extra: list[str] | None = None) -> subprocess.CompletedProcess:
    cmd = [*(extra or [sys.executable, "-m", "sparsemtl"]), *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def training_rows(out: Path) -> list[tuple[str, str]]:
    rows = []
    for amp in ("none", "fp16", "bf16"):
        t0 = time.perf_counter()
        result = cli("train", *SMALL, f"train.amp={amp}", f"train.out_dir={out}", f"train.name=amp-{amp}")
        seconds = time.perf_counter() - t0
        if result.returncode != 0:
            rows.append((f"train amp={amp}", f"FAILED: {result.stderr.strip().splitlines()[-1:]}"))
            continue
        s = summary(out / f"amp-{amp}")
        m = s["test"]["metrics"]
        rows.append(
            (
                f"train amp={amp} (3 epochs, {seconds:.0f} s wall incl. start)",
                f"mIoU {m['segmentation']['miou']:.2f}, depth rmse {m['depth']['rmse']:.3f}, "
                f"normals {m['normals']['mean_angle']:.1f} deg, zero groups {s['sparsity']['zero_group_pct']:.1f}%",
            )
        )
    return rows


def resume_rows(out: Path) -> list[tuple[str, str]]:
    det = [*SMALL, "train.deterministic=true", "train.amp=bf16", f"train.out_dir={out}"]
    ref = cli("train", *det, "train.name=ref")
    child = [sys.executable, str(ROOT / "tests" / "training" / "fault_child.py"), "step:2:1:TERM", "--"]
    cut = cli("train", *det, "train.name=cut", extra=child)
    again = cli("train", "--resume", str(out / "cut"))
    if ref.returncode or again.returncode:
        return [("resume on CUDA", f"FAILED: {(ref.stderr + again.stderr).strip().splitlines()[-1:]}")]
    a, b = summary(out / "ref"), summary(out / "cut")
    same = a["test"] == b["test"] and a["sparsity"]["zero_groups"] == b["sparsity"]["zero_groups"]
    return [
        ("SIGTERM in epoch 2: exit code, message", f"{cut.returncode}, {cut.stderr.strip()[:110]}"),
        (
            "resumed == uninterrupted (test metrics, zero groups)",
            "exactly equal" if same else f"DIFFER: {a['test']} vs {b['test']}",
        ),
    ]


def prune_rows(out: Path) -> list[tuple[str, str]]:
    rows = []
    for round_to in (1, 8):
        pruned = out / f"pruned-r{round_to}.pt"
        p = cli("prune", str(out / "amp-bf16"), "--out", str(pruned), "--round-to", str(round_to))
        if p.returncode:
            return rows + [(f"prune --round-to {round_to}", f"FAILED: {p.stderr.strip()[-200:]}")]
        removed = json.loads(pruned.with_suffix(".json").read_text())["removed_channels"]
        rows.append((f"prune bf16 run --round-to {round_to}", f"{removed} channels removed, verified"))
    models = [str(out / "amp-bf16"), str(out / "pruned-r1.pt"), str(out / "pruned-r8.pt")]
    for layout in ([], ["--channels-last"]):
        b = cli("bench", *models, "--device", "cuda", "--batch", "1", "16", "--min-run-time", "1", *layout)
        bench = b.stdout.strip() if b.returncode == 0 else f"FAILED: {b.stderr.strip()[-300:]}"
        rows.append((f"bench on CUDA {' '.join(layout)}", "\n" + bench))
    return rows


def budget_rows(out: Path) -> list[tuple[str, str]]:
    """A MAC budget steered on the GPU (bf16), and the same run under torchrun (NCCL, 1 process)."""
    budget = ["sparsity.grouping=coupled", "sparsity.budget.macs=0.5", "sparsity.budget_epochs=2", "train.amp=bf16"]
    rows = []
    for name, extra in (
        ("budget", None),
        ("budget-torchrun", ["torchrun", "--standalone", "--nproc_per_node=1", "-m", "sparsemtl"]),
    ):
        t0 = time.perf_counter()
        result = cli("train", *SMALL, *budget, f"train.out_dir={out}", f"train.name={name}", extra=extra)
        if result.returncode:
            rows.append((name, f"FAILED: {result.stderr.strip()[-300:]}"))
            continue
        s = summary(out / name)
        rows.append(
            (
                f"{name} ({time.perf_counter() - t0:.0f} s, world size {s['world_size']})",
                s["sparsity"]["budget"]["message"],
            )
        )
    return rows


def optimiser_rows(steps: int = 20) -> list[tuple[str, str]]:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from paper_model import PAPER_MODEL, SPECS

    from sparsemtl.models import build_model
    from sparsemtl.sparsity import ProxAdamW, input_channels, regularized_param_groups

    device = torch.device("cuda")
    torch.manual_seed(0)
    dense = build_model(PAPER_MODEL, SPECS).to(device)
    sparse = build_model(PAPER_MODEL, SPECS).to(device)
    sparse.load_state_dict(dense.state_dict())
    adamw = torch.optim.AdamW(dense.parameters(), lr=1e-4, eps=1e-6, weight_decay=0.1, fused=True)
    structure = input_channels(sparse, ["encoder.*"])
    prox = ProxAdamW(regularized_param_groups(sparse, structure, 1e-5), lr=1e-4, eps=1e-6, weight_decay=0.1)
    x = torch.rand(8, 3, 128, 128, device=device)

    def step(model, opt) -> tuple[float, float]:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = sum(o.float().square().mean() for o in model(x).values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        opt.step()
        torch.cuda.synchronize()
        return time.perf_counter() - t0, 0.0

    for _ in range(3):
        step(dense, adamw), step(sparse, prox)
    t_adamw, t_prox = [], []
    for _ in range(steps):
        t_adamw.append(step(dense, adamw)[0])
        t_prox.append(step(sparse, prox)[0])
    ma, mp = statistics.median(t_adamw), statistics.median(t_prox)
    weights = sum(p.numel() for p in structure.params)
    return [
        ("paper model: fused AdamW step (median)", f"{ma * 1e3:.2f} ms"),
        (
            "paper model: ProxAdamW step (median)",
            f"{mp * 1e3:.2f} ms ({(mp - ma) / weights * 1e9:.3f} ns per regularised weight over AdamW)",
        ),
        ("ProxAdamW / fused AdamW", f"{mp / ma:.2f}"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--skip-train", action="store_true")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("cuda_check: no CUDA device")
    out = args.out or Path(tempfile.mkdtemp(prefix="cuda-check-"))
    print(f"# {torch.cuda.get_device_name(0)} | torch {torch.__version__} | CUDA {torch.version.cuda}", flush=True)
    sections = [] if args.skip_train else [training_rows, resume_rows, prune_rows, budget_rows]
    for section in [*sections, optimiser_rows]:
        t0 = time.perf_counter()
        try:
            rows = section(out) if section is not optimiser_rows else section()
        except Exception as exc:  # report and go on: one failing check must not hide the others
            rows = [(section.__name__, f"FAILED: {type(exc).__name__}: {exc}")]
        for key, value in rows:
            print(f"{key}: {value}", flush=True)
        print(f"  ({section.__name__}: {time.perf_counter() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
