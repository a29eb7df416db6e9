"""Command-line interface: a thin layer over the Python API."""

from __future__ import annotations

import argparse
import sys

from .config import ConfigError, load_config
from .training import CheckpointError, NonFiniteLossError


def _train(args: argparse.Namespace) -> None:
    from .training import train

    summary = train(load_config(args.config, args.overrides))
    print(
        f"run finished: {summary['run_dir']} (best epoch {summary['best_epoch']}, "
        f"zero groups {summary['sparsity']['zero_group_pct']:.1f}%)"
    )


def _demo(args: argparse.Namespace) -> None:
    from .demo import run_demo

    table, _ = run_demo(args.out, args.configs, args.overrides)
    print(table)


def _sparsity(args: argparse.Namespace) -> None:
    from .reporting.sparsity_run import analyze_run

    result = analyze_run(args.run_dir, args.out, args.checkpoint, plot=not args.no_plot)
    print(result.table)
    print(f"wrote {result.json_path}" + (f" and {result.plot_path}" if result.plot_path else ""))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sparsemtl", description="Parsimonious multi-task vision models with group sparsity."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "train",
        help="train one run from a YAML config",
        description="Train one run. Overrides are dotted keys, e.g. optim.lr=0.001 sparsity.lam=1e-4.",
    )
    p.add_argument("--config", required=False, default=None, help="YAML config file (defaults apply to missing keys)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    p.set_defaults(func=_train)

    p = sub.add_parser("demo", help="train a dense and a group-sparse model on synthetic-scenes and compare them")
    p.add_argument("--out", default=None, help="output folder (default: demo-runs/<timestamp>)")
    p.add_argument(
        "--configs",
        default=None,
        help="folder holding demo_dense.yaml and demo_sparse.yaml (default: the repository's configs/)",
    )
    p.add_argument("overrides", nargs="*", metavar="key=value", help="overrides applied to both runs")
    p.set_defaults(func=_demo)

    p = sub.add_parser("sparsity", help="per-layer sparsity table, JSON and PNG plot of a finished run")
    p.add_argument("run_dir", help="a run directory written by 'sparsemtl train'")
    p.add_argument("--checkpoint", default="best.pt", help="checkpoint file inside the run directory (default best.pt)")
    p.add_argument(
        "--out", default=None, help="where to write sparsity.json and sparsity.png (default: the run directory)"
    )
    p.add_argument("--no-plot", action="store_true", help="skip the PNG (matplotlib is an optional extra)")
    p.set_defaults(func=_sparsity)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ConfigError, CheckpointError, FileNotFoundError, NonFiniteLossError) as exc:
        print(f"sparsemtl: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
