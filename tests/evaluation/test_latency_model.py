"""The per-layer latency model: bilinear lookup checked by hand, tables for every layer."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sparsemtl.config import ModelConfig
from sparsemtl.evaluation.latency_model import LayerTable, measure_latency_model
from sparsemtl.models import build_model
from sparsemtl.pruning.cost import LayerWidth, PrunedCostModel
from sparsemtl.tasks.spec import TaskSpec

TABLE = LayerTable(inputs=(8, 16), outputs=(4, 8, 16), times=((1.0, 2.0, 4.0), (3.0, 5.0, 9.0)), depthwise=False)


def width(cin: int, cout: int) -> LayerWidth:
    return LayerWidth("conv", cin, cout, 1)


def test_grid_points_are_exact() -> None:
    for i, cin in enumerate(TABLE.inputs):
        for j, cout in enumerate(TABLE.outputs):
            assert TABLE.predict(width(cin, cout)) == TABLE.times[i][j]


def test_bilinear_between_grid_points_by_hand() -> None:
    # cin 12 is halfway between 8 and 16; cout 6 halfway between 4 and 8:
    # (1 + 2 + 3 + 5) / 4 = 2.75; cout 12 halfway between 8 and 16 at cin 16: (5 + 9) / 2 = 7
    assert TABLE.predict(width(12, 6)) == pytest.approx(2.75)
    assert TABLE.predict(width(16, 12)) == pytest.approx(7.0)
    assert TABLE.predict(width(10, 8)) == pytest.approx(2.0 + (5.0 - 2.0) * 0.25)


def test_outside_the_grid_is_clamped() -> None:
    assert TABLE.predict(width(1, 1)) == 1.0  # below the smallest widths: their time
    assert TABLE.predict(width(64, 64)) == 9.0


def test_depthwise_table_has_one_axis() -> None:
    table = LayerTable(inputs=(4, 8), outputs=(4, 8), times=((1.0,), (3.0,)), depthwise=True)
    assert table.predict(LayerWidth("dw", 6, 6, 6)) == pytest.approx(2.0)


def test_measured_model_has_a_table_per_layer_and_predicts_the_dense_latency() -> None:
    torch.manual_seed(0)
    model = build_model(
        ModelConfig(encoder="resnet10t", head_channels=8, aspp_rates=(1, 2)), {"depth": TaskSpec("depth", "depth")}
    )
    latency = measure_latency_model(model, (32, 32), fractions=(0.5, 1.0), min_run_time=0.001)
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    assert set(latency.layers) == set(convs)
    assert all(t > 0 for table in latency.layers.values() for row in table.times for t in row)
    dense = PrunedCostModel(model, (32, 32)).dense
    assert latency.predict(dense.widths) == pytest.approx(latency.dense_ms)
    same = [latency.layers[n] for n in ("encoder.backbone.layer1.0.conv1", "encoder.backbone.layer1.0.conv2")]
    assert same[0] is same[1]  # one table per layer configuration
    halved = [
        LayerWidth(w.name, max(1, w.in_channels // 2), max(1, w.out_channels // 2), w.groups) for w in dense.widths
    ]
    assert latency.predict(halved) <= latency.predict(dense.widths)
