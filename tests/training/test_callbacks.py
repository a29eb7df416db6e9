"""Callbacks: user hooks see every step and epoch; CSV and TensorBoard logs match metrics.jsonl."""

import csv
import json
import math
from types import SimpleNamespace

import pytest

from sparsemtl.cli import main
from sparsemtl.errors import ConfigError
from sparsemtl.training import Callback, RunInterrupted, Trainer, resume, train
from tests.conftest import TINY


class Recorder(Callback):
    def __init__(self):
        self.events = []

    def on_fit_start(self, trainer):
        self.events.append(("fit_start", trainer.epoch))

    def on_step_end(self, trainer, step, loss, task_losses):
        self.events.append(("step", trainer.global_step, step, sorted(task_losses)))

    def on_epoch_end(self, trainer, record):
        assert trainer.run.load_checkpoint("last.pt")["epoch"] == record["epoch"]  # called after the commit
        self.events.append(("epoch", record["epoch"], record["val"]["loss"]))

    def on_fit_end(self, trainer, summary):
        self.events.append(("fit_end", summary.best_epoch))


def trainer_dir(cfg, name):
    from pathlib import Path

    return Path(cfg.train.out_dir) / name


def jsonl(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_user_callbacks_see_every_step_epoch_and_the_end(tiny_config):
    recorder = Recorder()
    cfg = tiny_config("train.epochs=3", "train.name=cb", "tasks=[depth,normals]")
    summary = train(cfg, callbacks=[recorder])
    steps_per_epoch = 16 // 8
    events = recorder.events
    assert events[0] == ("fit_start", 0) and events[-1] == ("fit_end", summary.best_epoch)
    steps = [e for e in events if e[0] == "step"]
    assert [e[1] for e in steps] == list(range(1, 3 * steps_per_epoch + 1))
    assert [e[2] for e in steps] == [0, 1] * 3 and all(e[3] == ["depth", "normals"] for e in steps)
    lines = jsonl(trainer_dir(cfg, "cb"))
    assert [e[1:] for e in events if e[0] == "epoch"] == [(r["epoch"], r["val"]["loss"]) for r in lines]
    assert [r["step"] for r in lines] == [2, 4, 6]


def test_csv_log_matches_metrics_jsonl(tiny_config, tmp_path):
    train(tiny_config("train.epochs=2", "train.name=csv", "train.loggers=[csv]"))
    rows = list(csv.DictReader(open(tmp_path / "csv" / "metrics.csv")))
    lines = jsonl(tmp_path / "csv")
    assert len(rows) == 2
    for row, line in zip(rows, lines):
        assert float(row["val/metrics/depth/rmse"]) == pytest.approx(line["val"]["metrics"]["depth"]["rmse"], rel=1e-12)
        assert float(row["sparsity/zero_group_pct"]) == line["sparsity"]["zero_group_pct"]


def test_tensorboard_log_has_the_curves_and_survives_a_resume(tiny_config, tmp_path, monkeypatch):
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    cfg = tiny_config(
        "train.epochs=3",
        "train.name=tb",
        "train.loggers=[tensorboard]",
        "sparsity.penalty=group_lasso",
        "sparsity.lam=0.05",
    )
    original = Trainer._train_epoch

    def stop_in_epoch_3(self, epoch):
        if epoch == 3:
            raise KeyboardInterrupt
        return original(self, epoch)

    monkeypatch.setattr(Trainer, "_train_epoch", stop_in_epoch_3)
    with pytest.raises(RunInterrupted):
        train(cfg)
    monkeypatch.undo()
    resume(tmp_path / "tb")
    acc = event_accumulator.EventAccumulator(str(tmp_path / "tb" / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    lines = jsonl(tmp_path / "tb")
    rmse = acc.Scalars("epoch/val/metrics/depth/rmse")
    assert [e.step for e in rmse] == [r["step"] for r in lines] == [2, 4, 6]  # no duplicate after the resume
    assert [e.value for e in rmse] == pytest.approx([r["val"]["metrics"]["depth"]["rmse"] for r in lines], rel=1e-6)
    assert [e.value for e in acc.Scalars("epoch/lam")] == pytest.approx([0.05] * 3)
    assert [e.step for e in acc.Scalars("step/loss/segmentation")] == list(range(1, 7))
    zero = [e.value for e in acc.Scalars("epoch/sparsity/zero_group_pct")]
    assert zero == pytest.approx([r["sparsity"]["zero_group_pct"] for r in lines], rel=1e-6)
    assert "sparsity/per_layer_zero_groups" in acc.Tags()["images"]
    assert acc.Scalars("final/test/metrics/depth/rmse")[0].value == pytest.approx(
        json.loads((tmp_path / "tb" / "summary.json").read_text())["test"]["metrics"]["depth"]["rmse"], rel=1e-6
    )


def test_layer_sparsity_image_draws_one_bar_per_layer(tiny_config):
    from sparsemtl.sparsity import sparsity_report

    trainer = Trainer(tiny_config("train.name=img"))
    layers = [layer.layer for layer in sparsity_report(trainer.structure, "input_channels").layers]
    conv = trainer.model.get_submodule(layers[1])  # 3x3 conv with an even number of input channels
    conv.weight.data[:, : conv.weight.shape[1] // 2] = 0.0  # half of its input-channel groups
    image = trainer.layer_sparsity_image(height=10, bar=2)
    assert tuple(image.shape) == (10, 2 * len(layers))
    assert image[:, 2:4].sum() == 2 * 5 and image[5:, 2:4].min() == 1  # a bar of half height, from the bottom
    assert image.sum() == 2 * 5  # every other layer is dense
    trainer.run.release()


def test_unknown_logger_is_refused_before_the_run_exists(capsys, tmp_path):
    from sparsemtl import load_config

    with pytest.raises(ConfigError, match="train.loggers.*'wandb'"):
        Trainer(load_config(None, [*TINY, f"train.out_dir={tmp_path}", "train.loggers=[wandb]"]))
    assert not any(tmp_path.iterdir())
    assert main(["train", *TINY, f"train.out_dir={tmp_path}", "train.loggers=[wandb]"]) == 2
    assert "available: csv, tensorboard" in capsys.readouterr().err


# ----------------------------------------------------------------------------- the built-in callbacks
def forced_val(trainer, totals):
    """Make epoch i's validation loss ``totals[i - 1]`` (one task, so the monitor 'loss' is it)."""
    evaluate = trainer.evaluate

    def forced(split):
        result = evaluate(split)
        if split == "val":
            (task,) = result.losses
            result.losses[task] = totals[trainer.epoch]  # trainer.epoch: the epoch before this one
        return result

    trainer.evaluate = forced


def test_checkpointing_commits_metrics_line_then_last_then_best_before_later_callbacks(tiny_config):
    events = []

    class Last(Callback):
        def on_epoch_end(self, trainer, record):
            events.append(("user", record["epoch"]))

    trainer = Trainer(tiny_config("tasks=[depth]", "train.epochs=3", "train.name=order"), callbacks=[Last()])
    forced_val(trainer, [2.0, 3.0, 1.0])  # improves at epochs 1 and 3
    run, append, save = trainer.run, trainer.run.append_metrics, trainer.run.save_checkpoint

    def append_metrics(record):
        assert "sparsity" in record  # SparsityLog completed the record before it was written
        events.append(("metrics.jsonl", record["epoch"]))
        append(record)

    def save_checkpoint(name, payload):
        events.append((name, payload["epoch"]))
        save(name, payload)

    run.append_metrics, run.save_checkpoint = append_metrics, save_checkpoint
    summary = trainer.fit()
    commit = ["metrics.jsonl", "last.pt"]
    expected = [*commit, "best.pt", "user", *commit, "user", *commit, "best.pt", "user"]
    assert events == list(zip(expected, [1, 1, 1, 1, 2, 2, 2, 3, 3, 3, 3]))
    assert summary.best_epoch == 3 and not summary.stopped_early


def test_early_stop_ends_training_after_patience_epochs_without_a_better_monitor(tiny_config):
    cfg = tiny_config("tasks=[depth]", "train.epochs=6", "train.patience=2", "train.name=es")
    trainer = Trainer(cfg)
    forced_val(trainer, [2.0, 2.5, math.nan, 0.1])  # NaN is no improvement; epoch 4 must never run
    summary = trainer.fit()
    assert [r["epoch"] for r in jsonl(trainer.run_dir)] == [1, 2, 3]
    assert summary.stopped_early and summary.epochs_run == 3 and summary.best_epoch == 1
    last = trainer.run.load_checkpoint("last.pt")
    assert last["stopper"] == {"best": 2.0, "bad_epochs": 2} and last["monitor"]["value"] == 2.0


def test_early_stop_continues_its_count_and_stops_a_resumed_run_that_is_due():
    from sparsemtl.evaluation.evaluate import EvalResult
    from sparsemtl.training import EarlyStop, Monitor

    trainer = SimpleNamespace(monitor=Monitor("loss", None, None, False), should_stop=False)
    stop = EarlyStop(patience=3, higher_is_better=False)
    stop.load_state_dict({"best": 1.0, "bad_epochs": 1})  # from last.pt
    stop.on_fit_start(trainer)
    assert not trainer.should_stop
    stop.on_validation_end(trainer, EvalResult({"a": 0.5, "b": 0.75}, {}))  # 1.25: worse than 1.0
    assert stop.state_dict() == {"best": 1.0, "bad_epochs": 2} and not trainer.should_stop
    stop.on_validation_end(trainer, EvalResult({"a": 0.5, "b": 0.75}, {}))
    assert trainer.should_stop
    resumed = SimpleNamespace(monitor=trainer.monitor, should_stop=False)
    later = EarlyStop(patience=3, higher_is_better=False)
    later.load_state_dict(stop.state_dict())
    later.on_fit_start(resumed)  # killed after its last epoch, before summary.json: nothing left to train
    assert resumed.should_stop
    never = EarlyStop(patience=0, higher_is_better=False)
    never.load_state_dict({"best": 1.0, "bad_epochs": 100})
    never.on_fit_start(resumed := SimpleNamespace(monitor=trainer.monitor, should_stop=False))
    assert not resumed.should_stop


def test_task_freezing_freezes_stalled_heads_and_rewraps_ddp_only_when_one_is_newly_frozen(tiny_config):
    from sparsemtl.evaluation.evaluate import EvalResult
    from sparsemtl.runtime import ProcessContext
    from sparsemtl.training import TaskFreezing

    trainer = Trainer(tiny_config("train.task_patience=1", "train.name=freeze"))
    trainer.context = ProcessContext(rank=0, world_size=2)  # as rank 0 of a DDP run
    wraps = []
    trainer._wrap = lambda: wraps.append(list(trainer.frozen)) or trainer.model
    (freezing,) = [c for c in trainer.callbacks if isinstance(c, TaskFreezing)]
    epochs = [  # validation losses of segmentation, depth, normals
        (1.0, 1.0, 1.0),
        (0.5, 1.0, 2.0),  # depth and normals stall: both frozen, one re-wrap
        (0.4, 9.0, 9.0),  # frozen tasks are no longer followed
        (0.4, 0.1, 0.1),  # segmentation stalls
    ]
    frozen_after = []
    for losses in epochs:
        freezing.on_validation_end(trainer, EvalResult(dict(zip(trainer.specs, losses)), {}))
        frozen_after.append(list(trainer.frozen))
    assert frozen_after == [[], ["depth", "normals"], ["depth", "normals"], ["depth", "normals", "segmentation"]]
    assert wraps == [["depth", "normals"], ["depth", "normals", "segmentation"]]
    assert not any(p.requires_grad for p in trainer.model.heads.parameters())
    assert all(p.requires_grad for p in trainer.model.encoder.parameters())
    assert freezing.state_dict() == {
        "segmentation": {"best": 0.4, "bad_epochs": 1},
        "depth": {"best": 1.0, "bad_epochs": 1},
        "normals": {"best": 1.0, "bad_epochs": 1},
    }
    trainer.run.release()


def test_a_user_callback_stops_training_from_python(tiny_config):
    class StopAfterTwo(Callback):
        def on_epoch_end(self, trainer, record):
            if record["epoch"] == 2:
                trainer.should_stop = True

    cfg = tiny_config("train.epochs=4", "train.name=stop")
    summary = train(cfg, callbacks=[StopAfterTwo()])
    assert summary.stopped_early and summary.epochs_run == 2
    assert [r["epoch"] for r in jsonl(trainer_dir(cfg, "stop"))] == [1, 2]


def test_callback_state_is_kept_in_last_pt_and_continued_by_resume(tiny_config, monkeypatch):
    from sparsemtl.runs import load_checkpoint

    class EpochCounter(Callback):
        state_key = "epoch_counter"

        def __init__(self):
            self.count = 0

        def on_validation_end(self, trainer, val):  # before the commit: in this epoch's last.pt
            self.count += 1

        def state_dict(self):
            return {"count": self.count}

        def load_state_dict(self, state):
            self.count = state["count"]

    cfg = tiny_config("train.epochs=3", "train.name=state", "train.task_patience=1")
    original = Trainer._train_epoch

    def stop_in_epoch_3(self, epoch):
        if epoch == 3:
            raise KeyboardInterrupt
        return original(self, epoch)

    monkeypatch.setattr(Trainer, "_train_epoch", stop_in_epoch_3)
    with pytest.raises(RunInterrupted):
        train(cfg, callbacks=[EpochCounter()])
    monkeypatch.undo()
    last = load_checkpoint(trainer_dir(cfg, "state") / "last.pt")
    # the built-ins' state keeps the keys runs always had, so older last.pt files resume
    assert {"stopper", "task_stoppers", "frozen"} <= set(last) and set(last["task_stoppers"]) == set(cfg.tasks)
    assert last["epoch"] == 2 and last["epoch_counter"] == {"count": 2}
    from sparsemtl.training.trainer import TRAINER_STATE_KEYS

    # the reserved keys are exactly what the trainer itself writes (so the clash check stays true)
    assert set(last) - {"stopper", "task_stoppers", "epoch_counter"} == TRAINER_STATE_KEYS
    counter = EpochCounter()
    resume(trainer_dir(cfg, "state"), callbacks=[counter])
    assert counter.count == 3


def test_other_ranks_keep_only_the_callbacks_that_must_run_on_every_process(tiny_config, monkeypatch):
    import torch

    import sparsemtl.training.trainer as trainer_module
    from sparsemtl.runtime import ProcessContext
    from sparsemtl.training import EarlyStop, TaskFreezing

    rank1 = ProcessContext(rank=1, world_size=2)  # built as rank 1 of 2, without a process group
    monkeypatch.setattr(trainer_module, "init_process_context", lambda device: (rank1, torch.device("cpu")))
    monkeypatch.setattr(ProcessContext, "broadcast_path", lambda self, path: path)
    monkeypatch.setattr(Trainer, "_wrap", lambda self: self.model)

    class Everywhere(Callback):
        all_ranks = True

    cfg = tiny_config("train.loggers=[csv]", "train.progress=true", "train.task_patience=1", "train.name=rank1")
    trainer = Trainer(cfg, callbacks=[Callback(), Everywhere()])
    assert [type(c) for c in trainer.callbacks] == [EarlyStop, TaskFreezing, Everywhere]
    assert trainer.run is None and not trainer_dir(cfg, "rank1").exists()  # only rank 0 writes


def test_a_callback_state_key_must_be_its_own() -> None:
    from sparsemtl.errors import TrainingError
    from sparsemtl.training.builtin_callbacks import EarlyStop
    from sparsemtl.training.trainer import _check_state_keys

    class Clash(Callback):
        state_key = "stopper"  # the built-in early stopping's key

    with pytest.raises(TrainingError, match="'stopper'"):
        _check_state_keys([EarlyStop(1, False), Clash()])

    class Shadow(Callback):
        state_key = "optimizer"

    with pytest.raises(TrainingError, match="'optimizer'"):
        _check_state_keys([Shadow()])
