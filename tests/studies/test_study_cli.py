"""``sparsemtl study`` from the command line: bad study files are one error line, --dry-run lists cells."""

from __future__ import annotations

import sys

import pytest
import yaml

from sparsemtl.cli import main
from tests.studies.tiny_study import TINY_BASE, TINY_BENCH
from tests.test_cli_errors import one_line_error


def write_study(tmp_path, **raw) -> str:
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({"base": TINY_BASE, "bench": TINY_BENCH, **raw}, sort_keys=False))
    return str(path)


def test_unknown_study_key(tmp_path, capsys):
    study = write_study(tmp_path, grid={"lam": [0]}, slurmm={})
    one_line_error(capsys, ["study", study, "--dry-run"], study, "unknown study key 'slurmm'", "allowed: base")


def test_bad_value_in_one_cell_names_the_cell_and_key(tmp_path, capsys):
    study = write_study(tmp_path, grid={"lam": [0, 1e-3]}, include=[{"lam": 1e-2, "data.batch_size": 0}])
    one_line_error(
        capsys, ["study", study, "--dry-run"], "cell lam=0.01__data.batch_size=0", "'data.batch_size'", ">= 1"
    )


def test_dense_penalty_with_lambda_from_an_override_is_refused(tmp_path, capsys):
    study = write_study(tmp_path, grid={"lam": [0, 1e-3]})
    one_line_error(capsys, ["study", study, "sparsity.penalty=none"], "cell lam=0.001", "sparsity.penalty")


def test_missing_base_file_and_missing_study(tmp_path, capsys):
    study = tmp_path / "s.yaml"
    study.write_text("base: ../nowhere.yaml\ngrid: {lam: [0]}\n")
    one_line_error(capsys, ["study", str(study)], "nowhere.yaml", "does not exist")
    one_line_error(capsys, ["study", str(tmp_path / "none.yaml")], "none.yaml", "does not exist")
    assert not (tmp_path / "study-runs").exists()


def test_bad_arguments(tmp_path, capsys):
    study = write_study(tmp_path, grid={"lam": [0]})
    one_line_error(capsys, ["study", study, "--workers", "0", "--out", str(tmp_path / "o")], "--workers", ">= 1")
    one_line_error(capsys, ["study", study, "--launcher", "cloud"], "--launcher", "invalid choice")
    one_line_error(capsys, ["study", study, "study.bench.device=gpu"], "'bench.device'", "cuda:N")
    one_line_error(capsys, ["study", study, "--gpus", "-1"], "'slurm.gpus_per_node'", ">= 0")


def test_slurm_launcher_without_submitit(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "submitit", None)
    study = write_study(tmp_path, grid={"lam": [0]})
    one_line_error(capsys, ["study", study, "--launcher", "slurm", "--out", str(tmp_path / "o")], "submitit")


def test_dry_run_lists_cells_and_runs_nothing(tmp_path, capsys):
    study = write_study(tmp_path, grid={"tasks": [["depth"], ["segmentation", "depth"]], "lam": [0, 1e-4]})
    out = tmp_path / "out"
    assert main(["study", study, "--dry-run", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "tasks=segmentation+depth__lam=0.0001" in text and "segmentation+depth" in text
    assert "4 cells" in text and "4 new" in text
    assert not out.exists()


@pytest.mark.parametrize("command", [["report"], ["study"]])
def test_commands_need_their_argument(capsys, command):
    one_line_error(capsys, command, "required")
