"""Pruned models survive a weights-only save/load; run directories prune end to end."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from sparsemtl.data import build_dataset, select_tasks
from sparsemtl.errors import CheckpointError
from sparsemtl.models import build_model
from sparsemtl.models.widths import changed_widths
from sparsemtl.pruning import load_model, prune_model, prune_run, save_pruned
from sparsemtl.runs import save_checkpoint

from .test_prune import zero_coupled


def make_run(tmp_path, config):
    """A run directory as the trainer writes it, with zeroed coupled channels."""
    specs = select_tasks(build_dataset(config.data, "val"), config.tasks)
    torch.manual_seed(0)
    model = build_model(config.model, specs).eval()
    zero_coupled(model, torch.rand(1, 3, 32, 32), 0.4)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    payload = {
        "format": "sparsemtl-checkpoint-v1",
        "epoch": 1,
        "config": config.to_dict(),
        "task_specs": {n: s.to_dict() for n, s in specs.items()},
        "model": model.state_dict(),
    }
    save_checkpoint(payload, run_dir / "best.pt")
    return run_dir, model, specs


def outputs(model, x):
    with torch.no_grad():
        return model.eval()(x)


def test_save_load_round_trip_is_exact_and_weights_only(tmp_path, tiny_config):
    config = tiny_config()
    run_dir, model, specs = make_run(tmp_path, config)
    pruned = prune_model(model, torch.rand(1, 3, 32, 32)).model
    path = tmp_path / "pruned.pt"
    widths = changed_widths(pruned, build_model(config.model, specs))
    assert widths and all(w["out"] <= model.get_submodule(n).weight.shape[0] for n, w in widths.items())
    save_pruned(path, pruned, config, specs, widths)
    assert torch.load(path, weights_only=True)["format"] == "sparsemtl-pruned-v1"
    loaded = load_model(path)
    x = torch.rand(2, 3, 32, 32)
    expected, got = outputs(pruned, x), outputs(loaded, x)
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    # a plain run checkpoint loads as well
    best = load_model(run_dir / "best.pt")
    assert all(torch.equal(outputs(model, x)[k], outputs(best, x)[k]) for k in expected)


def test_prune_run_writes_model_report_and_reprunes_its_output(tmp_path, tiny_config):
    run_dir, model, _ = make_run(tmp_path, tiny_config())
    out = tmp_path / "out" / "pruned.pt"
    result = prune_run(run_dir, out)
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["removed_channels"] == result.removed_channels > 0
    assert report["params_after"] < report["params_before"]
    x = torch.rand(2, 3, 32, 32)
    loaded = load_model(out)
    assert all(torch.equal(outputs(result.model, x)[k], outputs(loaded, x)[k]) for k in report["max_relative_error"])
    again = prune_run(out, tmp_path / "again.pt")  # nothing left to cut, the file still loads
    assert again.removed_channels == 0
    load_model(tmp_path / "again.pt")


def test_corrupt_and_foreign_files_raise_checkpoint_errors(tmp_path):
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt.pt"):
        load_model(corrupt)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(CheckpointError, match="foreign.pt.*not a sparsemtl model file"):
        load_model(foreign)
