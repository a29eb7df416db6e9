"""Checkpoint cost: ``train.checkpoint_every`` and ``train.async_checkpoint``.

The commit protocol must survive both: ``last.pt`` only at the due epochs and after the last
one, a resume after a crash between two of them ends exactly like an uninterrupted run, a
background write lands the same bytes as a synchronous one, and a failed background write
stops the run with the same one-line error. The validation loss is scripted (one task: the
monitor is that loss) so which epochs improve is known.
"""

from __future__ import annotations

import errno
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from sparsemtl.cli import main
from sparsemtl.config import load_config
from sparsemtl.runs import RunDir, load_checkpoint, save_checkpoint
from sparsemtl.runs.checkpoint_writer import CheckpointWriter, snapshot
from sparsemtl.runs.files import TEMP_PREFIX
from sparsemtl.runs.run_dir import PENDING_BEST, TIME_FIELDS
from sparsemtl.training import Callback, RunInterrupted, Trainer, resume, train
from tests.conftest import TINY
from tests.training.test_faults import assert_tensors_equal

FAST = [*TINY, "model.encoder=test_resnet", "tasks=[depth]", "data.num_train=8", "train.deterministic=true"]
EVERY_2 = [*FAST, "train.epochs=5", "train.checkpoint_every=2"]
#: scripted validation losses of epochs 1..5: epochs 1 and 3 improve, 2, 4 and 5 do not
VAL_LOSSES = [3.0, 4.0, 2.0, 5.0, 6.0]
#: what every_2 runs write, in this order: improvements between two last.pt writes are staged
#: in best.pending.pt and promoted to best.pt right after the next last.pt
EVERY_2_WRITES = [
    (PENDING_BEST, 1),
    ("last.pt", 2),
    ("promote", 1),
    (PENDING_BEST, 3),
    ("last.pt", 4),
    ("promote", 3),
    ("last.pt", 5),
]
CHILD = Path(__file__).with_name("fault_child.py")


def script_val_losses(monkeypatch: pytest.MonkeyPatch) -> None:
    original = Trainer.evaluate

    def scripted(self: Trainer, split: str) -> Any:
        result = original(self, split)
        if split == "val":
            (task,) = result.losses
            result.losses[task] = VAL_LOSSES[self.epoch]  # self.epoch: the epoch before this one
        return result

    monkeypatch.setattr(Trainer, "evaluate", scripted)


def spy_writes(monkeypatch: pytest.MonkeyPatch, delay: float = 0.0) -> list[tuple[str, int]]:
    """Every checkpoint write and promotion, in the order they reach the disk (``delay``: each
    write first sleeps, so a background write is still in flight when the loop goes on)."""
    events: list[tuple[str, int]] = []
    save, promote = RunDir.save_checkpoint, RunDir.promote_pending_best

    def saving(self: RunDir, name: str, payload: dict[str, Any]) -> None:
        time.sleep(delay)
        save(self, name, payload)
        events.append((name, int(payload["epoch"])))

    def promoting(self: RunDir) -> None:
        promote(self)
        events.append(("promote", int(load_checkpoint(self / "best.pt")["epoch"])))

    monkeypatch.setattr(RunDir, "save_checkpoint", saving)
    monkeypatch.setattr(RunDir, "promote_pending_best", promoting)
    return events


def records(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def without_times(run: Path) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k not in TIME_FIELDS} for r in records(run)]


def assert_same_run(reference: Path, run: Path) -> None:
    """Same summary metrics, records (but for times), best model and training state, and a
    clean directory."""
    ref, got = (json.loads((p / "summary.json").read_text()) for p in (reference, run))
    for key in ("test", "val", "best_epoch", "epochs_run", "monitor"):
        assert got[key] == ref[key], key
    assert without_times(run) == without_times(reference)
    best_ref, best = load_checkpoint(reference / "best.pt"), load_checkpoint(run / "best.pt")
    assert_tensors_equal(best_ref["model"], best["model"], "best")
    last_ref, last = load_checkpoint(reference / "last.pt"), load_checkpoint(run / "last.pt")
    for key in ("epoch", "model", "optimizer", "scheduler", "rng", "best_epoch", "best_val"):
        assert_tensors_equal(last_ref[key], last[key], f"last.pt {key}")
    assert not (run / PENDING_BEST).exists() and not list(run.glob(f"{TEMP_PREFIX}*"))


@pytest.fixture(scope="module")
def every_2(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, list[tuple[str, int]]]]:
    """Uninterrupted scripted runs with checkpoint_every=2, written synchronously ('false') and
    in the background ('true'): their run directories and their writes."""
    torch.set_num_threads(2)  # as conftest sets it for each test: a module fixture runs before that
    out = tmp_path_factory.mktemp("every-2")
    runs = {}
    with pytest.MonkeyPatch.context() as monkeypatch:
        script_val_losses(monkeypatch)
        events = spy_writes(monkeypatch)
        for background in ("false", "true"):
            cfg = load_config(None, [*EVERY_2, f"train.async_checkpoint={background}", f"train.out_dir={out}"])
            runs[background] = (Path(train(cfg, out / f"async-{background}").run_dir), events.copy())
            events.clear()
    return runs


@pytest.mark.parametrize("background", ["false", "true"])
def test_every_two_epochs_writes_last_at_2_4_and_the_last_epoch(every_2, background: str) -> None:
    run, events = every_2[background]
    assert events == EVERY_2_WRITES
    summary = json.loads((run / "summary.json").read_text())
    assert summary["best_epoch"] == 3 and load_checkpoint(run / "best.pt")["epoch"] == 3
    assert load_checkpoint(run / "last.pt")["epoch"] == 5 and not (run / PENDING_BEST).exists()
    lines = records(run)
    assert [r["epoch"] for r in lines] == [1, 2, 3, 4, 5]
    assert all(r["checkpoint_s"] >= 0 and r["checkpoint_write_s"] >= 0 for r in lines)
    for key in ("checkpoint_s", "checkpoint_write_s"):  # the records' times plus the final commit's
        assert summary["timing"][key] >= round(sum(r[key] for r in lines), 3) - 1e-3, key


def test_background_writes_hold_the_same_checkpoints_as_synchronous_ones(every_2) -> None:
    sync, background = every_2["false"][0], every_2["true"][0]
    assert without_times(sync) == without_times(background)
    for name in ("last.pt", "best.pt"):
        a, b = load_checkpoint(sync / name), load_checkpoint(background / name)
        for payload in (a, b):  # all but the setting that differs and the time
            payload.pop("seconds", None)
            payload["config"]["train"].pop("async_checkpoint")
        assert_tensors_equal(a, b, name)


def test_a_background_write_is_byte_identical_to_a_synchronous_one(tiny_config, tmp_path: Path) -> None:
    trainer = Trainer(tiny_config(*FAST, "train.name=bytes"))
    trainer._train_step(next(iter(trainer.loaders.train)))  # the optimiser has its Adam state
    trainer.run.release()
    state = trainer.state_dict()
    save_checkpoint(state, tmp_path / "sync.pt")
    writer = CheckpointWriter(background=True)
    copy = snapshot(state)
    with torch.no_grad():  # training goes on while the copy is written
        for p in trainer.model.parameters():
            p.add_(1.0)
    writer.submit(lambda: save_checkpoint(copy, tmp_path / "async.pt"), epoch=1)
    assert writer.wait().epoch == 1
    assert (tmp_path / "async.pt").read_bytes() == (tmp_path / "sync.pt").read_bytes()
    assert load_checkpoint(tmp_path / "async.pt")["optimizer"]["state"]  # loadable, with the Adam moments


def test_ctrl_c_between_commits_keeps_the_write_in_flight_and_resumes_to_the_same_run(
    every_2, tiny_config, monkeypatch: pytest.MonkeyPatch
) -> None:
    script_val_losses(monkeypatch)
    events = spy_writes(monkeypatch, delay=0.3)  # best.pending.pt of epoch 3 is still being written
    seen = []

    class Committed(Callback):
        def on_epoch_end(self, trainer: Trainer, record: dict[str, Any]) -> None:
            on_disk = load_checkpoint(trainer.run / "last.pt")["epoch"] if trainer.run.has("last.pt") else 0
            seen.append((trainer.committed, on_disk))

    original = Trainer._train_epoch

    def ctrl_c_in_epoch_4(self: Trainer, epoch: int) -> Any:
        if epoch == 4:
            raise KeyboardInterrupt
        return original(self, epoch)

    monkeypatch.setattr(Trainer, "_train_epoch", ctrl_c_in_epoch_4)
    cfg = tiny_config(*EVERY_2, "train.async_checkpoint=true", "train.name=cut")
    with pytest.raises(RunInterrupted, match="last complete checkpoint is epoch 2 "):
        train(cfg, callbacks=[Committed()])
    assert all(committed <= on_disk for committed, on_disk in seen), seen  # never ahead of the disk
    run = Path(cfg.train.out_dir) / "cut"
    assert events == EVERY_2_WRITES[:4]  # the staged best of epoch 3 landed before the run stopped
    assert load_checkpoint(run / "last.pt")["epoch"] == 2 and load_checkpoint(run / "best.pt")["epoch"] == 1
    assert [r["epoch"] for r in records(run)] == [1, 2, 3]  # epoch 3 was logged, never committed
    monkeypatch.setattr(Trainer, "_train_epoch", original)
    resume(run, ["train.async_checkpoint=false"])  # epoch 3's staged best is dropped and trained again
    assert_same_run(every_2["false"][0], run)


def test_a_crash_after_last_pt_but_before_the_promotion_keeps_the_staged_best(
    every_2, tiny_config, monkeypatch: pytest.MonkeyPatch
) -> None:
    script_val_losses(monkeypatch)
    promote = RunDir.promote_pending_best
    calls = []

    def power_cut_at_the_second(self: RunDir) -> None:
        calls.append(1)
        if len(calls) == 2:  # last.pt of epoch 4 is on disk, best.pt still holds epoch 1
            raise RuntimeError("power cut")
        promote(self)

    monkeypatch.setattr(RunDir, "promote_pending_best", power_cut_at_the_second)
    cfg = tiny_config(*EVERY_2, "train.async_checkpoint=true", "train.name=gap")
    with pytest.raises(RuntimeError, match="power cut"):  # raised in the writer, surfaced by the loop
        train(cfg)
    run = Path(cfg.train.out_dir) / "gap"
    assert load_checkpoint(run / "last.pt")["epoch"] == 4 and load_checkpoint(run / "best.pt")["epoch"] == 1
    assert load_checkpoint(run / PENDING_BEST)["epoch"] == 3
    monkeypatch.setattr(RunDir, "promote_pending_best", promote)
    resume(run)  # last.pt names epoch 3 as the best: its staged model becomes best.pt
    assert_same_run(every_2["true"][0], run)


@pytest.mark.parametrize("background", ["false", "true"])
def test_a_failed_write_stops_the_run_with_the_same_one_line_error(
    background: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    original = torch.save

    def disk_full_at_last_pt(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        if isinstance(obj, dict) and "optimizer" in obj:
            raise OSError(errno.ENOSPC, "No space left on device")
        original(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", disk_full_at_last_pt)
    args = [*FAST, "train.epochs=2", f"train.async_checkpoint={background}", f"train.out_dir={tmp_path}"]
    assert main(["train", *args, "train.name=full"]) == 2
    err = capsys.readouterr().err
    run = tmp_path / "full"
    assert err.splitlines() == [
        f"sparsemtl: error: could not write {str(run / 'last.pt')!r}: no space left on device; "
        "no earlier version existed"
    ], err
    assert not (run / "last.pt").exists() and not list(run.glob(f"{TEMP_PREFIX}*"))
    assert [r["epoch"] for r in records(run)] == [1]  # the background error stops the loop at the next epoch end


def test_sigkill_during_a_background_write_resumes_from_the_previous_commit(tmp_path: Path) -> None:
    args = [*FAST, "train.epochs=3", "train.checkpoint_every=2", "train.async_checkpoint=true"]
    train(load_config(None, [*args, f"train.out_dir={tmp_path}", "train.name=ref"]))
    cmd = [sys.executable, str(CHILD), "save:last:3:0.5", "--", "train", *args, f"train.out_dir={tmp_path}"]
    result = subprocess.run([*cmd, "train.name=cut"], capture_output=True, text=True, timeout=300)
    assert result.returncode == -signal.SIGKILL, result.stderr
    run = tmp_path / "cut"
    assert load_checkpoint(run / "last.pt")["epoch"] == 2
    temps = [p.name for p in run.glob(f"{TEMP_PREFIX}*")]
    assert len(temps) == 1 and temps[0].startswith(f"{TEMP_PREFIX}last.pt."), temps
    assert [r["epoch"] for r in records(run)] == [1, 2, 3]
    assert main(["train", "--resume", str(run)]) == 0
    assert_same_run(tmp_path / "ref", run)


@pytest.mark.parametrize(
    "override, expected",
    [
        ("train.checkpoint_every=0", "config key 'train.checkpoint_every': expected an integer >= 1"),
        ("train.checkpoint_every=1.5", "config key 'train.checkpoint_every': expected an integer, got 1.5"),
        ("train.async_checkpoint=maybe", "config key 'train.async_checkpoint': expected true/false, got 'maybe'"),
    ],
)
def test_bad_checkpoint_settings_are_one_line_errors(
    override: str, expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["train", *FAST, f"train.out_dir={tmp_path}", override]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"sparsemtl: error: {expected}"), err
    assert not any(tmp_path.iterdir())
