"""Every pluggable axis is a registry: listed by `sparsemtl list`, checked when a config loads."""

import pytest
import torch

from sparsemtl.cli import main
from sparsemtl.config import load_config
from sparsemtl.errors import ConfigError
from sparsemtl.registries import REGISTRIES
from sparsemtl.sparsity import PENALTIES, REWEIGHTS, Penalty, ProxSGD
from sparsemtl.training.schedule import SCHEDULERS, build_scheduler


@pytest.mark.parametrize(
    "override, key",
    [
        ("sparsity.penalty=l3", "sparsity.penalty"),
        ("sparsity.reweight=cubic", "sparsity.reweight"),
        ("scheduler.name=poly", "scheduler.name"),
        ("model.encoder=resnet5", "model.encoder"),
        ("loss.weighting=magic", "loss.weighting"),
        ("sparsity.grouping=rows", "sparsity.grouping"),
        ("train.loggers=[wandb]", "train.loggers"),
        ("model.dense_head=fpn", "model.dense_head"),
        ("data.name=imagenet", "data.name"),
    ],
)
def test_unknown_names_are_rejected_when_the_config_is_loaded(override, key):
    with pytest.raises(ConfigError, match=f"config key '{key}'") as info:
        load_config(None, [override])
    assert "\n" not in str(info.value)


def test_list_prints_every_registry_with_descriptions(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for axis, registry in REGISTRIES.items():
        assert f"{axis}:" in out
        assert all(f"  {name}" in out for name in registry.names())
    assert "group_mcp" in out and "flat beyond gamma" in out
    assert main(["list", "encoders", "resnet50*"]) == 0
    assert "resnet50d" in capsys.readouterr().out.split()
    assert main(["list", "optimisers"]) == 2
    assert "available: datasets" in capsys.readouterr().err


def test_a_new_penalty_is_one_registration(monkeypatch):
    """Registering an entry is all it takes for the optimiser and the config to accept it."""

    class HalfLasso(Penalty):
        """Group lasso at half strength (a test double)."""

        def prox_(self, slices, tau, lr, spec, precond, warm_starts):
            PENALTIES.get("group_lasso")().prox_(slices, tau / 2, lr, spec, precond, warm_starts)

    monkeypatch.setitem(PENALTIES._items, "half_lasso", HalfLasso)
    cfg = load_config(None, ["sparsity.penalty=half_lasso", "sparsity.lam=0.1"])
    assert cfg.sparsity.penalty == "half_lasso"
    w = torch.nn.Parameter(torch.tensor([[3.0, 4.0], [0.3, 0.4]]))
    spec = {"dims": [0], "ids": [[0, 1]], "weights": [1.0, 1.0], "penalty": "half_lasso"}
    opt = ProxSGD([{"params": [w], "lam": 2.0, "prox": spec}], lr=1.0)
    w.grad = torch.zeros_like(w)
    opt.step()
    # block soft-threshold with tau = lr * lam * w_g / 2 = 1: row norms 5 -> 4, 0.5 -> 0
    assert torch.allclose(w.detach(), torch.tensor([[2.4, 3.2], [0.0, 0.0]]))


def test_scheduler_and_reweighting_registries_build_what_they_name():
    from sparsemtl.config import SchedulerConfig

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    assert isinstance(
        build_scheduler(SchedulerConfig(name="step", step_size=2), opt, 10), torch.optim.lr_scheduler.StepLR
    )
    assert build_scheduler(SchedulerConfig(name="none"), opt, 10) is None
    assert set(SCHEDULERS.names()) == {"cosine", "plateau", "step", "none"}
    sizes = torch.tensor([4.0, 9.0])
    assert torch.equal(REWEIGHTS.create("sqrt_size", sizes), torch.tensor([2.0, 3.0]))
    assert torch.equal(REWEIGHTS.create("none", sizes), torch.ones(2))
