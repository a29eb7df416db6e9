"""Study files: grid expansion, shorthands, dense cells, include/exclude, overrides, validation."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from sparsemtl.errors import ConfigError
from sparsemtl.studies import expand, load_study, study_from_dict
from sparsemtl.studies.runner import write_study_files
from sparsemtl.studies.spec import cell_id
from tests.studies.tiny_study import TINY_BASE, tiny_study

STUDIES = Path(__file__).resolve().parents[2] / "configs" / "studies"
TASK_SETS = [["segmentation"], ["depth"]]


def test_cross_product_in_grid_order_first_key_slowest(tmp_path):
    spec = tiny_study({"tasks": TASK_SETS, "lam": [0, 1e-5], "seed": [0, 1]}, tmp_path)
    cells = expand(spec)
    expected = [(t, lam, s) for t in TASK_SETS for lam in (0.0, 1e-5) for s in (0, 1)]
    got = [(c.values["tasks"], c.values["sparsity.lam"], c.values["train.seed"]) for c in cells]
    assert got == expected
    assert cells[0].id == "tasks=segmentation__lam=0__seed=0"
    assert cells[3].id == "tasks=segmentation__lam=1e-05__seed=1"
    assert [list(c.config.tasks) for c in cells] == [t for t, _, _ in expected]
    assert [c.config.train.seed for c in cells] == [s for _, _, s in expected]


def test_shorthands_and_yaml_text_numbers_become_typed_values(tmp_path):
    # PyYAML reads 1e-5 (no dot) as the string '1e-5': the grid converts it with the key's type
    raw = yaml.safe_load("grid: {lam: [1e-5], seed: ['3'], sparsity.grouping: [coupled]}")
    spec = tiny_study(raw["grid"], tmp_path)
    (cell,) = expand(spec)
    assert cell.values == {"sparsity.lam": 1e-5, "train.seed": 3, "sparsity.grouping": "coupled"}
    assert cell.config.sparsity.lam == 1e-5 and cell.config.train.seed == 3
    assert cell.config.sparsity.grouping == "coupled"
    assert cell.id == "lam=1e-05__seed=3__sparsity.grouping=coupled"


def test_budget_keys_inside_the_optional_budget_section_are_grid_keys(tmp_path):
    spec = tiny_study({"lam": [1e-4], "sparsity.budget.macs": [0.5, 0.3], "sparsity.budget_epochs": [1]}, tmp_path)
    cells = expand(spec)
    assert [c.config.sparsity.budget.macs for c in cells] == [0.5, 0.3]
    assert all(c.config.sparsity.budget.kind == "macs" for c in cells)
    with pytest.raises(ConfigError, match="'sparsity.budget' is a section"):
        tiny_study({"sparsity.budget": [0.5]}, tmp_path)


def test_lam_zero_cells_are_dense_and_the_others_keep_the_base_penalty(tmp_path):
    spec = tiny_study({"lam": [0, 0.05]}, tmp_path)
    dense, sparse = expand(spec)
    assert dense.dense and dense.config.sparsity.penalty == "none" and dense.config.sparsity.lam == 0
    assert not sparse.dense and sparse.config.sparsity.penalty == "group_lasso"
    assert sparse.config.sparsity.lam == 0.05


def test_exclude_removes_partial_matches_and_include_adds_cells_once(tmp_path):
    spec = tiny_study(
        {"tasks": TASK_SETS, "lam": [0, 0.1]},
        tmp_path,
        exclude=[{"tasks": ["depth"], "lam": 0.1}],
        include=[
            {"lam": 0.1, "tasks": ["depth"], "model.encoder": "resnet18d"},
            {"tasks": ["segmentation"], "lam": 0},  # already in the grid
        ],
    )
    ids = [c.id for c in expand(spec)]
    assert ids == [
        "tasks=segmentation__lam=0",
        "tasks=segmentation__lam=0.1",
        "tasks=depth__lam=0",
        "tasks=depth__lam=0.1__model.encoder=resnet18d",
    ]
    assert expand(spec)[-1].config.model.encoder == "resnet18d"


def test_overrides_change_the_base_but_grid_values_win(tmp_path):
    spec = tiny_study({"seed": [0, 1]}, tmp_path, ["optim.lr=0.01", "train.seed=7", "study.bench.batches=[2]"])
    cells = expand(spec)
    assert [c.config.optim.lr for c in cells] == [0.01, 0.01]
    assert [c.config.train.seed for c in cells] == [0, 1]
    assert spec.bench.batches == (2,)
    narrowed = tiny_study({"seed": [0, 1]}, tmp_path, ["study.grid.seed=[5]"])
    assert [c.id for c in expand(narrowed)] == ["seed=5"]


def test_resolved_study_reloads_to_the_same_cells(tmp_path):
    spec = tiny_study({"tasks": TASK_SETS, "lam": [0, 1e-5]}, tmp_path, exclude=[{"lam": 0, "tasks": ["depth"]}])
    write_study_files(spec, tmp_path, expand(spec))  # study.yaml as the runner writes it
    again = load_study(tmp_path / "study.yaml")
    assert [(c.id, c.config) for c in expand(again)] == [(c.id, c.config) for c in expand(spec)]


def test_base_file_is_relative_to_the_study_and_config_is_merged_over_it(tmp_path):
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "base.yaml").write_text(yaml.safe_dump(TINY_BASE | {"sparsity": {"penalty": "none"}}))
    study = tmp_path / "study.yaml"
    study.write_text(
        "base: runs/base.yaml\nconfig: {sparsity: {penalty: group_mcp}, optim: {lr: 0.5}}\ngrid: {lam: [0, 1e-3]}\n"
    )
    dense, sparse = expand(load_study(study))
    assert sparse.config.sparsity.penalty == "group_mcp" and sparse.config.optim.lr == 0.5
    assert dense.config.sparsity.penalty == "none" and dense.config.model.encoder == "resnet10t"


def test_cell_ids_are_filesystem_safe():
    assert cell_id({"tasks": ["segmentation", "depth"], "sparsity.lam": 1e-5, "train.seed": 0}) == (
        "tasks=segmentation+depth__lam=1e-05__seed=0"
    )
    assert "/" not in cell_id({"data.root": "/data/nyu v2"})


@pytest.mark.parametrize(
    ("name", "tasks", "patience"),
    [
        ("nyuv2", [["segmentation"], ["depth"], ["normals"], ["segmentation", "depth"]], 25),
        ("celebamask", [["segmentation"], ["male"], ["smiling"], ["segmentation", "male"]], 10),
    ],
)
def test_paper_studies_cover_the_paper_grid(name, tasks, patience):
    spec = load_study(STUDIES / f"{name}.yaml", ["data.root=/data/somewhere"])
    cells = expand(spec)
    assert len(cells) == 7 * 7 * 5
    assert spec.grid["sparsity.lam"] == [0.0, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2]
    assert spec.grid["train.seed"] == [0, 1, 2, 3, 4]
    assert all(t in spec.grid["tasks"] for t in tasks) and len(spec.grid["tasks"]) == 7
    for cell in cells:
        cfg = cell.config
        assert cfg.sparsity.prox_metric == "reference" and cfg.model.encoder == "resnet50d"
        assert cfg.train.patience == cfg.train.task_patience == patience and cfg.data.root == "/data/somewhere"
        assert cfg.sparsity.penalty == ("none" if cell.values["sparsity.lam"] == 0 else "group_lasso")
        assert cfg.sparsity.grouping == "input_channels"


def test_quick_study_is_a_small_cpu_study():
    spec = load_study(STUDIES / "synthetic-quick.yaml")
    cells = expand(spec)
    assert len(cells) <= 12 and {c.config.train.device for c in cells} == {"cpu"}
    assert spec.bench.device == "cpu" and {c.config.data.name for c in cells} == {"synthetic-scenes"}
    assert any(c.dense for c in cells) and any(not c.dense for c in cells)


# --------------------------------------------------------------------------------------------- errors
ERRORS = {
    "unknown study key": ({"grid": {"lam": [0]}, "grids": {}}, ["unknown study key 'grids'", "allowed: base"]),
    "unknown grid key": ({"grid": {"optim.lrate": [1]}}, ["'optim.lrate'", "allowed keys under 'optim'"]),
    "section as grid key": ({"grid": {"optim": [1]}}, ["'optim' is a section"]),
    "empty grid list": ({"grid": {"lam": []}}, ["grid key 'lam'", "non-empty list"]),
    "duplicate values": ({"grid": {"lam": [1e-3, 0.001]}}, ["grid key 'lam'", "distinct"]),
    "bad value type": ({"grid": {"seed": ["x"]}}, ["grid key 'seed'", "'train.seed'", "an integer"]),
    "bad value in one cell": (
        {"grid": {"optim.lr": [0.1, -1]}},
        ["cell optim.lr=-1", "config key 'optim.lr'", "> 0"],
    ),
    "exclude of a non-grid key": ({"grid": {"lam": [0]}, "exclude": [{"seed": 0}]}, ["exclude entry 1", "'seed'"]),
    "bench batch": ({"grid": {"lam": [0]}, "bench": {"batches": [0]}}, ["'bench.batches'", ">= 1"]),
    "bench key": ({"grid": {"lam": [0]}, "bench": {"devices": "cpu"}}, ["'bench.devices'", "device"]),
    "slurm value": ({"grid": {"lam": [0]}, "slurm": {"timeout_min": "long"}}, ["'slurm.timeout_min'"]),
    "all excluded": ({"grid": {"lam": [0]}, "exclude": [{"lam": 0}]}, ["no cells"]),
}


@pytest.mark.parametrize("case", ERRORS, ids=list(ERRORS))
def test_bad_study_is_one_line_naming_the_key(tmp_path, case):
    raw, expected = ERRORS[case]
    with pytest.raises(ConfigError) as info:
        study_from_dict({"base": TINY_BASE, **raw}, tmp_path, "s.yaml")
    message = str(info.value)
    assert "\n" not in message and message.startswith("study file 's.yaml'")
    for text in expected:
        assert text in message, (text, message)


def test_missing_base_and_missing_base_file(tmp_path):
    with pytest.raises(ConfigError, match="'base' is missing"):
        study_from_dict({"grid": {"lam": [0]}}, tmp_path, "s.yaml")
    with pytest.raises(ConfigError, match="base: config file .*nope.yaml' does not exist"):
        study_from_dict({"base": "nope.yaml", "grid": {"lam": [0]}}, tmp_path, "s.yaml")
