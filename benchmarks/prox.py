"""Cost of the group-sparsity prox, measured side by side in one run.

Per encoder (``--encoders``) of the paper model (output stride 8, three DeepLabV3 heads), with
the encoder's conv weights regularised (input-channel groups) and a realistic Adam state from a
few real training steps:

1. the prox alone, as ProxAdamW calls it (``group_lasso_prox_`` in Adam's metric, warm-started
   from the previous step's group norms): time, ns per regularised weight, and its largest
   relative error against the same solve in float64;
2. one optimiser step over the regularised weights, ProxAdamW / AdamW, for torch's single-tensor
   and foreach AdamW (on CUDA: fused, the reference, and foreach), and on CPU ProxAdamW with
   ``native_prox=True`` (AdamW update and prox in native passes) / single-tensor AdamW.

Then one training step (zero_grad, forward, loss, backward, step) of the resnet50d paper model
at each ``--batches`` size, ``--size`` px: ProxAdamW / AdamW over the whole model (on CPU also
with ``native_prox=True``).

Every optimiser measurement restores the weights and the optimiser state before each repeat, so
that all repeats do the same work, and the variants run interleaved (A B A B ...) so that drifts
in machine load hit all alike. On a shared machine read the ratios, not the absolute times.

Usage: python benchmarks/prox.py [--encoders resnet18d resnet50d resnet101d] [--threads 2]
       [--repeats 5] [--batches 2 8] [--size 128] [--device auto] [--lam 1e-5]
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import statistics
import time
from typing import Callable

import torch
from paper_model import PAPER_MODEL, SPECS

from sparsemtl.models import build_model
from sparsemtl.sparsity import (
    ProxAdamW,
    group_lasso_prox_,
    group_weights,
    input_channels,
    native_step,
    regularized_param_groups,
)
from sparsemtl.sparsity.prox import AdamMetric
from sparsemtl.tables import format_table
from sparsemtl.tasks import get_task

LR, EPS, BETA2, WEIGHT_DECAY = 1e-4, 1e-6, 0.999, 0.1  # the paper's optimiser


def make_batch(batch: int, size: int, seed: int, device: torch.device) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    normals = torch.randn(batch, 3, size, size, generator=gen)
    data = {
        "image": torch.rand(batch, 3, size, size, generator=gen),
        "segmentation": torch.randint(0, 40, (batch, size, size), generator=gen),
        "depth": torch.rand(batch, 1, size, size, generator=gen) * 9 + 0.5,
        "normals": normals / normals.norm(dim=1, keepdim=True),
    }
    return {k: v.to(device) for k, v in data.items()}


def loss_of(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    out = model(batch["image"])
    return sum(get_task(spec.kind).loss(out[name], batch[name], spec) for name, spec in SPECS.items())


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: dict[str, torch.Tensor]) -> None:
    optimizer.zero_grad(set_to_none=True)
    loss_of(model, batch).backward()
    optimizer.step()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(fns: dict[str, Callable[[], None]], repeats: int, device: torch.device, before=None) -> dict:
    """Median seconds of each function, run A B C A B C ... (``before()`` untimed before each run)."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            if before is not None:
                before()
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


class Snapshot:
    """The weights and optimiser state of some parameters, restored in place."""

    def __init__(self, params: list[torch.Tensor], state: dict) -> None:
        self.params, self.state = params, state
        self.weights = [p.detach().clone() for p in params]
        self.saved = {p: {k: v.clone() for k, v in state[p].items()} for p in params}

    @torch.no_grad()
    def restore(self) -> None:
        for p, w in zip(self.params, self.weights):
            p.copy_(w)
            for key, value in self.saved[p].items():
                self.state[p][key].copy_(value)


def optimizer_variants(device: torch.device) -> dict[str, dict]:
    """AdamW's implementations to compare: the reference first."""
    if device.type == "cuda":
        return {"fused": {"fused": True}, "foreach": {"foreach": True}}
    return {"single-tensor": {"foreach": False}, "foreach": {"foreach": True}}


def encoder_rows(encoder: str, args: argparse.Namespace, device: torch.device) -> list[list]:
    """Prox-only and optimiser-step measurements for one encoder (see the module docstring)."""
    torch.manual_seed(0)
    model = build_model(dataclasses.replace(PAPER_MODEL, encoder=encoder), SPECS).to(device)
    structure = input_channels(model, ["encoder.*"])
    groups = regularized_param_groups(model, structure, args.lam)
    reference = next(iter(optimizer_variants(device).values()))  # its kind of state (step on CUDA for fused)
    source = ProxAdamW(groups, lr=LR, eps=EPS, weight_decay=WEIGHT_DECAY, **reference)
    for step in range(args.state_steps):  # a realistic Adam state and warm starts
        train_step(model, source, make_batch(2, args.state_size, step, device))
    source.zero_grad(set_to_none=True)
    loss_of(model, make_batch(2, args.state_size, 99, device)).backward()
    params = list(structure.params)
    snapshot = Snapshot(params, source.state)

    # 1. the prox alone
    slices = structure.slices()
    tau = (group_weights(structure, "sqrt_size") * (LR * args.lam)).to(device=device, dtype=params[0].dtype)
    states = [source.state[p] for p in params]

    def prox(dtype: torch.dtype | None = None) -> list[torch.Tensor]:
        xs = [p.detach() if dtype is None else p.detach().to(dtype) for p in params]
        metric = AdamMetric(
            [s["exp_avg_sq"].to(xs[0].dtype) for s in states],
            [1.0 - BETA2 ** float(s["step"]) for s in states],
            EPS,
        )
        norms = [s["prox_norm"].to(xs[0].dtype) for s in states]
        sl = dataclasses.replace(slices, tensors=xs) if dtype is not None else slices
        with torch.no_grad():
            group_lasso_prox_(sl, tau.to(xs[0].dtype), metric, norms=norms)
        return xs

    prox_time = interleaved({"prox": prox}, args.repeats, device, snapshot.restore)["prox"]
    snapshot.restore()
    ours = [x.clone() for x in prox()]
    snapshot.restore()
    exact = prox(torch.float64)
    error = max(float((a.double() - e).norm() / e.norm().clamp_min(1e-300)) for a, e in zip(ours, exact))
    snapshot.restore()

    # 2. optimiser steps over the regularised weights, sharing the state (prox_norm included)
    weights = sum(p.numel() for p in params)
    fns = {}
    for name, options in optimizer_variants(device).items():
        adamw = torch.optim.AdamW(params, lr=LR, eps=EPS, weight_decay=WEIGHT_DECAY, **options)
        proxy = ProxAdamW([dict(groups[0])], lr=LR, eps=EPS, weight_decay=WEIGHT_DECAY, **options)
        for p in params:
            adamw.state[p] = proxy.state[p] = source.state[p]
        fns[f"AdamW {name}"] = adamw.step
        fns[f"ProxAdamW {name}"] = proxy.step
    if device.type == "cpu":
        native_step.extension()  # built (or loaded) before any timing
        native = ProxAdamW([dict(groups[0])], lr=LR, eps=EPS, weight_decay=WEIGHT_DECAY, native_prox=True)
        for p in params:
            native.state[p] = source.state[p]
        fns["ProxAdamW native"] = native.step
    with torch.no_grad():
        steps = interleaved(fns, args.repeats, device, snapshot.restore)
    rows = [
        [encoder, "weights / groups", f"{weights:,} / {structure.num_groups:,}"],
        [encoder, "prox only", f"{prox_time * 1e3:.1f} ms, {prox_time * 1e9 / weights:.2f} ns/weight"],
        [encoder, "prox max rel. error vs float64", f"{error:.1e}"],
    ]
    for name in optimizer_variants(device):
        adamw, proximal = steps[f"AdamW {name}"], steps[f"ProxAdamW {name}"]
        rows.append(
            [
                encoder,
                f"ProxAdamW / AdamW step, {name}",
                f"{proximal / adamw:.2f}  ({proximal * 1e3:.1f} / {adamw * 1e3:.1f} ms)",
            ]
        )
    if "ProxAdamW native" in steps:
        native, adamw = steps["ProxAdamW native"], steps["AdamW single-tensor"]
        rows.append(
            [
                encoder,
                "ProxAdamW native_prox / AdamW step, single-tensor",
                f"{native / adamw:.2f}  ({native * 1e3:.1f} / {adamw * 1e3:.1f} ms)",
            ]
        )
        results = {}
        for name in ("ProxAdamW native", "ProxAdamW single-tensor"):  # one step each from the same state
            snapshot.restore()
            with torch.no_grad():
                fns[name]()
            results[name] = [p.detach().clone() for p in params]
        snapshot.restore()
        gap = max(
            float((a - b).norm() / b.norm().clamp_min(1e-30))
            for a, b in zip(results["ProxAdamW native"], results["ProxAdamW single-tensor"])
        )
        rows.append([encoder, "native_prox step max rel. difference vs eager step", f"{gap:.1e}"])
    return rows


def training_rows(args: argparse.Namespace, device: torch.device) -> list[list]:
    """Training step of the resnet50d paper model, sparse (ProxAdamW) / dense (AdamW)."""
    options = {"fused": True} if device.type == "cuda" else {}
    torch.manual_seed(0)
    dense = build_model(PAPER_MODEL, SPECS).to(device)
    sparse = build_model(PAPER_MODEL, SPECS).to(device)
    sparse.load_state_dict(dense.state_dict())
    adamw = torch.optim.AdamW(dense.parameters(), lr=LR, eps=EPS, weight_decay=WEIGHT_DECAY, **options)
    groups = regularized_param_groups(sparse, input_channels(sparse, ["encoder.*"]), args.lam)
    prox_adamw = ProxAdamW(groups, lr=LR, eps=EPS, weight_decay=WEIGHT_DECAY, **options)
    variants = {"sparse": (sparse, prox_adamw)}
    if device.type == "cpu":
        native = build_model(PAPER_MODEL, SPECS).to(device)
        native.load_state_dict(dense.state_dict())
        groups = regularized_param_groups(native, input_channels(native, ["encoder.*"]), args.lam)
        variants["sparse, native prox"] = (
            native,
            ProxAdamW(groups, lr=LR, eps=EPS, weight_decay=WEIGHT_DECAY, native_prox=True),
        )
    rows = []
    for size in args.batches:
        batch = make_batch(size, args.size, 0, device)
        fns = {"dense": lambda: train_step(dense, adamw, batch)}
        for name, (model, optimizer) in variants.items():
            fns[name] = lambda model=model, optimizer=optimizer: train_step(model, optimizer, batch)
        for _ in range(args.warmup):
            for fn in fns.values():
                fn()
        times = interleaved(fns, args.repeats, device)
        for name in variants:
            rows.append(
                [
                    "resnet50d model",
                    f"training step {name} / dense, batch {size}, {args.size} px",
                    f"{times[name] / times['dense']:.3f}  ({times[name]:.3f} / {times['dense']:.3f} s)",
                ]
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoders", nargs="+", default=["resnet18d", "resnet50d", "resnet101d"])
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats of every measurement")
    parser.add_argument("--warmup", type=int, default=2, help="untimed training steps per batch size")
    parser.add_argument("--state-steps", type=int, default=3, help="training steps that build the Adam state")
    parser.add_argument("--state-size", type=int, default=64, help="image size of those steps")
    parser.add_argument("--lam", type=float, default=1e-5, help="sparsity strength (the paper's: 1e-5, 1e-6)")
    parser.add_argument("--batches", type=int, nargs="*", default=[2, 8], help="training-step batch sizes")
    parser.add_argument("--size", type=int, default=128, help="training-step image size")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="auto", help="auto (cuda when available), cpu or cuda")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    print(f"# {platform.machine()} | {name} | {torch.get_num_threads()} torch threads | torch {torch.__version__}")
    print(f"# lambda {args.lam:g}, lr {LR:g}, eps {EPS:g}, input-channel groups of the encoder's convs")
    rows = [row for encoder in args.encoders for row in encoder_rows(encoder, args, device)]
    rows += training_rows(args, device)
    print(format_table(["model", "measure", "value"], rows))


if __name__ == "__main__":
    main()
