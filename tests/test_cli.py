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
    assert err == [
        "sparsemtl: error: unknown config key 'optim.lrate'; allowed keys under 'optim': "
        "lr, weight_decay, betas, eps, native_prox"
    ]


def test_demo_prints_one_comparison_table(tmp_path, capsys):
    overrides = [o for o in TINY if not o.startswith("train.epochs")] + ["train.epochs=1"]
    assert main(["demo", "--out", str(tmp_path), "--bench-seconds", "0.02", *overrides]) == 0
    out = capsys.readouterr().out
    assert "test metric (best val checkpoint)" in out and "zero groups %" in out
    header = [line for line in out.splitlines() if line.startswith("test metric")][0]
    assert header.split()[-2:] == ["dense", "sparse"]
    assert (tmp_path / "comparison.json").is_file()
    # the demo ends by pruning the sparse model and timing dense vs pruned
    assert (tmp_path / "sparse-pruned.pt").is_file() and "channels removed:" in out
    assert "sparse pruned" in out and "dense" in out


def test_sparsity_command_prints_table_and_writes_json_and_png(tmp_path, capsys):
    run = tmp_path / "s"
    args = [
        "train",
        *TINY,
        f"train.out_dir={tmp_path}",
        "train.name=s",
        "sparsity.penalty=group_lasso",
        "sparsity.lam=0.05",
        "train.epochs=1",
    ]
    assert main(args) == 0
    capsys.readouterr()
    assert main(["sparsity", str(run)]) == 0
    out = capsys.readouterr().out
    report = json.loads((run / "sparsity.json").read_text())
    assert report["grouping"] == "input_channels" and report["zero_groups"] > 0
    assert report["channels"] == sum(s["channels"] for s in report["channel_sets"]) > 0
    assert 0 <= report["removable_channels"] <= report["channels"]
    assert "channel set (coupled channels)" in out
    total = [line for line in out.splitlines() if line.startswith("TOTAL")][0].split()
    assert (
        int(total[1].replace(",", "")) == report["groups"] and int(total[2].replace(",", "")) == report["zero_groups"]
    )
    summary = json.loads((run / "summary.json").read_text())
    assert summary["sparsity"]["zero_groups"] == report["zero_groups"]
    assert (run / "sparsity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["sparsity", str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err == f"sparsemtl: error: run directory {str(tmp_path / 'nope')!r} does not exist\n"


def test_prune_and_bench_commands(tmp_path, capsys):
    args = [*TINY, f"train.out_dir={tmp_path}", "train.epochs=1", "optim.lr=0.003"]
    sparse = ["sparsity.penalty=group_lasso", "sparsity.lam=0.05", "sparsity.grouping=coupled"]
    assert main(["train", *args, "train.name=s", *sparse]) == 0
    capsys.readouterr()
    out_file = tmp_path / "small.pt"
    assert main(["prune", str(tmp_path / "s"), "--out", str(out_file)]) == 0
    printed = capsys.readouterr().out
    assert "parameters" in printed and "MACs" in printed
    report = json.loads(out_file.with_suffix(".json").read_text())
    assert report["removed_channels"] > 0 and report["params_after"] < report["params_before"]
    bench_json = tmp_path / "bench.json"
    cmd = ["bench", str(tmp_path / "s"), str(out_file), "--batch", "1", "--min-run-time", "0.02"]
    cmd += ["--json", str(bench_json)]
    assert main(cmd) == 0
    results = json.loads(bench_json.read_text())["results"]
    assert [r["params"] for r in results] == [report["params_before"], report["params_after"]]
    assert main(["prune", str(tmp_path / "missing"), "--out", str(out_file)]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_train_runs_on_each_nyuv2_layout(tmp_path):
    from tests.data.test_nyuv2 import make_mtan, make_nyud

    roots = {
        "nyud-mt": make_nyud(tmp_path / "nyud", [f"f{i}" for i in range(10)], ["t0", "t1", "t2"]),
        "mtan": make_mtan(tmp_path / "mtan", 10, 3),
    }
    for layout, root in roots.items():
        args = [o for o in TINY if not o.startswith("data.num_")] + [
            f"train.out_dir={tmp_path / 'runs'}",
            f"train.name={layout}",
        ]
        args += ["data.name=nyuv2", f"data.root={root}", "data.batch_size=4", "data.val_fraction=0.2", "train.epochs=1"]
        assert main(["train", *args, "data.resize=true"]) == 0
        summary = json.loads((tmp_path / "runs" / layout / "summary.json").read_text())
        assert set(summary["test"]["metrics"]) == {"segmentation", "depth", "normals"}
        splits = json.loads((tmp_path / "runs" / layout / "splits.json").read_text())
        assert len(splits["train"]) == 8 and len(splits["val"]) == 2 and len(splits["test"]) == 3
        assert not set(splits["train"]) & set(splits["val"])


def test_prepare_celebamask_then_train_on_it(tmp_path, capsys):
    from tests.data.test_celebamask import make_release

    raw = make_release(tmp_path / "raw")
    partition = tmp_path / "list_eval_partition.txt"  # two training images, so a batch of 2 fits
    partition.write_text("000006.jpg 0\n162771.jpg 0\n162772.jpg 1\n182638.jpg 2\n")
    out = tmp_path / "prepared"
    cmd = ["prepare", "celebamask-hq", str(raw), "--out", str(out), "--size", "32", "--partition", str(partition)]
    assert main(cmd) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    args = [o for o in TINY if not o.startswith("data.")] + ["data.image_size=[32,32]", f"train.out_dir={tmp_path}"]
    args += ["data.name=celebamask-hq", f"data.root={out}", "data.batch_size=2", "data.eval_batch_size=2"]
    assert main(["train", *args, "tasks=[segmentation,male,smiling]", "train.epochs=1", "train.name=c"]) == 0
    summary = json.loads((tmp_path / "c" / "summary.json").read_text())
    assert set(summary["test"]["metrics"]) == {"segmentation", "male", "smiling"}


def test_paper_config_runs_with_small_overrides(tmp_path):
    from pathlib import Path

    from tests.data.test_nyuv2 import make_nyud

    root = make_nyud(tmp_path / "nyud", [f"f{i}" for i in range(10)], ["t0", "t1"])
    config = Path(__file__).resolve().parents[1] / "configs" / "paper" / "nyuv2_base.yaml"
    small = [o for o in TINY if not o.startswith("data.num_")] + ["data.num_workers=0", "train.amp=none"]
    small += ["tasks=[segmentation,depth,normals]", "sparsity.penalty=group_lasso", "sparsity.lam=1e-5"]
    small += [f"data.root={root}", "data.batch_size=4", "data.val_fraction=0.2", "train.epochs=1", "train.name=p"]
    assert main(["train", "--config", str(config), *small, f"train.out_dir={tmp_path}"]) == 0
    summary = json.loads((tmp_path / "p" / "summary.json").read_text())
    settings = summary["sparsity"]["settings"]
    assert settings["lam"] == 1e-5 and settings["penalty"] == "group_lasso"


def test_prepare_nyuv2_command_then_train_with_13_classes(tmp_path):
    from tests.data.test_prepare_nyuv2 import _frames, _write_labeled, _write_meta

    mat = _write_labeled(tmp_path / "labeled.mat", *_frames())
    meta = _write_meta(tmp_path / "meta")
    out = tmp_path / "nyud13"
    assert main(["prepare", "nyuv2", str(mat), "--meta", str(meta), "--out", str(out), "--classes", "13"]) == 0
    args = [o for o in TINY if not o.startswith("data.")] + ["data.name=nyuv2", f"data.root={out}", "data.classes=13"]
    args += ["data.resize=true", "data.image_size=[16,16]", "data.batch_size=2", "data.val_fraction=0.34"]
    assert main(["train", *args, "tasks=[segmentation,depth]", f"train.out_dir={tmp_path}", "train.name=n13"]) == 0
    summary = json.loads((tmp_path / "n13" / "summary.json").read_text())
    assert "miou" in summary["test"]["metrics"]["segmentation"]
