"""Latency measurement and the benchmark table: structure and bookkeeping, never timings."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from sparsemtl.config import ModelConfig
from sparsemtl.evaluation.latency import (
    BENCH_HEADERS,
    bench_rows,
    benchmark_models,
    format_bench_table,
    measure_latency,
)
from sparsemtl.evaluation.machine import describe_machine, format_machine
from sparsemtl.models import build_model
from sparsemtl.models.complexity import count_macs, count_parameters
from sparsemtl.tasks.spec import TaskSpec

FAST = 0.05


def small_cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 2, 1))


def tiny_model(head_channels: int) -> nn.Module:
    specs = {
        "segmentation": TaskSpec("segmentation", "segmentation", num_classes=4),
        "smiling": TaskSpec("smiling", "attribute"),
    }
    cfg = ModelConfig(encoder="resnet10t", head_channels=head_channels, aspp_rates=(1, 2), classifier_channels=(8, 4))
    return build_model(cfg, specs)


@pytest.mark.parametrize("batch", [1, 2])
def test_measure_latency_statistics(batch: int) -> None:
    result = measure_latency(small_cnn().eval(), (16, 16), batch, min_run_time=FAST)
    assert math.isfinite(result.median) and result.median > 0
    assert result.p25 <= result.median <= result.p75
    assert result.iqr >= 0
    assert result.measurements >= 1 and result.runs_per_measurement >= 1
    assert (result.batch, result.device) == (batch, "cpu")


def test_measure_latency_restores_threads_and_training_flags() -> None:
    model = small_cnn().train()
    model[1].eval()  # mixed flags, as with frozen BatchNorms
    flags = [m.training for m in model.modules()]
    torch.set_num_threads(2)
    result = measure_latency(model, (16, 16), 1, threads=1, min_run_time=FAST)
    assert result.threads == 1
    assert torch.get_num_threads() == 2
    assert [m.training for m in model.modules()] == flags


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised without CUDA")
def test_measure_latency_refuses_missing_cuda() -> None:
    with pytest.raises(ValueError, match="CUDA"):
        measure_latency(small_cnn(), (16, 16), 1, device="cuda", min_run_time=FAST)


def test_benchmark_models_rows_and_table() -> None:
    torch.manual_seed(0)
    models = {"wide": tiny_model(16), "narrow": tiny_model(8)}
    size = (32, 32)
    results = benchmark_models(models, size, batch_sizes=(1, 2), min_run_time=FAST)

    assert [r.name for r in results] == list(models)
    for result, model in zip(results, models.values()):
        assert result.params == count_parameters(model)
        assert result.macs == count_macs(model, size, 1)
        assert [lat.batch for lat in result.latencies] == [1, 2]

    rows = bench_rows(results)
    assert len(rows) == 4 and all(len(row) == len(BENCH_HEADERS) for row in rows)
    speed_up, mac_reduction = BENCH_HEADERS.index("speed-up"), BENCH_HEADERS.index("MAC reduction")
    assert [row[speed_up] for row in rows[:2]] == [1.0, 1.0]
    assert [row[mac_reduction] for row in rows[:2]] == [1.0, 1.0]
    assert rows[2][mac_reduction] == results[0].macs / results[1].macs > 1

    machine = describe_machine()
    table = format_bench_table(results, machine).splitlines()
    assert table[0] == format_machine(machine)
    assert len(table) == 2 + 2 + len(rows)  # machine + settings, headers + rule, rows
    json.dumps([r.to_dict() for r in results])


#: (input channels-last, conv weight channels-last) of every forward of a FormatProbe
SEEN: list[tuple[bool, bool]] = []


class FormatProbe(nn.Module):
    """conv, BN, ReLU, conv that records the memory format its first conv sees (the record is
    module-level, so deep copies such as the BN-folded one write to it too)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = small_cnn()

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        conv = self.body[0]
        SEEN.append((x.is_contiguous(memory_format=torch.channels_last), _channels_last(conv.weight)))
        return {"out": self.body(x)}


def _channels_last(t: torch.Tensor) -> bool:
    return t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()


@pytest.mark.parametrize("channels_last", [False, True])
def test_measure_latency_feeds_the_input_in_the_asked_memory_format(channels_last: bool) -> None:
    SEEN.clear()
    result = measure_latency(FormatProbe().eval(), (16, 16), 2, min_run_time=FAST, channels_last=channels_last)
    assert result.channels_last is channels_last and result.to_dict()["channels_last"] is channels_last
    assert SEEN and {seen[0] for seen in SEEN} == {channels_last}


def test_benchmark_models_runs_a_channels_last_copy_and_leaves_the_model_alone() -> None:
    model = FormatProbe().eval()
    results = benchmark_models({"probe": model}, (16, 16), batch_sizes=(1, 2), min_run_time=FAST, channels_last=True)
    assert SEEN[-1] == (True, True)  # the timed forwards: input and folded weights channels-last
    assert [lat.channels_last for lat in results[0].latencies] == [True, True]
    assert all(p.is_contiguous() for p in model.parameters())
    assert "BN folded, channels_last" in format_bench_table(results, describe_machine())
    SEEN.clear()
    contiguous = benchmark_models({"probe": model}, (16, 16), batch_sizes=(1,), min_run_time=FAST)
    assert SEEN[-1] == (False, False) and not contiguous[0].latencies[0].channels_last
    assert "channels_last" not in format_bench_table(contiguous, describe_machine())


def test_describe_machine() -> None:
    info = describe_machine()
    assert {"cpu", "logical_cores", "torch_threads", "torch_version", "os"} <= info.keys()
    assert "cuda_device" not in info
    assert info["torch_threads"] == torch.get_num_threads()
    assert "\n" not in format_machine(info)
