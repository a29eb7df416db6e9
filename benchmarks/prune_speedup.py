"""Real gain of physical pruning on the paper model, measured side by side in one run.

The paper model (resnet50d, output stride 8, three DeepLabV3 heads) at 128x128 on CPU gets a
given share of its encoder's sparsity groups set to exactly zero (random groups, fixed seed),
under the `coupled` grouping (every zero group is a removable channel) and under the seed's
`input_channels` grouping (a zero group is removable only when every reader of the channel is
zero). Each model is pruned with `prune_model` (verified against the unpruned model), BN is
folded into the convs of every model compared, and we report: MAC and parameter reduction,
measured latency speed-up at batch 1 and 8, and speed-up divided by MAC reduction.

Usage: python benchmarks/prune_speedup.py [--levels 0 30 50 70 90] [--min-run-time 2] [--threads 2]
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

BATCHES = (1, 8)


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


def latencies(model: torch.nn.Module, size: tuple[int, int], threads: int, min_run_time: float) -> dict[int, float]:
    folded = fold_batchnorm(model, torch.rand(1, 3, *size))
    return {b: measure_latency(folded, size, b, "cpu", threads, min_run_time).median for b in BATCHES}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", type=float, nargs="+", default=[0, 30, 50, 70, 90], help="%% zero groups")
    parser.add_argument("--groupings", nargs="+", default=["coupled", "input_channels"])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--min-run-time", type=float, default=2.0, help="seconds of timing per model and batch")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    args = parser.parse_args()
    torch.manual_seed(0)
    size = (args.size, args.size)
    machine = describe_machine()
    print(f"# {format_machine(machine)}")
    print(f"# paper model resnet50d OS8 + 3 ASPP heads, {args.size}x{args.size}, CPU, BN folded, medians")

    dense = build_model(PAPER_MODEL, SPECS).eval()
    base = latencies(dense, size, args.threads, args.min_run_time)
    rows, records = [], []
    for grouping in args.groupings:
        for level in args.levels:
            result = prune_model(sparsified(dense, grouping, level, seed=int(level)), torch.rand(1, 3, *size))
            lat = latencies(result.model, size, args.threads, args.min_run_time)
            mac_red = result.macs_before / result.macs_after
            speed = {b: base[b] / lat[b] for b in BATCHES}
            record = {
                "grouping": grouping,
                "zero_groups_pct": level,
                "removed_channels": result.removed_channels,
                "mac_reduction": mac_red,
                "param_reduction": result.params_before / result.params_after,
                **{f"latency_ms_b{b}": 1e3 * lat[b] for b in BATCHES},
                **{f"speedup_b{b}": speed[b] for b in BATCHES},
                **{f"speedup_over_mac_b{b}": speed[b] / mac_red for b in BATCHES},
            }
            records.append(record)
            rows.append(
                [grouping, f"{level:g}%", result.removed_channels, mac_red, record["param_reduction"]]
                + [f"{1e3 * lat[b]:.1f}" for b in BATCHES]
                + [speed[b] for b in BATCHES]
                + [speed[b] / mac_red for b in BATCHES]
            )
            print(f"  done {grouping} {level:g}%", flush=True)
    headers = ["grouping", "zero groups", "channels cut", "MAC red.", "param red."]
    headers += [f"ms b{b}" for b in BATCHES] + [f"speed-up b{b}" for b in BATCHES]
    headers += [f"speed-up/MAC b{b}" for b in BATCHES]
    print(f"\ndense (BN folded): {', '.join(f'b{b} {1e3 * base[b]:.1f} ms' for b in BATCHES)}")
    print(format_table(headers, rows))
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "dense_ms": base, "rows": records}, indent=2))


if __name__ == "__main__":
    main()
