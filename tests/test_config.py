import pytest

from sparsemtl.config import Config, ConfigError, apply_overrides, config_from_dict, load_config


def test_defaults_are_valid_and_round_trip_through_dict():
    cfg = Config()
    assert config_from_dict(cfg.to_dict()) == cfg


def test_yaml_file_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("tasks: [depth]\noptim:\n  lr: 1e-4\ndata:\n  image_size: [48, 64]\n")
    cfg = load_config(
        path, ["sparsity.lam=2e-5", "sparsity.penalty=group_lasso", "train.amp=bf16", "model.aspp_rates=[1,2]"]
    )
    assert cfg.tasks == ("depth",)
    assert cfg.optim.lr == pytest.approx(1e-4)  # YAML 1.1 reads 1e-4 as a string; we convert
    assert cfg.data.image_size == (48, 64)
    assert cfg.sparsity.lam == pytest.approx(2e-5)
    assert cfg.model.aspp_rates == (1, 2)
    assert cfg.train.amp == "bf16"


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("optim.lrr=0.1", "unknown config key 'optim.lrr'; allowed keys under 'optim': lr, weight_decay"),
        ("bogus=1", "unknown config key 'bogus'"),
        ("optim.lr=-1", "config key 'optim.lr': expected a number > 0, got -1"),
        ("optim.lr=fast", "config key 'optim.lr': expected a number, got 'fast'"),
        ("model.output_stride=7", "config key 'model.output_stride': expected one of 8, 16, 32, got 7"),
        ("train.amp=fp8", "config key 'train.amp': expected one of 'none', 'fp16', 'bf16'"),
        (
            "sparsity.penalty=l0",
            "config key 'sparsity.penalty': unknown penalty 'l0'; available: group_lasso, group_mcp, none",
        ),
        ("data.image_size=[8,8]", "config key 'data.image_size': expected two integers >= 16"),
        ("data.image_size=[64]", "config key 'data.image_size': expected a list of 2 values"),
        ("train.epochs=1.5", "config key 'train.epochs': expected an integer, got 1.5"),
        ("tasks=[depth,depth]", "config key 'tasks': expected a non-empty list of distinct task names"),
        ("optim=3", "config key 'optim': expected a mapping of settings"),
        ("train.progress=maybe", "config key 'train.progress': expected true/false"),
        ("noequals", "override 'noequals': expected key=value"),
    ],
)
def test_bad_values_give_one_line_errors_naming_the_key(override, fragment):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    message = str(info.value)
    assert fragment in message
    assert "\n" not in message


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim: [unclosed\n")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load_config(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must contain a mapping"):
        load_config(listy)


def test_yaml_never_constructs_python_objects(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("train:\n  name: !!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)


def test_overrides_do_not_mutate_input():
    base = {"optim": {"lr": 0.1}}
    out = apply_overrides(base, ["optim.lr=0.2"])
    assert base == {"optim": {"lr": 0.1}} and out["optim"]["lr"] == 0.2


def test_null_and_dict_values():
    cfg = load_config(None, ["train.name=null", "loss.weighting=fixed", "loss.weights={depth: 2, normals: 0.5}"])
    assert cfg.train.name is None
    assert cfg.loss.weights == {"depth": 2.0, "normals": 0.5}


def test_every_shipped_config_and_study_validates():
    from pathlib import Path

    from sparsemtl.studies.spec import expand, load_study

    configs = sorted((Path(__file__).resolve().parents[1] / "configs").rglob("*.yaml"))
    studies = [p for p in configs if p.parent.name == "studies"]
    assert len(configs) - len(studies) >= 5 and len(studies) >= 4
    for path in configs:
        if path in studies:
            assert expand(load_study(path))  # every cell's run config validated
        else:
            load_config(path)


def test_base_inheritance_merges_sections_and_detects_cycles(tmp_path):
    (tmp_path / "base.yaml").write_text("optim:\n  lr: 0.5\n  eps: 1.0e-6\ntrain:\n  epochs: 7\n")
    (tmp_path / "child.yaml").write_text("base: base.yaml\noptim:\n  lr: 0.1\ntasks: [depth]\n")
    cfg = load_config(tmp_path / "child.yaml", ["train.epochs=9"])
    assert cfg.optim.lr == 0.1 and cfg.optim.eps == 1e-6 and cfg.train.epochs == 9 and cfg.tasks == ("depth",)
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match="inherits from itself"):
        load_config(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("base: missing.yaml\n")
    with pytest.raises(ConfigError, match="missing.yaml' does not exist"):
        load_config(tmp_path / "c.yaml")
