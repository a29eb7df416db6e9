"""Callbacks: user hooks see every step and epoch; CSV and TensorBoard logs match metrics.jsonl."""

import csv
import json

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
