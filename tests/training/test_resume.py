"""Resume: an interrupted run continued from last.pt ends exactly like the uninterrupted run."""

import json

import pytest
import torch

from sparsemtl.cli import main
from sparsemtl.errors import RunError
from sparsemtl.runs import load_checkpoint
from sparsemtl.runs.run_dir import TIME_FIELDS
from sparsemtl.training import RunInterrupted, Trainer, resume, train

SPARSE = ["sparsity.penalty=group_lasso", "sparsity.lam=0.05", "optim.lr=0.003", "train.deterministic=true"]


def interrupt_at(monkeypatch, method: str, when):
    """Make ``Trainer.<method>`` raise KeyboardInterrupt (as Ctrl-C would) the first time
    ``when(trainer, *args)`` is true."""
    original = getattr(Trainer, method)
    fired = []

    def patched(self, *args, **kwargs):
        if not fired and when(self, *args):
            fired.append(True)
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, method, patched)


def summary_of(run_dir):
    return json.loads((run_dir / "summary.json").read_text())


def zero_pattern(run_dir):
    model = load_checkpoint(run_dir / "best.pt")["model"]
    return {k: (v.flatten(1).abs().sum(0) == 0) for k, v in model.items() if k.startswith("encoder") and v.ndim == 4}


@pytest.fixture
def reference(tiny_config):
    """The uninterrupted run every resumed run must reproduce."""
    train(tiny_config("train.epochs=4", "train.name=ref", "train.task_patience=2", *SPARSE))
    return tiny_config().train.out_dir


def assert_same_run(a, b):
    sa, sb = summary_of(a), summary_of(b)
    assert sa["test"] == sb["test"] and sa["val"] == sb["val"]
    assert sa["best_epoch"] == sb["best_epoch"] and sa["sparsity"]["zero_groups"] == sb["sparsity"]["zero_groups"]
    assert sa["frozen_tasks"] == sb["frozen_tasks"]
    pa, pb = zero_pattern(a), zero_pattern(b)
    assert all(torch.equal(pa[k], pb[k]) for k in pa)
    ma = [json.loads(line) for line in (a / "metrics.jsonl").read_text().splitlines()]
    mb = [json.loads(line) for line in (b / "metrics.jsonl").read_text().splitlines()]
    strip = [{k: v for k, v in r.items() if k not in TIME_FIELDS} for r in ma]
    assert strip == [{k: v for k, v in r.items() if k not in TIME_FIELDS} for r in mb]


def test_interrupted_mid_epoch_resumes_to_the_same_metrics_and_zero_groups(tiny_config, reference, monkeypatch):
    from pathlib import Path

    interrupt_at(monkeypatch, "_train_epoch", lambda self, epoch: epoch == 3)
    cfg = tiny_config("train.epochs=4", "train.name=cut", "train.task_patience=2", *SPARSE)
    with pytest.raises(RunInterrupted, match="last complete checkpoint is epoch 2"):
        train(cfg)
    monkeypatch.undo()
    run = Path(cfg.train.out_dir) / "cut"
    assert not (run / "summary.json").exists() and load_checkpoint(run / "last.pt")["epoch"] == 2
    summary = resume(run)
    assert summary.resumed == 1 and summary.epochs_run == 4
    assert_same_run(Path(reference) / "ref", run)


def test_killed_after_the_last_epoch_finishes_by_evaluating_the_best_checkpoint(tiny_config, reference, monkeypatch):
    from pathlib import Path

    interrupt_at(monkeypatch, "_finish", lambda self: True)
    cfg = tiny_config("train.epochs=4", "train.name=late", "train.task_patience=2", *SPARSE)
    with pytest.raises(RunInterrupted, match="epoch 4"):
        train(cfg)
    monkeypatch.undo()
    run = Path(cfg.train.out_dir) / "late"
    resume(run)
    assert_same_run(Path(reference) / "ref", run)


def test_crash_between_last_and_best_checkpoint_rewrites_best_from_last(tiny_config, reference, monkeypatch):
    from pathlib import Path

    interrupt_at(monkeypatch, "_save_best", lambda self: self.epoch == 2)
    cfg = tiny_config("train.epochs=4", "train.name=gap", "train.task_patience=2", *SPARSE)
    with pytest.raises(RunInterrupted):
        train(cfg)
    monkeypatch.undo()
    run = Path(cfg.train.out_dir) / "gap"
    last = load_checkpoint(run / "last.pt")
    assert last["epoch"] == 2 and last["best_epoch"] == 2 and load_checkpoint(run / "best.pt")["epoch"] == 1
    resume(run)
    assert_same_run(Path(reference) / "ref", run)


def test_resume_refuses_finished_runs_changed_configs_and_allows_more_epochs(tiny_config, monkeypatch, capsys):
    from pathlib import Path

    cfg = tiny_config("train.epochs=3", "train.name=r", *SPARSE)
    interrupt_at(monkeypatch, "_train_epoch", lambda self, epoch: epoch == 2)
    with pytest.raises(RunInterrupted):
        train(cfg)
    monkeypatch.undo()
    run = Path(cfg.train.out_dir) / "r"
    assert main(["train", "--resume", str(run), "optim.lr=0.1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'optim.lr'" in err[0] and "train.epochs" in err[0], err
    assert main(["train", "--resume", str(run), "train.epochs=4"]) == 0
    assert summary_of(run)["epochs_run"] == 4
    assert main(["train", "--resume", str(run)]) == 2
    assert "has already finished" in capsys.readouterr().err
    with pytest.raises(RunError, match="not a run directory"):
        resume(run / "best.pt")


def test_a_run_directory_is_never_shared(tiny_config, tmp_path):
    from sparsemtl.runs import RunDir

    cfg = tiny_config("train.epochs=1")
    first = RunDir.create(tmp_path, None, "same-second")
    second = RunDir.create(tmp_path, None, "same-second")  # a run started in the same second
    assert first.path != second.path and second.path.name == "same-second-2"
    with pytest.raises(RunError, match="in use by another process"):
        RunDir(first.path).acquire()
    with pytest.raises(RunError, match="in use by another process"):  # still being created by its owner
        RunDir.create(tmp_path, "same-second", "x")
    first.release()
    RunDir(first.path).acquire().release()
    taken = RunDir.create(tmp_path, "same-second", "x")  # the empty shell of a run killed before its config
    assert taken.path == first.path
    taken.write_config(cfg)
    taken.release()
    with pytest.raises(RunError, match="already exists.*--resume"):
        RunDir.create(tmp_path, "same-second", "x")
    second.release()
