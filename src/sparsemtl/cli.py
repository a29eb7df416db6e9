"""Command-line interface: a thin layer over the Python API.

Every failure the user can cause reaches them as one line, ``sparsemtl: error: ...``, with a
non-zero exit code and no traceback (``--debug`` or ``SPARSEMTL_DEBUG=1`` shows it).
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from pathlib import Path
from typing import NoReturn

from .config import load_config
from .errors import SparsemtlError, one_line


class ArgumentError(SparsemtlError):
    """A command-line argument is missing or malformed."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line (argparse prints usage plus the error)."""

    def error(self, message: str) -> NoReturn:
        raise ArgumentError(f"{message} (see '{self.prog} --help')")


def _train(args: argparse.Namespace) -> None:
    from .training import resume, train

    if args.resume:
        if args.config:
            raise ArgumentError("--resume takes the config stored in the run directory; drop --config")
        summary = resume(args.resume, args.overrides)
    else:
        summary = train(load_config(args.config, args.overrides))
    print(
        f"run finished: {summary.run_dir} (best epoch {summary.best_epoch}, "
        f"zero groups {summary.sparsity['zero_group_pct']:.1f}%)"
    )


def _evaluate(args: argparse.Namespace) -> None:
    from .evaluation.model_file import evaluate_model_file
    from .reporting import format_table
    from .runs import atomic_write_json

    opened, result = evaluate_model_file(args.model, args.split, args.overrides)
    rows = [[f"{task}/{name}", value] for task, metrics in result.metrics.items() for name, value in metrics.items()]
    rows.append(["loss (sum over tasks)", result.total_loss])
    epoch = f", epoch {opened.epoch}" if opened.epoch is not None else ""
    print(format_table([f"{args.split} metric ({opened.path}{epoch})", "value"], rows))
    if args.json:
        atomic_write_json(Path(args.json), {"model": str(opened.path), "split": args.split, **result.to_dict()})
        print(f"wrote {args.json}")


def _check_data(args: argparse.Namespace) -> None:
    from .data.check import check_data
    from .errors import DataError
    from .runs import atomic_write_json

    cfg = load_config(args.config, args.overrides)
    splits = args.split or ["train", "val", "test"]
    report = check_data(cfg.data, cfg.tasks, splits, raise_errors=False)
    print(report.summary())
    if args.json:
        atomic_write_json(Path(args.json), report.to_dict())
        print(f"wrote {args.json}")
    if not report.ok:
        raise DataError(report.failure())


def _list(args: argparse.Namespace) -> None:
    from .registries import axes, list_entries

    for axis in [args.what] if args.what else axes():
        if axis == "encoders" and not args.what:
            print("encoders: any timm CNN, see 'sparsemtl list encoders [PATTERN]', e.g. 'resnet*'")
            continue
        entries = list_entries(axis, args.pattern)
        print(f"{axis}:")
        width = max((len(name) for name, _ in entries), default=0)
        for name, text in entries:
            print(f"  {name:<{width}}  {text}".rstrip())


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
    import torch

    from .pruning import prune_run
    from .pruning.rounding import check_round_to

    size = tuple(args.size) if args.size else None
    dtype = {"float32": None, "float64": torch.float64}[args.verify_dtype]
    round_to = check_round_to(args.round_to, "argument --round-to")
    result = prune_run(args.source, args.out, input_size=size, onnx=args.onnx, verify_dtype=dtype, round_to=round_to)
    print(result.format_table())
    extra = f", {Path(args.out).with_suffix('.onnx')}" if args.onnx else ""
    print(f"wrote {args.out}, {Path(args.out).with_suffix('.json')}{extra}")


def _predict(args: argparse.Namespace) -> None:
    from .evaluation.predict import predict

    size = tuple(args.size) if args.size else None
    result = predict(
        args.model, args.inputs, args.out, args.device, args.batch_size, args.samples, size, not args.no_progress
    )
    print(f"predicted {result.images} image(s) with {result.model}: {len(result.files)} files in {result.out_dir}")


def _bench(args: argparse.Namespace) -> None:
    from .benchmarking import bench_command

    settings = (args.size, args.batch, args.device, args.threads, args.min_run_time, args.json)
    print(bench_command(args.models, *settings, channels_last=args.channels_last))


def _study(args: argparse.Namespace) -> None:
    from .errors import RunError
    from .studies import load_study, run_study

    flags = {
        "partition": args.partition,
        "gpus_per_node": args.gpus,
        "timeout_min": args.timeout_min,
        "array_parallelism": args.array_parallelism,
    }
    slurm = [f"study.slurm.{key}={value}" for key, value in flags.items() if value is not None]
    spec = load_study(args.study, [*args.overrides, *slurm])  # flags are validated like the study file
    out = Path(args.out) if args.out else Path("study-runs") / Path(args.study).stem
    result = run_study(spec, out, workers=args.workers, launcher=args.launcher, dry_run=args.dry_run)
    if args.dry_run:
        print(result.table())
        counts = {s: list(result.states.values()).count(s) for s in ("done", "partial", "new")}
        print(f"{len(result.cells)} cells in {out}: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
        return
    done = len(result.cells) - len(result.failed)
    print(f"study {out}: {done} of {len(result.cells)} cells done")
    try:
        from .studies.report import write_report
    except ModuleNotFoundError as exc:
        if exc.name != "sparsemtl.studies.report":
            raise
        print("note: the study report is not available in this version; skipped")
    else:
        print(f"wrote {write_report(out)}")
    if result.failed:
        names = ", ".join(result.failed)
        raise RunError(f"{len(result.failed)} cell(s) failed: {names} (see {out / 'study.log'}; rerun to retry)")


def _report(args: argparse.Namespace) -> None:
    from .studies.report import write_report

    print(f"wrote {write_report(args.study_dir, args.out)}")


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
    parser = _Parser(
        prog="sparsemtl",
        description="Parsimonious multi-task vision models with group sparsity. "
        "Errors are one line; --debug (or SPARSEMTL_DEBUG=1) shows the traceback.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "train",
        help="train one run from a YAML config",
        description="Train one run. Overrides are dotted keys, e.g. optim.lr=0.001 sparsity.lam=1e-4.",
    )
    p.add_argument("--config", required=False, default=None, help="YAML config file (defaults apply to missing keys)")
    p.add_argument(
        "--resume",
        default=None,
        metavar="RUN_DIR",
        help="continue an interrupted run from its last complete epoch (only train.epochs, train.patience, "
        "train.device, data.root and a few more may be overridden)",
    )
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    p.set_defaults(func=_train)

    p = sub.add_parser("evaluate", help="evaluate a run directory, checkpoint or pruned file on a split")
    p.add_argument("model", help="a run directory (its best.pt), a checkpoint, or a pruned model file")
    p.add_argument("--split", default="test", help="train, val or test (default test)")
    p.add_argument("--json", default=None, help="also write the result to this JSON file")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="data.* / train.device / train.amp overrides")
    p.set_defaults(func=_evaluate)

    p = sub.add_parser(
        "check-data",
        help="check every file of a config's dataset (readable, consistent, plausible) without training",
    )
    p.add_argument("--config", default=None, help="YAML config file whose data and tasks are checked")
    p.add_argument("--split", nargs="+", choices=("train", "val", "test"), help="splits to check (default all)")
    p.add_argument("--json", default=None, help="write the full report (every bad sample) to this JSON file")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. data.root=DIR")
    p.set_defaults(func=_check_data)

    p = sub.add_parser("list", help="list the registered datasets, task kinds, penalties, ... (every registry)")
    p.add_argument("what", nargs="?", default=None, help="one registry, e.g. penalties, schedulers, encoders")
    p.add_argument("pattern", nargs="?", default="*", help="for encoders: a shell pattern over timm names")
    p.set_defaults(func=_list)

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

    p = sub.add_parser(
        "study",
        help="run a grid of runs from a study file (skips done cells, resumes interrupted ones), then report",
        description="Run every cell of a study file into one folder: cells/<id> are normal run directories. "
        "key=value overrides change the base run config; study.<key>=value changes the study "
        "(e.g. study.grid.seed=[0] study.bench.device=cuda).",
    )
    p.add_argument("study", help="study YAML file (base config, grid, prune/bench/slurm settings)")
    p.add_argument("--out", default=None, help="study folder (default: study-runs/<study file name>)")
    p.add_argument("--workers", type=int, default=1, help="cells run at once on this machine (default 1)")
    p.add_argument("--launcher", choices=("local", "slurm"), default="local", help="local processes or SLURM jobs")
    p.add_argument("--dry-run", action="store_true", help="list the cells and their state, run nothing")
    p.add_argument("--partition", default=None, help="SLURM partition (overrides slurm.partition)")
    p.add_argument("--gpus", type=int, default=None, help="GPUs per SLURM job (overrides slurm.gpus_per_node)")
    p.add_argument("--timeout-min", type=int, default=None, help="SLURM time limit per cell, minutes")
    p.add_argument("--array-parallelism", type=int, default=None, help="SLURM array tasks running at once")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="base config or study.<key> overrides")
    p.set_defaults(func=_study)

    p = sub.add_parser("report", help="aggregate a study folder into tables, plots and report.html")
    p.add_argument("study_dir", help="a folder written by 'sparsemtl study'")
    p.add_argument("--out", default=None, help="where to write report.html and its files (default: inside STUDY_DIR)")
    p.set_defaults(func=_report)

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
    p.add_argument(
        "--verify-dtype",
        choices=("float32", "float64"),
        default="float32",
        help="dtype both models run in for the output check (float64: rounding cannot hide a small error)",
    )
    p.add_argument(
        "--round-to",
        type=int,
        default=1,
        metavar="N",
        help="keep just enough zero channels that every cut width is a multiple of N (e.g. 8 or 16: faster "
        "vector and GEMM kernels; outputs stay exact; default 1)",
    )
    p.set_defaults(func=_prune)

    p = sub.add_parser(
        "predict",
        help="predict every task on images (any size) or on the run's own test samples; write pictures and tables",
        description="Writes per image a picture of every dense task (segmentation with a class legend), depth "
        "also as a 16-bit PNG in millimetres, a side-by-side panel, and one CSV/JSON of the image-level outputs.",
    )
    p.add_argument("model", help="a run directory (its best.pt), a checkpoint, or a pruned model file")
    p.add_argument("inputs", nargs="*", metavar="IMAGE_OR_DIR", help="image files, or folders of images")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--samples", type=int, default=0, help="also the first N samples of the run's test split, with ground truth"
    )
    p.add_argument("--device", default="cpu", help="cpu, cuda[:N] or auto (default cpu)")
    p.add_argument("--batch-size", type=int, default=8, help="images per forward pass (default 8)")
    p.add_argument(
        "--size", type=int, nargs=2, metavar=("H", "W"), help="model input size (default: the run's data.image_size)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_predict)

    p = sub.add_parser("bench", help="parameters, MACs and measured latency of models (BN folded)")
    p.add_argument("models", nargs="+", help="run directories, run checkpoints or pruned model files")
    p.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), help="input size (default: the first model's)")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8], help="batch sizes (default 1 8)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's current setting)")
    p.add_argument("--min-run-time", type=float, default=1.0, help="seconds of timing per model and batch size")
    p.add_argument("--json", default=None, help="write the results to this JSON file")
    p.add_argument(
        "--channels-last", action="store_true", help="run the models and inputs in torch.channels_last memory format"
    )
    p.set_defaults(func=_bench)
    return parser


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Like ``parse_args``, but ``key=value`` overrides may also follow options
    (``sparsemtl evaluate RUN --split val data.root=...``)."""
    args, extra = parser.parse_known_args(argv)
    if extra and hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def _debug_requested(argv: list[str]) -> bool:
    return "--debug" in argv or os.environ.get("SPARSEMTL_DEBUG", "") not in ("", "0")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = _debug_requested(argv)
    argv = [a for a in argv if a != "--debug"]
    try:
        args = _parse(build_parser(), argv)
        args.func(args)
    except SparsemtlError as exc:
        return _fail(_message(exc), exc.exit_code, debug)
    except KeyboardInterrupt:
        return _fail("interrupted", 130, debug)
    except SystemExit as exc:  # --help and friends
        return int(exc.code or 0)
    except MemoryError:
        return _fail("out of memory (try a smaller data.batch_size or data.image_size)", 1, debug)
    except Exception as exc:  # noqa: BLE001 - a bug or an unwrapped library error: still one line
        where = traceback.extract_tb(exc.__traceback__)[-1]
        return _fail(
            f"unexpected {type(exc).__name__} ({Path(where.filename).name}:{where.lineno}): {one_line(exc)}; "
            "rerun with --debug for the traceback",
            1,
            debug,
        )
    return 0


def _message(exc: SparsemtlError) -> str:
    """One line; an error re-raised from a DataLoader worker carries the worker's traceback in
    its message, of which only the original error's own last line is kept."""
    text = str(exc)
    if "Original Traceback" in text:
        last = text.strip().splitlines()[-1]
        text = last.split(": ", 1)[1] if last.startswith(type(exc).__module__) else last
    return one_line(text)


def _fail(message: str, code: int, debug: bool) -> int:
    if debug:
        traceback.print_exc()
    print(f"sparsemtl: error: {message}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
