import json

from sparsemtl.cli import main
from tests.conftest import TINY


def test_train_command_runs_and_bad_keys_fail_in_one_line(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("tasks: [depth]\ntrain:\n  epochs: 1\n")
    assert main(["train", "--config", str(cfg), *TINY, f"train.out_dir={tmp_path}", "train.name=r"]) == 0
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["tasks"] == ["depth"]
    assert main(["train", "--config", str(cfg), "optim.lrate=1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["sparsemtl: error: unknown config key 'optim.lrate'; allowed keys under 'optim': lr, weight_decay, betas, eps"]


def test_demo_prints_one_comparison_table(tmp_path, capsys):
    overrides = [o for o in TINY if not o.startswith("train.epochs")] + ["train.epochs=1"]
    assert main(["demo", "--out", str(tmp_path), *overrides]) == 0
    out = capsys.readouterr().out
    assert "test metric (best val checkpoint)" in out and "zero groups %" in out
    header = [line for line in out.splitlines() if line.startswith("test metric")][0]
    assert header.split()[-2:] == ["dense", "sparse"]
    assert (tmp_path / "comparison.json").is_file()
