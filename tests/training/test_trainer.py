import json

import pytest
import torch

from sparsemtl.config import ConfigError
from sparsemtl.errors import RunError
from sparsemtl.runs import load_checkpoint
from sparsemtl.training import Trainer, train


def read_lines(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_tiny_sparse_run_learns_sparsifies_and_writes_a_complete_run_dir(tiny_config):
    cfg = tiny_config(
        "train.epochs=4", "sparsity.penalty=group_lasso", "sparsity.lam=0.05", "optim.lr=0.003", "train.name=sparse"
    )
    trainer = Trainer(cfg)
    initial = trainer.weighting.log_vars.detach().clone()
    summary = trainer.fit()
    run_dir = trainer.run_dir
    lines = read_lines(run_dir)
    assert [r["epoch"] for r in lines] == [1, 2, 3, 4]
    assert lines[-1]["train"]["loss"] < lines[0]["train"]["loss"]
    assert summary.sparsity["zero_group_pct"] > 0
    assert 0 < summary.sparsity["zero_weight_pct"] <= 100
    # uncertainty log-variances are really trained
    assert not torch.allclose(trainer.weighting.log_vars.detach(), initial)
    # best epoch chosen on validation: it is the epoch with the lowest monitored val loss
    best = min(lines, key=lambda r: r["monitor"]["value"])
    assert summary.best_epoch == best["epoch"]
    assert summary.val["loss"] == pytest.approx(best["val"]["loss"])  # the best epoch's own validation
    for name in ("config.yaml", "metrics.jsonl", "best.pt", "last.pt", "summary.json"):
        assert (run_dir / name).is_file()
    ckpt = load_checkpoint(run_dir / "best.pt")
    assert ckpt["epoch"] == summary.best_epoch and "optimizer" not in ckpt
    assert "optimizer" in load_checkpoint(run_dir / "last.pt")
    on_disk = json.loads((run_dir / "summary.json").read_text())
    assert set(on_disk["test"]["metrics"]) == {"segmentation", "depth", "normals"}
    assert on_disk["parameters"]["total"] == sum(p.numel() for p in trainer.model.parameters())
    assert (
        on_disk["sparsity"]["settings"]["lam"] == 0.05
        and on_disk["sparsity"]["settings"]["grouping"] == "input_channels"
    )
    # the test metrics come from the best checkpoint, in eval mode
    assert on_disk["test"]["metrics"]["depth"]["rmse"] == pytest.approx(
        trainer.evaluate("test").metrics["depth"]["rmse"]
    )


def test_lambda_zero_gives_exactly_zero_sparsity(tiny_config):
    summary = train(tiny_config("sparsity.penalty=group_lasso", "sparsity.lam=0", "train.name=dense"))
    assert summary.sparsity["zero_group_pct"] == 0.0
    assert summary.sparsity["zero_groups"] == 0


def test_runs_are_reproducible_with_the_same_seed(tiny_config):
    a = train(tiny_config("train.name=a", "train.epochs=1"))
    b = train(tiny_config("train.name=b", "train.epochs=1"))
    assert a.test == b.test


def test_warmup_keeps_the_penalty_off(tiny_config):
    trainer = Trainer(
        tiny_config("sparsity.penalty=group_lasso", "sparsity.lam=0.5", "sparsity.warmup_epochs=1", "train.epochs=2")
    )
    trainer.fit()
    lines = read_lines(trainer.run_dir)
    assert lines[0]["lam"] == 0.0 and lines[0]["sparsity"]["zero_groups"] == 0
    assert lines[1]["lam"] == 0.5 and lines[1]["sparsity"]["zero_groups"] > 0


def test_early_stopping_on_a_metric_monitor(tiny_config):
    cfg = tiny_config(
        "train.epochs=30", "train.patience=1", "train.monitor=depth.abs_err", "optim.lr=1e-9", "scheduler.name=none"
    )
    summary = train(cfg)
    assert summary.stopped_early and summary.epochs_run < 30


def test_attribute_tasks_and_faces_dataset(tiny_config):
    summary = train(
        tiny_config(
            "data.name=synthetic-faces", "tasks=[segmentation,male,smiling]", "train.epochs=1", "loss.weighting=equal"
        )
    )
    assert set(summary.test["metrics"]["male"]) >= {"accuracy", "f1"}


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("tasks=[segmentation,color]", "config key 'tasks': 'color' is not a target"),
        ("data.name=imagenet", "config key 'data.name': unknown dataset 'imagenet'"),
        ("loss.weighting=gradnorm", "config key 'loss.weighting': unknown loss weighting 'gradnorm'"),
        ("loss.weights={depth: 1}", "config key 'loss.weights': only used with loss.weighting=fixed"),
        ("sparsity.grouping=rows", "config key 'sparsity.grouping': unknown grouping 'rows'"),
        (
            "sparsity.modules=[decoder.*]",
            "config key 'sparsity.modules': sparsity module pattern 'decoder.*' matches no conv layer",
        ),
        ("train.monitor=depth.miou", "config key 'train.monitor': task 'depth' has metrics"),
        ("data.batch_size=64", "config key 'data.batch_size': 64 is larger than the training split"),
        ("train.device=tpu", "config key 'train.device'"),
    ],
)
def test_bad_names_fail_with_the_key(tiny_config, override, fragment):
    with pytest.raises(ConfigError) as info:
        Trainer(tiny_config(override))
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_existing_run_dir_is_never_overwritten(tiny_config):
    train(tiny_config("train.name=once", "train.epochs=1"))
    with pytest.raises(RunError, match="once' already exists: continue it with 'sparsemtl train --resume"):
        Trainer(tiny_config("train.name=once"))


@pytest.mark.parametrize(
    "grouping, penalty", [("coupled", "group_lasso"), ("output_channels", "group_mcp"), ("input_channels", "group_mcp")]
)
def test_groupings_and_penalties_train_and_are_recorded(tiny_config, grouping, penalty):
    cfg = tiny_config(
        f"sparsity.grouping={grouping}",
        f"sparsity.penalty={penalty}",
        "sparsity.lam=0.05",
        "sparsity.mcp_gamma=1000",
        "train.epochs=1",
        "optim.lr=0.003",
    )
    summary = train(cfg)
    sparsity = summary.sparsity
    assert sparsity["grouping"] == grouping and sparsity["settings"]["penalty"] == penalty
    assert sparsity["zero_groups"] > 0
    if grouping == "coupled":
        # one coupled group per channel, and every zero coupled group is removable
        assert sparsity["groups"] == sparsity["channels"]
        assert sparsity["removable_channels"] >= sparsity["zero_groups"]


def test_mixed_precision_path_runs_on_cpu(tiny_config):
    summary = train(
        tiny_config("train.amp=bf16", "train.epochs=1", "tasks=[segmentation,depth]", "train.grad_clip=1.0")
    )
    assert summary.test["metrics"]["depth"]["abs_err"] == summary.test["metrics"]["depth"]["abs_err"]  # not NaN


def test_training_with_augmentation_is_reproducible_and_changes_samples(tiny_config):
    trainer = Trainer(tiny_config("data.augment=true", "train.epochs=1", "train.name=aug"))
    train_set = trainer.datasets["train"]
    raw = trainer.datasets["train"].dataset[0]
    trainer.fit()
    first = train_set[0]
    train_set.set_epoch(1)
    again = train_set[0]
    assert all(torch.equal(first[k], again[k]) for k in first)  # same (seed, epoch, index): same sample
    train_set.set_epoch(2)
    assert any(not torch.equal(train_set[i]["image"], trainer.datasets["train"].dataset[i]["image"]) for i in range(8))
    assert raw["image"].shape == first["image"].shape


def test_multitask_delta_against_single_task_baselines(tiny_config, tmp_path):
    for task in ("depth", "normals"):
        train(tiny_config(f"tasks=[{task}]", "train.epochs=1", f"train.name=stl-{task}"))
    baselines = f"{{depth: {tmp_path / 'stl-depth'}, normals: {tmp_path / 'stl-normals'}}}"
    summary = train(
        tiny_config("tasks=[depth,normals]", "train.epochs=1", "train.name=mtl", f"train.baselines={baselines}")
    )
    assert set(summary.delta) == {"delta_m", "delta_p", "delta_primary"}
    for variant, sign in (("delta_m", "positive = worse"), ("delta_p", "positive = better")):
        described = summary.delta[variant]["describe"]  # tiny runs can have a 0 baseline (delta1)
        assert sign in described or "undefined (depth/delta1: baseline is zero" in described
    assert "positive = better" in summary.delta["delta_primary"]["describe"]
    # hand check of delta_primary: depth rmse (lower is better) and normals mean angle (lower is better)
    stl = {
        t: json.loads((tmp_path / f"stl-{t}" / "summary.json").read_text())["test"]["metrics"][t]
        for t in ("depth", "normals")
    }
    mtl = summary.test["metrics"]
    expected = -50 * (
        (mtl["depth"]["rmse"] - stl["depth"]["rmse"]) / stl["depth"]["rmse"]
        + (mtl["normals"]["mean_angle"] - stl["normals"]["mean_angle"]) / stl["normals"]["mean_angle"]
    )
    assert summary.delta["delta_primary"]["value"] == pytest.approx(expected)
    with pytest.raises(ConfigError, match="train.baselines"):
        Trainer(tiny_config("tasks=[depth,normals]", f"train.baselines={{depth: {tmp_path / 'stl-depth'}}}"))


def test_per_task_early_stopping_freezes_the_stalled_head_only(tiny_config):
    trainer = Trainer(tiny_config("train.task_patience=1", "train.epochs=5", "tasks=[depth,normals]"))
    evaluate, snapshots = trainer.evaluate, []

    def forced(split):  # depth's validation loss never improves, normals' always does
        result = evaluate(split)
        snapshots.append({k: v.clone() for k, v in trainer.model.heads["depth"].state_dict().items()})
        result.losses["depth"] = 1.0
        result.losses["normals"] = 1.0 / len(snapshots)
        return result

    trainer.evaluate = forced
    log_var_before = trainer.weighting.log_vars.detach().clone()
    summary = trainer.fit()
    lines = read_lines(trainer.run_dir)
    assert [r["frozen_tasks"] for r in lines] == [[], ["depth"], ["depth"], ["depth"], ["depth"]]
    assert summary.frozen_tasks == ["depth"]
    # frozen after the epoch-2 validation: the depth head (weights and BN statistics) no longer changes
    final = load_checkpoint(trainer.run_dir / "last.pt")["model"]
    assert all(torch.equal(final[f"heads.depth.{k}"], v) for k, v in snapshots[1].items())
    assert not all(torch.equal(snapshots[0][k], v) for k, v in snapshots[1].items())  # it trained before
    assert all(p.requires_grad is False for p in trainer.model.heads["depth"].parameters())
    assert all(p.requires_grad for p in trainer.model.heads["normals"].parameters())
    assert trainer.weighting.log_vars[1] != log_var_before[1]


def test_dense_runs_skip_the_channel_analysis_and_a_failing_analysis_never_fails_a_run(tiny_config, monkeypatch):
    import sparsemtl.training.trainer as trainer_module

    def broken(*args, **kwargs):
        raise RuntimeError("tracer cannot follow this model")

    monkeypatch.setattr(trainer_module, "model_sparsity_report", broken)
    dense = train(tiny_config("train.name=dense", "train.epochs=1"))
    assert dense.sparsity["channel_analysis"] == "not run (dense)" and dense.sparsity["zero_groups"] == 0
    sparse = train(
        tiny_config("train.name=sparse", "train.epochs=1", "sparsity.penalty=group_lasso", "sparsity.lam=0.05")
    )
    assert sparse.sparsity["channel_analysis"] == "unavailable: RuntimeError: tracer cannot follow this model"
    assert sparse.sparsity["zero_groups"] > 0 and "removable_channels" not in sparse.sparsity
    monkeypatch.undo()
    full = train(tiny_config("train.name=full", "train.epochs=1", "sparsity.penalty=group_lasso", "sparsity.lam=0.05"))
    assert full.sparsity["channel_analysis"] == "done" and full.sparsity["removable_channels"] >= 0
