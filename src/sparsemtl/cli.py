"""Command-line interface: a thin layer over the Python API."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .config import ConfigError, load_config
from .pruning import PruningVerificationError
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

    table, _ = run_demo(args.out, args.configs, args.overrides, bench_seconds=args.bench_seconds)
    print(table)


def _sparsity(args: argparse.Namespace) -> None:
    from .reporting.sparsity_run import analyze_run

    result = analyze_run(args.run_dir, args.out, args.checkpoint, plot=not args.no_plot)
    print(result.table)
    print(f"wrote {result.json_path}" + (f" and {result.plot_path}" if result.plot_path else ""))


def _prune(args: argparse.Namespace) -> None:
    from .pruning import prune_run

    size = tuple(args.size) if args.size else None
    result = prune_run(args.source, args.out, input_size=size, onnx=args.onnx)
    print(result.format_table())
    extra = f", {Path(args.out).with_suffix('.onnx')}" if args.onnx else ""
    print(f"wrote {args.out}, {Path(args.out).with_suffix('.json')}{extra}")


def _bench(args: argparse.Namespace) -> None:
    from .benchmarking import bench_command

    print(bench_command(args.models, args.size, args.batch, args.device, args.threads, args.min_run_time, args.json))


def _prepare_celebamask(args: argparse.Namespace) -> None:
    from .data import prepare_celebamask

    counts = prepare_celebamask(
        Path(args.raw), Path(args.out), args.size, partition_file=args.partition, limit=args.limit, merged=args.merged
    )
    print(f"wrote {args.out}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))


def _prepare_nyuv2(args: argparse.Namespace) -> None:
    from .data.prepare_nyuv2 import prepare_nyuv2

    size = tuple(args.size) if args.size else None
    info = prepare_nyuv2(
        Path(args.labeled_mat),
        Path(args.meta),
        Path(args.out),
        size=size,
        classes=args.classes,
        normals_dir=Path(args.normals) if args.normals else None,
        crop_border=args.crop_border,
        limit=args.limit,
    )
    print(f"wrote {args.out}: train {info['train']}, val (official test) {info['val']}, {info['classes']} classes")


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
    p.add_argument("--bench-seconds", type=float, default=1.0, help="timing per model and batch size (default 1)")
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

    p = sub.add_parser("prepare", help="convert a raw public dataset release into the layout sparsemtl reads")
    prep = p.add_subparsers(dest="dataset", required=True)
    c = prep.add_parser(
        "celebamask-hq", help="merge CelebAMask-HQ part masks, map to 3 classes, read attributes, split"
    )
    c.add_argument("raw", help="the CelebAMask-HQ release folder (CelebA-HQ-img/, CelebAMask-HQ-mask-anno/, ...)")
    c.add_argument("--out", required=True, help="output folder (use it as data.root with data.name=celebamask-hq)")
    c.add_argument("--size", type=int, default=256, help="output side length (default 256)")
    c.add_argument("--partition", default=None, help="CelebA list_eval_partition.txt for the official split")
    c.add_argument("--merged", default=None, help="folder of already-merged 19-class maps (official order)")
    c.add_argument("--limit", type=int, default=None, help="only the first N images (for a quick check)")
    c.set_defaults(func=_prepare_celebamask)
    n = prep.add_parser("nyuv2", help="official nyu_depth_v2_labeled.mat -> NYUD-MT layout (needs sparsemtl[nyu])")
    n.add_argument("labeled_mat", help="nyu_depth_v2_labeled.mat (MATLAB v7.3 / HDF5)")
    n.add_argument("--meta", required=True, help="folder with splits.mat, classMapping40.mat, class13Mapping.mat")
    n.add_argument("--out", required=True, help="output folder (use it as data.root with data.name=nyuv2)")
    n.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), help="resize (default: keep 480x640)")
    n.add_argument("--classes", type=int, choices=(40, 13), default=40, help="label space (default 40)")
    n.add_argument("--normals", default=None, help="folder of per-frame normals (<id>.npy or .png) to include")
    n.add_argument("--crop-border", action="store_true", help="crop the white border (toolbox 427x561 window)")
    n.add_argument("--limit", type=int, default=None, help="only the first N frames of each split")
    n.set_defaults(func=_prepare_nyuv2)

    p = sub.add_parser("prune", help="physically remove every exactly removable channel, verify, save")
    p.add_argument("source", help="a run directory (its best.pt) or a model file saved by 'sparsemtl prune'")
    p.add_argument("--out", required=True, help="output model file (.pt); a .json report is written next to it")
    p.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), help="input size (default: the run's image size)")
    p.add_argument("--onnx", action="store_true", help="also export ONNX (checked with onnxruntime when installed)")
    p.set_defaults(func=_prune)

    p = sub.add_parser("bench", help="parameters, MACs and measured latency of models (BN folded)")
    p.add_argument("models", nargs="+", help="run directories, run checkpoints or pruned model files")
    p.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), help="input size (default: the first model's)")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8], help="batch sizes (default 1 8)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's current setting)")
    p.add_argument("--min-run-time", type=float, default=1.0, help="seconds of timing per model and batch size")
    p.add_argument("--json", default=None, help="write the results to this JSON file")
    p.set_defaults(func=_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ConfigError, CheckpointError, FileNotFoundError, NonFiniteLossError, PruningVerificationError) as exc:
        print(f"sparsemtl: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
