"""Cost of the group-sparsity prox, measured side by side in one run.

1. Weighted (Adam-preconditioned) group-lasso prox over all conv weights of the ResNet-D-50
   encoder (input-channel groups, 55 convs), with a realistic metric d = sqrt(v_hat) + eps from
   a few real AdamW steps of the paper model: our vectorised prox vs a straightforward per-layer
   implementation of the same maths (Newton on the secular equation, 100 iterations over full
   tensors, as in the reference code), with the accuracy of both against a float64 solve.
2. One training step (zero_grad, forward, loss, backward, optimiser step) of the paper model
   (resnet50d, output stride 8, three DeepLabV3 heads, batch 4, 128x128) with AdamW vs ProxAdamW.

Usage: python benchmarks/prox.py [--steps 5] [--lam 1e-5] [--threads 2]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
from paper_model import PAPER_MODEL, SPECS

from sparsemtl.models import build_model
from sparsemtl.sparsity import (
    GroupSlices,
    ProxAdamW,
    group_lasso_prox_,
    group_weights,
    input_channels,
    regularized_param_groups,
)
from sparsemtl.tasks import get_task

LR, EPS, BETA2 = 1e-4, 1e-6, 0.999


def make_batch(batch: int, size: int, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    normals = torch.randn(batch, 3, size, size, generator=gen)
    return {
        "image": torch.rand(batch, 3, size, size, generator=gen),
        "segmentation": torch.randint(0, 40, (batch, size, size), generator=gen),
        "depth": torch.rand(batch, 1, size, size, generator=gen) * 9 + 0.5,
        "normals": normals / normals.norm(dim=1, keepdim=True),
    }


def loss_of(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    out = model(batch["image"])
    return sum(get_task(spec.kind).loss(out[name], batch[name], spec) for name, spec in SPECS.items())


def train_step(model, optimizer, batch) -> None:
    optimizer.zero_grad(set_to_none=True)
    loss_of(model, batch).backward()
    optimizer.step()


def time_steps(model, optimizer, batch, steps: int) -> list[float]:
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        train_step(model, optimizer, batch)
        times.append(time.perf_counter() - t0)
    return times


def newton_per_layer_reference(
    x: torch.Tensor, d: torch.Tensor, tau: torch.Tensor, iterations: int = 100
) -> torch.Tensor:
    """The straightforward implementation: one layer at a time, Newton on
    phi(theta) = sum x^2 / (theta + tau/d)^2 - 1 for a fixed number of iterations over the full
    (groups, n) matrix, no active-set or convergence test."""
    weighted = (d * x).norm(dim=1)
    c = tau[:, None] / d
    theta = ((weighted - tau) / d.amax(1)).clamp_min(0)
    for _ in range(iterations):
        u = 1.0 / (theta[:, None] + c)
        phi = (x * x * u * u).sum(1) - 1.0
        dphi = -2.0 * (x * x * u * u * u).sum(1)
        theta = torch.where(weighted > tau, theta - phi / dphi.clamp_max(-1e-30), theta)
    z = theta[:, None] / (theta[:, None] + c) * x
    return torch.where((weighted > tau)[:, None], z, torch.zeros_like(z))


def rows(t: torch.Tensor, dim: int) -> torch.Tensor:
    return t.movedim(dim, 0).reshape(t.shape[dim], -1)


def prox_benchmark(model, optimizer, lam: float, repeats: int) -> list[tuple[str, str]]:
    structure = input_channels(model, ["encoder.*"])
    weights = group_weights(structure, "sqrt_size")
    tau_all = (weights * LR * lam).float()
    params = [p.detach().clone() for p in structure.params]
    metric = []
    for p in structure.params:
        state = optimizer.state[p]
        metric.append((state["exp_avg_sq"] / (1 - BETA2 ** float(state["step"]))).sqrt() + EPS)

    ours, reference = [], []
    for _ in range(repeats):
        xs = [p.clone() for p in params]
        ds = [d.clone() for d in metric]
        t0 = time.perf_counter()
        group_lasso_prox_(GroupSlices(xs, structure.dims, structure.ids, structure.num_groups), tau_all, ds)
        ours.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        ref = [
            newton_per_layer_reference(rows(p, dim), rows(d, dim), tau_all[ids])
            for p, d, dim, ids in zip(params, metric, structure.dims, structure.ids)
        ]
        reference.append(time.perf_counter() - t0)

    # accuracy of both against a float64 run of our solver at float64 tolerance
    exact = [p.double() for p in params]
    group_lasso_prox_(
        GroupSlices(exact, structure.dims, structure.ids, structure.num_groups),
        tau_all.double(),
        [d.double() for d in metric],
    )
    err_ours = max(
        float((rows(x, dim).double() - rows(e, dim)).norm() / rows(e, dim).norm().clamp_min(1e-30))
        for x, e, dim in zip(xs, exact, structure.dims)
    )
    err_ref = max(
        float((r.double() - rows(e, dim)).norm() / rows(e, dim).norm().clamp_min(1e-30))
        for r, e, dim in zip(ref, exact, structure.dims)
    )
    zero = sum(int((rows(x, dim).abs().amax(1) == 0).sum()) for x, dim in zip(xs, structure.dims))
    med_ours, med_ref = statistics.median(ours), statistics.median(reference)
    return [
        ("convs / groups / weights", f"{len(params)} / {structure.num_groups:,} / {sum(p.numel() for p in params):,}"),
        (
            "zero groups after the prox",
            f"{zero:,} ({100 * zero / structure.num_groups:.1f}%) at lambda={lam:g}, lr={LR:g}",
        ),
        (
            "weighted prox, ours (median)",
            f"{med_ours * 1e3:.1f} ms  (spread {min(ours) * 1e3:.1f}-{max(ours) * 1e3:.1f})",
        ),
        (
            "per-layer 100-iteration Newton (median)",
            f"{med_ref * 1e3:.1f} ms  (spread {min(reference) * 1e3:.1f}-{max(reference) * 1e3:.1f})",
        ),
        ("speed-up of ours", f"{med_ref / med_ours:.1f}x"),
        ("max relative error vs float64 (ours / reference)", f"{err_ours:.1e} / {err_ref:.1e}"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5, help="timed training steps per optimiser")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per optimiser before timing")
    parser.add_argument(
        "--lam", type=float, default=1e-5, help="sparsity strength (the paper's runs use 1e-5 and 1e-6)"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    machine = f"{platform.machine()} | {platform.processor() or 'cpu'} | {torch.get_num_threads()} torch threads"
    print(f"# machine: {machine} | torch {torch.__version__}")
    model = f"resnet50d OS8 + 3 ASPP heads (256 ch, rates 12/24/36), batch {args.batch}, {args.size}x{args.size}"
    print(f"# paper model: {model}, CPU")

    batch = make_batch(args.batch, args.size, 0)
    dense = build_model(PAPER_MODEL, SPECS)
    sparse = build_model(PAPER_MODEL, SPECS)
    sparse.load_state_dict(dense.state_dict())
    adamw = torch.optim.AdamW(dense.parameters(), lr=LR, eps=EPS, weight_decay=0.1)
    structure = input_channels(sparse, ["encoder.*"])
    prox_adamw = ProxAdamW(regularized_param_groups(sparse, structure, args.lam), lr=LR, eps=EPS, weight_decay=0.1)
    for _ in range(args.warmup):
        train_step(dense, adamw, batch)
        train_step(sparse, prox_adamw, batch)
    # interleave so drifts in machine load hit both alike
    t_adamw, t_prox = [], []
    for _ in range(args.steps):
        t_adamw += time_steps(dense, adamw, batch, 1)
        t_prox += time_steps(sparse, prox_adamw, batch, 1)
    step_rows = [
        ("AdamW step (median)", f"{statistics.median(t_adamw):.3f} s  (spread {min(t_adamw):.3f}-{max(t_adamw):.3f})"),
        ("ProxAdamW step (median)", f"{statistics.median(t_prox):.3f} s  (spread {min(t_prox):.3f}-{max(t_prox):.3f})"),
        ("ProxAdamW / AdamW", f"{statistics.median(t_prox) / statistics.median(t_adamw):.3f}  (target <= 1.10)"),
    ]
    prox_rows = prox_benchmark(sparse, prox_adamw, args.lam, repeats=3)
    width = max(len(k) for k, _ in prox_rows + step_rows)
    print(f"\n{'measure':<{width}}  value\n{'-' * width}  {'-' * 40}")
    for key, value in prox_rows + step_rows:
        print(f"{key:<{width}}  {value}")


if __name__ == "__main__":
    main()
