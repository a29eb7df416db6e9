"""Command-line interface: a thin layer over the Python API."""

from __future__ import annotations

import argparse
import sys

from .config import ConfigError, load_config
from .training import NonFiniteLossError


def _train(args: argparse.Namespace) -> None:
    from .training import train

    summary = train(load_config(args.config, args.overrides))
    print(f"run finished: {summary['run_dir']} (best epoch {summary['best_epoch']}, "
          f"zero groups {summary['sparsity']['zero_group_pct']:.1f}%)")


def _demo(args: argparse.Namespace) -> None:
    from .demo import run_demo

    table, _ = run_demo(args.out, args.configs, args.overrides)
    print(table)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sparsemtl", description="Parsimonious multi-task vision models with group sparsity.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train one run from a YAML config", description="Train one run. Overrides are dotted keys, e.g. optim.lr=0.001 sparsity.lam=1e-4.")
    p.add_argument("--config", required=False, default=None, help="YAML config file (defaults apply to missing keys)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    p.set_defaults(func=_train)

    p = sub.add_parser("demo", help="train a dense and a group-sparse model on synthetic-scenes and compare them")
    p.add_argument("--out", default=None, help="output folder (default: demo-runs/<timestamp>)")
    p.add_argument("--configs", default=None, help="folder holding demo_dense.yaml and demo_sparse.yaml (default: the repository's configs/)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="overrides applied to both runs")
    p.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ConfigError, FileNotFoundError, NonFiniteLossError) as exc:
        print(f"sparsemtl: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
