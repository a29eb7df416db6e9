"""Bad input through the CLI entry point: exactly one stderr line ``sparsemtl: error: ...`` naming
the file, key or argument concerned, a non-zero exit code, and never a traceback."""

from __future__ import annotations

import json

import pytest
import torch

from sparsemtl.cli import main
from tests.conftest import TINY

TRAIN = ["train", *TINY]


def one_line_error(capsys, argv: list[str], *expected: str, code: int = 2) -> str:
    """Run the CLI in-process and return its single error line after checking the contract."""
    capsys.readouterr()
    assert main(argv) == code
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sparsemtl: error: "), err
    assert "Traceback" not in err
    for text in expected:
        assert text in lines[0], (text, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """One finished tiny sparse run, shared by the checkpoint and run-directory cases."""
    out = tmp_path_factory.mktemp("runs")
    args = [*TRAIN, f"train.out_dir={out}", "train.name=done", "train.epochs=1"]
    assert main([*args, "sparsity.penalty=group_lasso", "sparsity.lam=0.05"]) == 0
    return out / "done"


# ------------------------------------------------------------------------------------------ config values
CONFIG_CASES = {
    "unknown key": (["optim.lrate=1"], ["'optim.lrate'", "allowed keys under 'optim'"]),
    "negative lr": (["optim.lr=-1"], ["'optim.lr'", "> 0"]),
    "infinite lr": (["optim.lr=.inf"], ["'optim.lr'", "finite"]),
    "nan lambda": (["sparsity.lam=.nan"], ["'sparsity.lam'", "finite"]),
    "lambda without penalty": (["sparsity.lam=1e-3"], ["'sparsity.lam'", "sparsity.penalty"]),
    "unknown penalty": (["sparsity.penalty=l3"], ["'sparsity.penalty'", "group_lasso"]),
    "unknown grouping": (["sparsity.grouping=rows"], ["'sparsity.grouping'", "coupled"]),
    "bad output stride": (["model.output_stride=7"], ["'model.output_stride'"]),
    "duplicate tasks": (["tasks=[depth,depth]"], ["'tasks'", "distinct"]),
    "unknown task": (["tasks=[colour]"], ["'tasks'", "'colour'", "available"]),
    "unknown metric monitor": (["train.monitor=depth.nope"], ["'train.monitor'", "'nope'"]),
    "weights without fixed": (["loss.weights={depth: 1}"], ["'loss.weights'", "fixed"]),
    "unknown weighting": (["loss.weighting=magic"], ["'loss.weighting'", "uncertainty"]),
    "tiny images": (["data.image_size=[8,8]"], ["'data.image_size'", ">= 16"]),
    "unknown dataset": (["data.name=imagenet"], ["'data.name'", "synthetic-scenes"]),
    "batch of one with BatchNorm": (["data.batch_size=1"], ["'data.batch_size'", "BatchNorm"]),
    "batch larger than the split": (["data.batch_size=64"], ["'data.batch_size'", "training split"]),
    "scheduler factor": (["scheduler.factor=2"], ["'scheduler.factor'"]),
    "unknown amp": (["train.amp=fp8"], ["'train.amp'", "bf16"]),
    "val fraction": (["data.val_fraction=1.5"], ["'data.val_fraction'"]),
    "name escaping out_dir": (["train.name=../../x"], ["'train.name'", "'..'"]),
    "absolute name": (["train.name=/tmp/elsewhere"], ["'train.name'", "absolute"]),
    "missing cuda device": (["train.device=cuda:3"], ["'train.device'", "cuda:3"]),
    "unknown device": (["train.device=tpu"], ["'train.device'", "cuda:N"]),
    "override without =": (["optim.lr"], ["'optim.lr'", "key=value"]),
    "override with bad YAML": (["model.aspp_rates=[1,"], ["'model.aspp_rates=[1,'", "line 1, column"]),
    "section set to a scalar": (["optim=3"], ["'optim'", "mapping"]),
    "wrong type": (["train.epochs=many"], ["'train.epochs'", "integer"]),
    "dropout out of range": (["model.head_dropout=1.5"], ["'model.head_dropout'"]),
}


@pytest.mark.parametrize("case", list(CONFIG_CASES))
def test_bad_config_values_are_one_line(case, capsys, tmp_path):
    overrides, expected = CONFIG_CASES[case]
    if case == "missing cuda device" and torch.cuda.device_count() > 3:
        pytest.skip("this machine has a cuda:3")
    one_line_error(capsys, [*TRAIN, f"train.out_dir={tmp_path}", *overrides], *expected)
    assert not any(tmp_path.iterdir()), "a refused config must not leave a run directory behind"


CONFIG_FILES = {
    "missing file": (None, ["missing.yaml", "does not exist"]),
    "invalid YAML keeps line and column": ("train:\n  epochs: [1\n", ["c.yaml", "line 3, column 1"]),
    "a list instead of a mapping": ("- 1\n- 2\n", ["c.yaml", "mapping"]),
    "base that inherits itself": ("base: c.yaml\n", ["c.yaml", "inherits from itself"]),
    "base that is missing": ("base: nothere.yaml\n", ["nothere.yaml", "does not exist"]),
    "not UTF-8": (b"\xff\xfe\x00bad", ["c.yaml", "cannot be read"]),
}


@pytest.mark.parametrize("case", list(CONFIG_FILES))
def test_bad_config_files_are_one_line(case, capsys, tmp_path):
    content, expected = CONFIG_FILES[case]
    path = tmp_path / ("missing.yaml" if content is None else "c.yaml")
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    one_line_error(capsys, ["train", "--config", str(path)], *expected)


# ------------------------------------------------------------------------------------------ checkpoints
def test_bad_checkpoints_are_one_line(finished_run, tmp_path, capsys):
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_text("not a checkpoint")
    one_line_error(capsys, ["evaluate", str(corrupt)], "corrupt.pt", "could not be read")
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    one_line_error(capsys, ["evaluate", str(foreign)], "foreign.pt", "not a sparsemtl model file")
    listed = tmp_path / "list.pt"
    torch.save([1, 2], listed)
    one_line_error(capsys, ["bench", str(listed)], "list.pt", "expected a sparsemtl checkpoint")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes((finished_run / "best.pt").read_bytes()[:5000])
    one_line_error(capsys, ["prune", str(truncated), "--out", str(tmp_path / "x.pt")], "truncated.pt")
    one_line_error(capsys, ["evaluate", str(tmp_path / "missing.pt")], "missing.pt", "does not exist")
    wrong = tmp_path / "wrong.pt"
    payload = torch.load(finished_run / "best.pt", weights_only=True)
    payload["model"] = {k: v for k, v in payload["model"].items() if "heads" not in k}
    torch.save(payload, wrong)
    one_line_error(capsys, ["evaluate", str(wrong)], "wrong.pt", "loadable model")
    bad_config = tmp_path / "bad_config.pt"
    payload = torch.load(finished_run / "best.pt", weights_only=True)
    payload["config"]["optim"]["lr"] = -1.0
    torch.save(payload, bad_config)
    one_line_error(capsys, ["evaluate", str(bad_config)], "bad_config.pt", "'optim.lr'")
    empty_run = tmp_path / "empty-run"
    empty_run.mkdir()
    (empty_run / "config.yaml").write_text((finished_run / "config.yaml").read_text())
    one_line_error(capsys, ["prune", str(empty_run), "--out", str(tmp_path / "y.pt")], "best.pt", "no epoch finished")


# ------------------------------------------------------------------------------------------ run directories
def test_run_directory_faults_are_one_line(finished_run, tmp_path, capsys):
    one_line_error(capsys, ["train", "--resume", str(finished_run)], str(finished_run), "already finished")
    one_line_error(capsys, ["train", "--resume", str(tmp_path)], "config.yaml is missing")
    one_line_error(capsys, ["train", "--resume", str(tmp_path / "nope")], "nope", "does not exist")
    one_line_error(capsys, ["sparsity", str(finished_run / "best.pt")], "best.pt", "not a run directory")
    one_line_error(capsys, ["train", "--resume", str(finished_run), "--config", "x.yaml"], "--resume", "drop --config")
    out = finished_run.parent
    one_line_error(capsys, [*TRAIN, f"train.out_dir={out}", "train.name=done"], "already exists", "--resume")
    one_line_error(capsys, ["evaluate", str(finished_run), "model.encoder=resnet18"], "model.encoder", "data.*")
    one_line_error(capsys, ["evaluate", str(finished_run), "--split", "dev"], "--split", "'dev'")


def test_evaluate_reproduces_the_summary_and_accepts_data_overrides(finished_run, tmp_path, capsys):
    capsys.readouterr()
    result = tmp_path / "eval.json"
    assert main(["evaluate", str(finished_run), "--json", str(result), "data.eval_batch_size=3"]) == 0
    summary = json.loads((finished_run / "summary.json").read_text())
    evaluated = json.loads(result.read_text())
    for task, metrics in summary["test"]["metrics"].items():
        for name, value in metrics.items():
            assert evaluated["metrics"][task][name] == pytest.approx(value, rel=1e-5, abs=1e-6), (task, name)
    assert "depth/rmse" in capsys.readouterr().out
    assert main(["evaluate", str(finished_run / "best.pt"), "--split", "val"]) == 0
    val = json.loads((finished_run / "summary.json").read_text())["val"]["metrics"]["depth"]["rmse"]
    assert f"{val:.4g}"[:4] in capsys.readouterr().out


# ------------------------------------------------------------------------------------------ command arguments
ARGUMENT_CASES = {
    "no command": ([], ["COMMAND"]),
    "unknown command": (["fly"], ["'fly'"]),
    "unknown option": (["train", "--bogus"], ["--bogus"]),
    "zero batch": (["bench", "x.pt", "--batch", "0"], ["--batch", ">= 1"]),
    "negative batch": (["bench", "x.pt", "--batch", "-3"], ["--batch", "-3"]),
    "zero threads": (["bench", "x.pt", "--threads", "0"], ["--threads"]),
    "tiny bench size": (["bench", "x.pt", "--size", "4", "4"], ["--size", ">= 16"]),
    "non-integer size": (["prune", "x", "--out", "y.pt", "--size", "a", "b"], ["--size", "'a'"]),
    "bench on a missing cuda": (["bench", "x.pt", "--device", "cuda:7"], ["--device", "cuda:7"]),
    "zero run time": (["bench", "x.pt", "--min-run-time", "0"], ["--min-run-time"]),
    "prepare without --meta": (["prepare", "nyuv2", "labeled.mat", "--out", "o"], ["--meta"]),
    "prune without --out": (["prune", "somewhere"], ["--out"]),
}


@pytest.mark.parametrize("case", list(ARGUMENT_CASES))
def test_bad_command_arguments_are_one_line(case, capsys):
    argv, expected = ARGUMENT_CASES[case]
    if case == "bench on a missing cuda" and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    one_line_error(capsys, argv, *expected)


def test_debug_flag_shows_the_traceback(capsys, monkeypatch):
    assert main(["train", "optim.lr=-1", "--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("sparsemtl: error: config key 'optim.lr'")
    monkeypatch.setenv("SPARSEMTL_DEBUG", "1")
    assert main(["train", "optim.lr=-1"]) == 2
    assert "Traceback" in capsys.readouterr().err


def test_an_unexpected_exception_is_still_one_line(capsys, monkeypatch):
    import sparsemtl.training

    def broken(cfg):
        raise RuntimeError("CUDA error: an illegal memory access was encountered\nmore detail")

    monkeypatch.setattr(sparsemtl.training, "train", broken)
    line = one_line_error(capsys, ["train"], "unexpected RuntimeError", "illegal memory access", "--debug", code=1)
    assert "more detail" in line


# ------------------------------------------------------------------------------------------ dataset files
def nyud_args(root, out) -> list[str]:
    args = [o for o in TRAIN if not o.startswith("data.num_")]
    return (
        args
        + ["data.name=nyuv2", f"data.root={root}", "data.batch_size=4", "data.val_fraction=0.2"]
        + [f"train.out_dir={out}"]
    )


@pytest.fixture
def nyud(tmp_path):
    from tests.data.test_nyuv2 import make_nyud

    return make_nyud(tmp_path / "nyud", [f"f{i}" for i in range(10)], ["t0", "t1", "t2"])


def test_corrupt_test_image_is_found_before_the_first_epoch(nyud, tmp_path, capsys):
    (nyud / "images" / "t1.png").write_bytes((nyud / "images" / "t1.png").read_bytes()[:60])
    one_line_error(capsys, nyud_args(nyud, tmp_path / "runs"), "images/t1.png", "corrupt or truncated image")
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir()), "no run dir for bad data"
    # with skip_bad_samples the sample is listed in the run directory and training goes on
    args = nyud_args(nyud, tmp_path / "runs") + ["data.skip_bad_samples=true", "train.name=skip"]
    assert main(args) == 0
    check = json.loads((tmp_path / "runs" / "skip" / "data_check.json").read_text())
    assert [(b["split"], b["sample_id"]) for b in check["bad_samples"]] == [("test", "t1")]
    assert (
        json.loads((tmp_path / "runs" / "skip" / "summary.json").read_text())["data_check"]["bad_samples_skipped"] == 1
    )


def test_millimetre_depth_and_wrong_class_count_are_named(nyud, tmp_path, capsys):
    import numpy as np

    for path in (nyud / "depth").glob("*.npy"):
        np.save(path, np.load(path) * 1000.0)
    one_line_error(capsys, nyud_args(nyud, tmp_path), "depth", "data.depth_scale", "millimetres")
    one_line_error(capsys, ["check-data", *nyud_args(nyud, tmp_path)[1:]], "depth", "data.depth_scale")
    for path in (nyud / "segmentation").glob("*.png"):
        from PIL import Image

        label = np.asarray(Image.open(path))
        Image.fromarray((label % 14).astype(np.uint8)).save(path)
    args = nyud_args(nyud, tmp_path) + ["data.depth_scale=0.001"]
    one_line_error(capsys, args, "segmentation", "13-class tree", "data.classes=13")


def test_split_faults_are_named(nyud, tmp_path, capsys):
    (nyud / "gt_sets" / "val.txt").write_text("t0\nf3\n")
    one_line_error(capsys, nyud_args(nyud, tmp_path), "gt_sets/val.txt", "'f3'", "one split only")
    (nyud / "gt_sets" / "val.txt").write_text("")
    one_line_error(capsys, nyud_args(nyud, tmp_path), "gt_sets/val.txt", "empty split file")
    one_line_error(capsys, nyud_args(tmp_path / "nowhere", tmp_path), "nowhere", "no supported layout")


def test_check_data_prints_a_summary_and_writes_json(nyud, tmp_path, capsys):
    capsys.readouterr()
    report = tmp_path / "check.json"
    assert main(["check-data", *nyud_args(nyud, tmp_path)[1:], "--json", str(report)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("data check of nyuv2") and "train: 8 samples" in out and "test: 3 samples" in out
    assert json.loads(report.read_text())["ok"] is True


def test_prepare_faults_are_one_line(tmp_path, capsys):
    from tests.data.test_prepare_nyuv2 import _frames, _write_labeled, _write_meta

    meta = _write_meta(tmp_path / "meta")
    mat = _write_labeled(tmp_path / "labeled.mat", *_frames())
    out = str(tmp_path / "out")
    one_line_error(
        capsys, ["prepare", "nyuv2", str(tmp_path / "none.mat"), "--meta", str(meta), "--out", out], "none.mat"
    )
    garbage = tmp_path / "garbage.mat"
    garbage.write_bytes(b"\x89HDF\r\n" + b"\0" * 100)
    one_line_error(capsys, ["prepare", "nyuv2", str(garbage), "--meta", str(meta), "--out", out], "garbage.mat")
    one_line_error(
        capsys, ["prepare", "nyuv2", str(mat), "--meta", str(tmp_path), "--out", out], "classMapping40.mat", "missing"
    )
    one_line_error(
        capsys, ["prepare", "nyuv2", str(mat), "--meta", str(meta), "--out", out, "--size", "0", "4"], "--size"
    )
    one_line_error(capsys, ["prepare", "celebamask-hq", str(tmp_path / "raw"), "--out", out], "raw")


# ------------------------------------------------------------------------------------------ predict
def test_predict_faults_are_one_line(finished_run, tmp_path, capsys):
    from PIL import Image

    out = tmp_path / "out"
    run = str(finished_run)
    good = tmp_path / "good.png"
    Image.new("RGB", (40, 30), (90, 120, 200)).save(good)
    missing = str(tmp_path / "nope.png")
    one_line_error(capsys, ["predict", run, missing, "--out", str(out)], "nope.png", "does not exist")
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    one_line_error(capsys, ["predict", run, str(text), "--out", str(out)], "notes.png", "not a readable image")
    truncated = tmp_path / "cut.png"
    truncated.write_bytes(good.read_bytes()[:-40])
    one_line_error(capsys, ["predict", run, str(truncated), "--out", str(out)], "cut.png", "corrupt or truncated")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no pictures here")
    one_line_error(capsys, ["predict", run, str(empty), "--out", str(out)], "empty", "holds no images", ".png")
    one_line_error(
        capsys, ["predict", str(tmp_path / "no-run"), str(good), "--out", str(out)], "no-run", "does not exist"
    )
    one_line_error(capsys, ["predict", run, "--out", str(out)], "nothing to predict", "--samples")
    one_line_error(capsys, ["predict", run, "--samples", "99", "--out", str(out)], "--samples", "has 8 samples", "99")
    one_line_error(capsys, ["predict", run, str(good), "--out", str(out), "--batch-size", "0"], "--batch-size", ">= 1")
    one_line_error(capsys, ["predict", run, str(good), "--out", str(good)], "--out", "good.png", "folder")
    if torch.cuda.device_count() <= 7:
        one_line_error(capsys, ["predict", run, str(good), "--out", str(out), "--device", "cuda:7"], "--device")
    assert not out.exists(), "refused input must leave no output behind"
