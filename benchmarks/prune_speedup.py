"""Real gain of physical pruning on the paper model, measured side by side in one run.

The paper model (resnet50d, output stride 8, three DeepLabV3 heads) at 128x128 on CPU gets a
given share of its encoder's sparsity groups set to exactly zero (random groups, fixed seed),
under the `coupled` grouping (every zero group is a removable channel) and, on request, under the
seed's `input_channels` grouping (a zero group is removable only when every reader of the channel
is zero). Each sparse model is pruned with `prune_model` (verified against the unpruned model) once
per `--round-to` N (every cut width a multiple of N: a few zero channels kept so vector units and
GEMM tiles are used fully), BN is folded into the convs of every model compared, and every model
is timed in each `--formats` memory format (contiguous NCHW, channels_last NHWC), both formats of
one model and batch back to back. We report per level, N and format: MAC and parameter reduction,
latency at each batch size, the speed-up over the dense model in the same format, and speed-up
divided by MAC reduction (1.0: the MAC reduction is reached in full).

Usage: python benchmarks/prune_speedup.py [--levels 30 50 70 90] [--round-to 1 8 16]
       [--formats contiguous channels_last] [--groupings coupled] [--batches 1 8]
       [--min-run-time 1] [--threads 2] [--json out.json]
Defaults take roughly 10 minutes on 2 idle CPU threads (about half of it pruning and BN folding);
a quick check of the script: --levels 50 --round-to 1 8 --min-run-time 0.2.
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import torch
from paper_model import PAPER_MODEL, SPECS

from sparsemtl.evaluation.fold import fold_batchnorm
from sparsemtl.evaluation.latency import measure_latency
from sparsemtl.evaluation.machine import describe_machine, format_machine
from sparsemtl.models import build_model
from sparsemtl.pruning import prune_model
from sparsemtl.reporting import format_table
from sparsemtl.sparsity import build_grouping

FORMATS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}


def sparsified(model: torch.nn.Module, grouping: str, level: float, seed: int) -> torch.nn.Module:
    """A copy of ``model`` with ``level`` % of its encoder groups (chosen at random) set to 0."""
    copy_ = copy.deepcopy(model)
    structure = build_grouping(grouping, copy_, ["encoder.*"])
    count = round(structure.num_groups * level / 100)
    chosen = torch.randperm(structure.num_groups, generator=torch.Generator().manual_seed(seed))[:count]
    mask = torch.zeros(structure.num_groups, dtype=torch.bool)
    mask[chosen] = True
    structure.zero_groups_(mask)
    return copy_


def latencies(model: torch.nn.Module, args: argparse.Namespace) -> dict[str, dict[int, float]]:
    """Median seconds per forward of the BN-folded ``model``: {format: {batch: seconds}}; per
    batch, every format is timed right after the other."""
    size = (args.size, args.size)
    folded = fold_batchnorm(model, torch.rand(1, 3, *size))
    copies = {fmt: copy.deepcopy(folded).to(memory_format=FORMATS[fmt]) for fmt in args.formats}
    result: dict[str, dict[int, float]] = {fmt: {} for fmt in args.formats}
    for batch in args.batches:
        for fmt, net in copies.items():
            lat = measure_latency(
                net, size, batch, "cpu", args.threads, args.min_run_time, channels_last=fmt == "channels_last"
            )
            result[fmt][batch] = lat.median
    return result


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", type=float, nargs="+", default=[30, 50, 70, 90], help="%% zero groups")
    parser.add_argument("--groupings", nargs="+", default=["coupled"], choices=("coupled", "input_channels"))
    parser.add_argument("--round-to", type=int, nargs="+", default=[1, 8, 16], help="prune_model round_to values")
    parser.add_argument("--formats", nargs="+", default=list(FORMATS), choices=tuple(FORMATS), help="memory formats")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8], help="batch sizes")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--min-run-time", type=float, default=1.0, help="seconds of timing per model, batch, format")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    args = parser.parse_args()
    if min(args.round_to) < 1 or min(args.batches) < 1:
        parser.error("--round-to and --batches take integers >= 1")
    return args


def main() -> None:
    args = parse_args()
    torch.manual_seed(0)
    size = (args.size, args.size)
    machine = describe_machine()
    print(f"# {format_machine(machine)}")
    print(
        f"# paper model resnet50d OS8 + 3 ASPP heads, {args.size}x{args.size}, CPU, {args.threads} threads, "
        "BN folded, medians; speed-up vs the dense model in the same memory format"
    )

    dense = build_model(PAPER_MODEL, SPECS).eval()
    base = latencies(dense, args)
    rows, records = [], []
    for grouping in args.groupings:
        for level in args.levels:
            sparse = sparsified(dense, grouping, level, seed=int(level))
            for round_to in args.round_to:
                result = prune_model(sparse, torch.rand(1, 3, *size), round_to=round_to)
                lat = latencies(result.model, args)
                mac_red = result.macs_before / result.macs_after
                param_red = result.params_before / result.params_after
                for fmt in args.formats:
                    speed = {b: base[fmt][b] / lat[fmt][b] for b in args.batches}
                    records.append(
                        {
                            "grouping": grouping,
                            "zero_groups_pct": level,
                            "round_to": round_to,
                            "memory_format": fmt,
                            "removed_channels": result.removed_channels,
                            "kept_for_rounding": result.kept_for_rounding,
                            "mac_reduction": mac_red,
                            "param_reduction": param_red,
                            **{f"latency_ms_b{b}": 1e3 * lat[fmt][b] for b in args.batches},
                            **{f"speedup_b{b}": speed[b] for b in args.batches},
                            **{f"speedup_over_mac_b{b}": speed[b] / mac_red for b in args.batches},
                            **{
                                f"speedup_vs_dense_contiguous_b{b}": base["contiguous"][b] / lat[fmt][b]
                                for b in args.batches
                                if "contiguous" in base
                            },
                        }
                    )
                    rows.append(
                        [grouping, f"{level:g}%", round_to, fmt, result.removed_channels, mac_red, param_red]
                        + [f"{1e3 * lat[fmt][b]:.1f}" for b in args.batches]
                        + [speed[b] for b in args.batches]
                        + [speed[b] / mac_red for b in args.batches]
                    )
                print(f"  done {grouping} {level:g}% round_to {round_to}", flush=True)
    headers = ["grouping", "zero groups", "round-to", "format", "channels cut", "MAC red.", "param red."]
    headers += [f"ms b{b}" for b in args.batches] + [f"speed-up b{b}" for b in args.batches]
    headers += [f"speed-up/MAC b{b}" for b in args.batches]
    for fmt in args.formats:
        print(f"\ndense (BN folded, {fmt}): {', '.join(f'b{b} {1e3 * base[fmt][b]:.1f} ms' for b in args.batches)}")
    print(format_table(headers, rows))
    if args.json:
        dense_ms = {fmt: {b: 1e3 * s for b, s in by_batch.items()} for fmt, by_batch in base.items()}
        args.json.write_text(json.dumps({"machine": machine, "dense_ms": dense_ms, "rows": records}, indent=2))


if __name__ == "__main__":
    main()
