"""The demo: a dense and a group-sparse multi-task model trained with the same budget, compared."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from .config import ConfigError, load_config
from .evaluation.latency import benchmark_models, format_bench_table
from .evaluation.machine import describe_machine
from .pruning import prune_run
from .reporting import compare_runs
from .runs import atomic_write_json, atomic_write_text, open_model
from .training import train

BENCH_BATCHES = (1, 16)

DEMO_CONFIGS = {"dense": "demo_dense.yaml", "sparse": "demo_sparse.yaml"}


def default_config_dir() -> Path:
    """The repository's ``configs/`` folder (the package is installed editable from the repo)."""
    return Path(__file__).resolve().parents[2] / "configs"


def run_demo(
    out_dir: str | Path | None = None,
    config_dir: str | Path | None = None,
    overrides: list[str] | None = None,
    bench_seconds: float = 1.0,
) -> tuple[str, dict[str, Any]]:
    """Train the demo runs into ``out_dir``, prune the sparse model, measure dense vs pruned, and
    return (the printed tables, summaries)."""
    config_dir = Path(config_dir) if config_dir is not None else default_config_dir()
    out = Path(out_dir) if out_dir is not None else Path("demo-runs") / datetime.now().strftime("%Y%m%d-%H%M%S")
    summaries = {}
    for name, filename in DEMO_CONFIGS.items():
        path = config_dir / filename
        if not path.is_file():
            raise ConfigError(
                f"demo config {str(path)!r} not found; pass --configs DIR with {', '.join(DEMO_CONFIGS.values())}"
            )
        cfg = load_config(path, list(overrides or []) + [f"train.out_dir={out}", f"train.name={name}"])
        lam = cfg.sparsity.lam
        print(
            f"== training the {name} model ({cfg.model.encoder}, lambda={lam}) into {out / name}",
            flush=True,
        )
        summaries[name] = train(cfg).to_dict()
    table = compare_runs(summaries) + "\n\n" + prune_and_measure(out, bench_seconds)
    atomic_write_text(out / "comparison.txt", table + "\n")
    atomic_write_json(out / "comparison.json", summaries)
    return table, summaries


def prune_and_measure(out: Path, bench_seconds: float) -> str:
    """Cut the sparse model's removable channels, then time dense, sparse-with-zeros and pruned
    models (BN folded) on this CPU: zeros alone give no speed-up, removal does."""
    print("== pruning the sparse model and measuring latency", flush=True)
    pruned = prune_run(out / "sparse", out / "sparse-pruned.pt")
    dense, sparse = open_model(out / "dense"), open_model(out / "sparse")
    size = tuple(dense.config.data.image_size)
    models = {"dense": dense.model, "sparse (zeros kept)": sparse.model, "sparse pruned": pruned.model}
    results = benchmark_models(models, size, BENCH_BATCHES, "cpu", None, bench_seconds)
    removed = f"channels removed: {pruned.removed_channels} (verified: outputs unchanged within 1e-5)"
    return removed + "\n" + format_bench_table(results, describe_machine())
