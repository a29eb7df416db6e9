"""torchrun/DDP on CPU (gloo, 2 processes): the same code path GPU users take with NCCL."""

import json
import subprocess
import sys

import pytest
import torch

from sparsemtl.data import build_dataset
from sparsemtl.evaluation import evaluate
from sparsemtl.runs import open_model
from tests.conftest import TINY


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")
def test_torchrun_two_processes_train_and_report_exact_split_metrics(tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "sparsemtl",
        "train",
        *TINY,
        "data.num_test=11",
        "data.batch_size=4",
        f"train.out_dir={tmp_path}",
        "train.name=ddp",
        "sparsity.penalty=group_lasso",
        "sparsity.lam=0.01",
    ]
    result = subprocess.run(
        cmd, capture_output=True, text=True, timeout=300, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"}
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert summary["world_size"] == 2
    # an odd-sized test split sharded over 2 processes must count every sample exactly once
    run = open_model(tmp_path / "ddp")
    loader = torch.utils.data.DataLoader(build_dataset(run.config.data, "test"), batch_size=5)
    single = evaluate(run.model, loader, run.specs, torch.device("cpu"))
    for task, metrics in single.metrics.items():
        for name, value in metrics.items():
            assert summary["test"]["metrics"][task][name] == pytest.approx(value, rel=1e-5, abs=1e-6), (task, name)
