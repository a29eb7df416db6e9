"""Fault suite: real training processes killed at exact moments resume to the uninterrupted result.

Each test runs ``sparsemtl train`` in a child process (``fault_child.py``) that kills itself at a
chosen point (mid-step, half-way through writing a checkpoint, at the final test evaluation) or
receives SIGTERM or a file-size limit; the run is then resumed in this process (same thread
count, deterministic kernels) and must end bitwise like the shared uninterrupted reference run:
summary metrics, best epoch, zero groups, best.pt weights, last.pt state, metrics.jsonl. The
encoder is timm's tiny ``test_resnet`` instead of resnet10t: the code paths are the same, and
checkpoints of 6 MB instead of 65 MB keep the whole file near a minute on 2 cores.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from sparsemtl.cli import main
from sparsemtl.config import load_config
from sparsemtl.runs import load_checkpoint
from sparsemtl.runs.files import TEMP_PREFIX
from sparsemtl.runs.run_dir import TIME_FIELDS
from sparsemtl.training import RunInterrupted, Trainer, train
from tests.conftest import TINY

CHILD = Path(__file__).with_name("fault_child.py")
THREADS = 2
EPOCHS = 4
CONFIG = [
    *TINY,
    "model.encoder=test_resnet",
    f"train.epochs={EPOCHS}",
    "train.task_patience=2",
    "sparsity.penalty=group_lasso",
    "sparsity.lam=0.05",
    "optim.lr=0.003",
    "train.deterministic=true",
]


def run_args(out: Path, name: str = "run") -> list[str]:
    return [*CONFIG, f"train.out_dir={out}", f"train.name={name}"]


def child(fault: str, *cli: str, fsize: int | None = None) -> subprocess.CompletedProcess:
    """``sparsemtl CLI...`` in a fresh process with one fault injected (see fault_child.py)."""
    limit = ["--fsize", str(fsize)] if fsize is not None else []
    cmd = [sys.executable, str(CHILD), "--threads", str(THREADS), *limit, fault, "--", *cli]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def resume_here(run: Path) -> None:
    """``sparsemtl train --resume RUN`` in this process (saves a child's ~5 s of imports)."""
    torch.set_num_threads(THREADS)
    assert main(["train", "--resume", str(run)]) == 0


def epochs_in(run: Path) -> list[int]:
    return [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def temps_in(run: Path) -> list[str]:
    return sorted(p.name for p in run.glob(f"{TEMP_PREFIX}*"))


def without_seconds(run: Path) -> list[dict[str, Any]]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIME_FIELDS} for line in lines]


def assert_tensors_equal(a: Any, b: Any, where: str) -> None:
    """Exact equality of nested checkpoint contents (tensors bitwise, everything else ==)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for key in a:
            assert_tensors_equal(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_tensors_equal(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def assert_same_result(reference: Path, run: Path, resumed: bool = True) -> None:
    """The resumed run ends exactly like the uninterrupted one, and its directory is clean
    (metrics.jsonl is checked by :func:`assert_same_metrics`)."""
    ref, got = (json.loads((p / "summary.json").read_text()) for p in (reference, run))
    assert (got["resumed"] >= 1) == resumed, got["resumed"]
    for key in ("test", "val", "best_epoch", "epochs_run", "frozen_tasks", "monitor", "sparsity"):
        assert got[key] == ref[key], key
    assert temps_in(run) == [], "a stale temporary file survived the resume"
    best_ref, best = load_checkpoint(reference / "best.pt"), load_checkpoint(run / "best.pt")
    assert best["epoch"] == best_ref["epoch"]
    assert_tensors_equal(best_ref["model"], best["model"], "best.pt model")  # the zero groups, and every weight
    last_ref, last = load_checkpoint(reference / "last.pt"), load_checkpoint(run / "last.pt")
    for key in ("model", "optimizer", "scheduler", "stopper", "task_stoppers", "frozen", "rng"):
        assert_tensors_equal(last_ref[key], last[key], f"last.pt {key}")


def assert_same_metrics(reference: Path, run: Path) -> None:
    """One line per completed epoch, each equal to the uninterrupted run's but for its time."""
    assert epochs_in(run) == list(range(1, EPOCHS + 1)), epochs_in(run)
    assert without_seconds(run) == without_seconds(reference)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted run every faulted run must reproduce (shared: it costs a whole run)."""
    torch.set_num_threads(THREADS)
    out = tmp_path_factory.mktemp("reference")
    train(load_config(None, run_args(out)))
    return out / "run"


def assert_killed(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == -signal.SIGKILL, f"the fault did not fire: rc {result.returncode}\n{result.stderr}"


@pytest.mark.parametrize(
    "fault, last_epoch, torn",
    [
        pytest.param("step:3:1", 2, None, id="mid-step"),
        pytest.param("save:last:3:0.5", 2, "last.pt", id="writing-last.pt"),
        pytest.param("save:best:2:0.3", 2, "best.pt", id="writing-best.pt"),
        pytest.param("evaluate:test", EPOCHS, None, id="final-evaluation"),
    ],
)
def test_sigkill_at_an_exact_moment_resumes_to_the_uninterrupted_result(
    reference: Path, tmp_path: Path, fault: str, last_epoch: int, torn: str | None
) -> None:
    assert_killed(child(fault, "train", *run_args(tmp_path)))
    run = tmp_path / "run"
    # What the kill left: the previous commit point, intact; a torn temp file only, never a torn target.
    assert not (run / "summary.json").exists()
    assert load_checkpoint(run / "last.pt")["epoch"] == last_epoch
    if (run / "best.pt").exists():
        assert load_checkpoint(run / "best.pt")["epoch"] <= last_epoch
    if torn is not None:
        temps = temps_in(run)  # the kill came mid-write: exactly one partial temp file of that target
        assert len(temps) == 1 and temps[0].startswith(f"{TEMP_PREFIX}{torn}."), temps
    epochs = epochs_in(run)  # a line may precede its commit point (resume drops it), none may be missing
    assert epochs[:last_epoch] == list(range(1, last_epoch + 1)) and len(epochs) <= last_epoch + 1, epochs
    resume_here(run)
    assert_same_result(reference, run)
    assert_same_metrics(reference, run)


def test_sigkill_while_writing_the_first_checkpoint_restarts_from_scratch(reference: Path, tmp_path: Path) -> None:
    assert_killed(child("save:last:1:0.5", "train", *run_args(tmp_path)))
    run = tmp_path / "run"
    temps = temps_in(run)
    assert not (run / "last.pt").exists() and len(temps) == 1 and temps[0].startswith(f"{TEMP_PREFIX}last.pt.")
    assert epochs_in(run) == [1]  # epoch 1's line is written just before its (killed) commit point
    resume_here(run)
    assert_same_result(reference, run, resumed=False)
    assert_same_metrics(reference, run)


def test_sigterm_exits_130_naming_the_last_checkpoint_and_resumes(reference: Path, tmp_path: Path) -> None:
    result = child("step:2:1:TERM", "train", *run_args(tmp_path))
    run = tmp_path / "run"
    assert result.returncode == 130, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("sparsemtl: error: training interrupted"), result.stderr
    assert "last complete checkpoint is epoch 1 " in lines[0] and f"--resume {run}" in lines[0], lines[0]
    assert load_checkpoint(run / "last.pt")["epoch"] == 1 and temps_in(run) == []
    assert epochs_in(run) == [1] and not (run / "summary.json").exists()
    resume_here(run)
    assert_same_result(reference, run)
    assert_same_metrics(reference, run)


def test_full_disk_fails_in_one_line_keeps_last_checkpoint_and_resumes(
    reference: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = Trainer._train_epoch

    def stop_before_epoch_3(self: Trainer, epoch: int) -> dict[str, Any]:
        if epoch == 3:
            raise KeyboardInterrupt  # Ctrl-C: last.pt holds epoch 2
        return original(self, epoch)

    monkeypatch.setattr(Trainer, "_train_epoch", stop_before_epoch_3)
    torch.set_num_threads(THREADS)
    with pytest.raises(RunInterrupted, match="epoch 2"):
        train(load_config(None, run_args(tmp_path)))
    monkeypatch.undo()
    run = tmp_path / "run"
    before = (run / "last.pt").read_bytes()

    # A file-size limit below last.pt: epoch 3 trains, then writing its last.pt fails with EFBIG.
    result = child("none", "train", "--resume", str(run), f"train.epochs={EPOCHS}", fsize=len(before) // 2)
    lines = result.stderr.splitlines()
    assert result.returncode not in (0, 130), result.stderr
    assert len(lines) == 1 and lines[0].startswith("sparsemtl: error: ") and "Traceback" not in result.stderr, lines
    assert (run / "last.pt").read_bytes() == before and load_checkpoint(run / "last.pt")["epoch"] == 2
    assert temps_in(run) == [] and not (run / "summary.json").exists()
    assert epochs_in(run) == [1, 2, 3]  # epoch 3 was logged, never committed: resume drops it

    resume_here(run)  # the failed attempt must not have changed what the run continues from
    assert_same_result(reference, run)
    assert_same_metrics(reference, run)

    assert result.returncode == 2, result.stderr  # a TrainingError, not an unexpected error (1)
    assert lines[0].startswith(f"sparsemtl: error: could not write {str(run / 'last.pt')!r}: "), lines[0]
    assert lines[0].endswith("; the previous version is intact"), lines[0]
