import math

import pytest
import torch

from sparsemtl.config import ConfigError, SchedulerConfig
from sparsemtl.tasks.spec import TaskSpec
from sparsemtl.training import EarlyStopping, Monitor, PenaltyScheduler, build_scheduler


def test_early_stopping_counts_epochs_without_improvement():
    stop = EarlyStopping(patience=2, higher_is_better=False)
    assert stop.update(1.0) and not stop.update(1.0) and not stop.should_stop
    assert not stop.update(math.nan) and stop.should_stop
    up = EarlyStopping(patience=0, higher_is_better=True)
    assert up.update(0.1) and up.update(0.2) and not up.update(0.15) and not up.should_stop


def test_monitor_directions_and_errors():
    specs = {"seg": TaskSpec("seg", "segmentation", num_classes=3)}
    assert not Monitor.parse("loss", specs).higher_is_better
    miou = Monitor.parse("seg.miou", specs)
    assert miou.higher_is_better and miou.for_minimisation(3.0) == -3.0
    with pytest.raises(ConfigError, match="train.monitor"):
        Monitor.parse("depth.abs_err", specs)


def test_lambda_warmup_and_schedulers():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"params": [p], "lam": 0.3}, {"params": [torch.nn.Parameter(torch.zeros(1))]}], lr=1.0)
    lam = PenaltyScheduler(opt, warmup_epochs=2, ramp_epochs=4)
    assert [lam.step(e) for e in range(1, 8)] == pytest.approx([0.0, 0.0, 0.075, 0.15, 0.225, 0.3, 0.3])
    assert opt.param_groups[1]["lam"] == 0.0
    assert PenaltyScheduler(opt).step(1) == 0.3
    sched = build_scheduler(SchedulerConfig(name="cosine"), opt, epochs=4)
    for _ in range(4):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)
    assert build_scheduler(SchedulerConfig(name="none"), opt, 4) is None
