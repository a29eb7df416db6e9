"""Running studies: cells done once and skipped after, interrupted cells resumed, failures recorded,
local worker processes, submitit jobs, and the files each cell leaves (``cell.json`` last)."""

from __future__ import annotations

import json
import os
import sys

import pytest
import torch
import yaml

import sparsemtl
from sparsemtl.cli import main
from sparsemtl.errors import ConfigError, RunError
from sparsemtl.studies import expand, load_study, run_study
from sparsemtl.studies.cell import _run_config, cell_dir, cell_lock, run_cell
from sparsemtl.studies.launchers import slurm_executor, worker_env
from sparsemtl.studies.spec import SlurmSettings
from sparsemtl.training import Callback
from tests.studies.tiny_study import tiny_study

DENSE, SPARSE, BROKEN = "tasks=depth__lam=0", "tasks=depth__lam=0.05", "tasks=colour__lam=0"


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A dense and a sparse tiny cell, plus a cell whose task the dataset lacks, run once."""
    out = tmp_path_factory.mktemp("study")
    spec = tiny_study(
        {"tasks": [["depth"], ["colour"]], "lam": [0, 0.05]}, out, exclude=[{"tasks": ["colour"], "lam": 0.05}]
    )
    result = run_study(spec, out / "s")
    return spec, out / "s", result


def test_every_cell_is_done_or_recorded_as_failed(study):
    spec, out, result = study
    assert result.finished == [DENSE, SPARSE]
    assert list(result.failed) == [BROKEN] and "colour" in result.failed[BROKEN]
    assert "\n" not in result.failed[BROKEN]
    log = (out / "study.log").read_text().splitlines()
    assert len(log) == 3 and f"{BROKEN}: FAILED" in log[2]
    assert not (out / "cells" / BROKEN / "cell.json").exists()
    listing = json.loads((out / "cells.json").read_text())["cells"]
    assert [c["id"] for c in listing] == [DENSE, SPARSE, BROKEN]
    assert listing[1]["values"] == {"tasks": ["depth"], "sparsity.lam": 0.05}
    assert [c.id for c in expand(load_study(out / "study.yaml"))] == [DENSE, SPARSE, BROKEN]


def test_cell_json_schema_and_files_kept(study):
    _, out, _ = study
    dense = json.loads((out / "cells" / DENSE / "cell.json").read_text())
    sparse = json.loads((out / "cells" / SPARSE / "cell.json").read_text())
    for record, cid in ((dense, DENSE), (sparse, SPARSE)):
        assert set(record) == {"id", "values", "tasks", "lam", "seed", "dense", "summary", "cost", "latency", "seconds"}
        assert record["id"] == cid and record["tasks"] == ["depth"] and record["seed"] == 0
        summary = json.loads((out / "cells" / cid / record["summary"]).read_text())
        assert record["cost"]["zero_group_pct"] == summary["sparsity"]["zero_group_pct"]
        assert record["cost"]["input_size"] == [32, 32]
        assert set(record["latency"]["ms"]) == {"1"} and record["latency"]["ms"]["1"] > 0
        assert record["latency"]["device"] == "cpu" and record["latency"]["threads"] == 1
        assert record["seconds"]["train"] == summary["train_seconds"]
        assert not (out / "cells" / cid / "last.pt").exists() and (out / "cells" / cid / "best.pt").exists()
    assert dense["dense"] and dense["lam"] == 0.0 and not (out / "cells" / DENSE / "pruned.pt").exists()
    assert dense["cost"]["params"] == dense["cost"]["params_dense"] == summary["parameters"]["total"]
    assert dense["cost"]["removed_channels"] == 0
    assert not sparse["dense"] and sparse["lam"] == 0.05
    pruned = json.loads((out / "cells" / SPARSE / "pruned.json").read_text())
    assert (out / "cells" / SPARSE / "pruned.pt").exists()
    assert sparse["cost"]["params"] == pruned["params_after"] <= sparse["cost"]["params_dense"]
    assert sparse["cost"]["macs"] == pruned["macs_after"] and sparse["cost"]["macs_dense"] == pruned["macs_before"]
    assert sparse["cost"]["removed_channels"] == pruned["removed_channels"]
    deployed = sparsemtl.load_model(out / "cells" / SPARSE / "pruned.pt")
    assert sparse["cost"]["params"] == sum(p.numel() for p in deployed.parameters())


def test_finished_cells_are_skipped_on_a_second_run(study):
    spec, out, _ = study
    stamp = (out / "cells" / DENSE / "cell.json").stat().st_mtime_ns
    again = run_study(spec, out)
    assert again.states == {DENSE: "done", SPARSE: "done", BROKEN: "new"}
    assert again.finished == [] and list(again.failed) == [BROKEN]
    assert (out / "cells" / DENSE / "cell.json").stat().st_mtime_ns == stamp
    assert run_study(spec, out, dry_run=True).states[SPARSE] == "done"


def test_cli_reruns_the_resolved_study_and_names_the_failed_cell(study, capsys):
    _, out, _ = study
    capsys.readouterr()
    assert main(["study", str(out / "study.yaml"), "--out", str(out)]) == 2
    captured = capsys.readouterr()
    assert f"[1/1] {BROKEN}: FAILED" in captured.out and "2 of 3 cells done" in captured.out
    (line,) = captured.err.strip().splitlines()
    assert line.startswith("sparsemtl: error: 1 cell(s) failed: tasks=colour__lam=0 (see ")


def test_a_cell_held_by_another_process_is_not_touched(study, tmp_path):
    spec, _, _ = study
    cell = expand(spec)[0]
    with cell_lock(cell_dir(tmp_path, cell)):
        with pytest.raises(RunError, match="being run by another process"):
            run_cell(tmp_path, cell, spec)
    assert not (cell_dir(tmp_path, cell) / "config.yaml").exists()


class _StopAfterFirstEpoch(Callback):
    def on_epoch_end(self, trainer, record):
        raise KeyboardInterrupt


def test_an_interrupted_cell_is_resumed_and_a_changed_study_refused(tmp_path):
    spec = tiny_study({"lam": [0.05]}, tmp_path, ["train.epochs=2", "study.prune.keep_last=true"])
    (cell,) = expand(spec)
    folder = cell_dir(tmp_path / "s", cell)
    with pytest.raises(sparsemtl.training.RunInterrupted):
        sparsemtl.train(_run_config(cell, folder), folder, callbacks=[_StopAfterFirstEpoch()])
    assert torch.load(folder / "last.pt", weights_only=True)["epoch"] == 1
    assert run_study(spec, tmp_path / "s", dry_run=True).states == {cell.id: "partial"}

    changed = tiny_study({"lam": [0.05]}, tmp_path, ["train.epochs=2", "optim.lr=0.5"])
    refused = run_study(changed, tmp_path / "s")
    assert "another config" in refused.failed[cell.id] and "'optim.lr'" in refused.failed[cell.id]

    result = run_study(spec, tmp_path / "s")
    assert result.finished == [cell.id]
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["resumed"] == 1 and summary["epochs_run"] == 2
    assert (folder / "last.pt").exists()  # prune.keep_last
    assert len(json.loads((folder / "cell.json").read_text())["latency"]["ms"]) == 1


def test_two_local_workers_run_cells_at_once_each_with_its_own_log(tmp_path):
    spec = tiny_study({"seed": [0, 1]}, tmp_path, ["sparsity.penalty=none"])
    result = run_study(spec, tmp_path / "s", workers=2)
    assert result.failed == {} and sorted(result.finished) == ["seed=0", "seed=1"]
    for cid in ("seed=0", "seed=1"):
        assert (tmp_path / "s" / "cells" / cid / "cell.json").is_file()
        assert (tmp_path / "s" / "cells" / cid / "cell.log").is_file()


def test_worker_environment_splits_threads_and_gpus():
    env, threads = worker_env(3, workers=2, gpus=2, cpus=8)
    assert threads == 4 and env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == "4"
    assert env["CUDA_VISIBLE_DEVICES"] == "1"
    env, threads = worker_env(0, workers=4, gpus=0, cpus=2)
    assert threads == 1 and env.get("CUDA_VISIBLE_DEVICES") == os.environ.get("CUDA_VISIBLE_DEVICES")


def test_submitit_jobs_run_the_cells(tmp_path):
    pytest.importorskip("submitit")
    spec = tiny_study({"lam": [0]}, tmp_path)
    executor = slurm_executor(tmp_path / "jobs", SlurmSettings(gpus_per_node=0, cpus_per_task=1), cluster="local")
    result = run_study(spec, tmp_path / "s", launcher="slurm", executor=executor)
    assert result.failed == {} and result.finished == ["lam=0"]
    record = json.loads((tmp_path / "s" / "cells" / "lam=0" / "cell.json").read_text())
    assert record["dense"] and record["values"] == {"sparsity.lam": 0.0}


def test_slurm_without_submitit_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "submitit", None)
    with pytest.raises(ConfigError, match=r"pip install 'sparsemtl\[study\]'"):
        slurm_executor(tmp_path, SlurmSettings())


def test_study_yaml_is_the_resolved_study(study):
    _, out, _ = study
    resolved = yaml.safe_load((out / "study.yaml").read_text())
    assert isinstance(resolved["base"], dict) and resolved["base"]["model"]["encoder"] == "resnet10t"
    assert list(resolved["grid"]) == ["tasks", "lam"]
