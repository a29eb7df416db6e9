"""One model graph per model and structure: shared by every user, retraced only when the
structure changes, and never keeping a model alive."""

from __future__ import annotations

import copy
import gc
import io
import weakref

import pytest
import torch
import torch_pruning as tp
from torch import nn

from sparsemtl.config import ModelConfig
from sparsemtl.evaluation.fold import fold_batchnorm, foldable_pairs
from sparsemtl.models import build_model
from sparsemtl.models.graph import ModelGraph, model_graph
from sparsemtl.pruning import prune_model
from sparsemtl.sparsity import build_grouping, channel_sets, model_sparsity_report
from sparsemtl.sparsity.channels import graph_channel_sets
from sparsemtl.tasks.spec import TaskSpec

SPECS = {
    "segmentation": TaskSpec("segmentation", "segmentation", num_classes=4),
    "smiling": TaskSpec("smiling", "attribute"),
}
PATTERNS = ["encoder.*"]


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    cfg = ModelConfig(encoder="resnet10t", head_channels=8, aspp_rates=(1,), classifier_channels=(8, 4))
    return build_model(cfg, SPECS)


def chain() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1))


@pytest.fixture
def traces(monkeypatch) -> list[nn.Module]:
    """Every model Torch-Pruning traces, in order."""
    traced: list[nn.Module] = []
    build = tp.DependencyGraph.build_dependency

    def counting(self, model, *args, **kwargs):
        traced.append(model)
        return build(self, model, *args, **kwargs)

    monkeypatch.setattr(tp.DependencyGraph, "build_dependency", counting)
    return traced


def test_grouping_report_and_folding_share_one_trace(traces):
    model = tiny_model()
    build_grouping("coupled", model, PATTERNS)
    build_grouping("output_channels", model, PATTERNS)
    report = model_sparsity_report(model, "coupled", PATTERNS)
    folded = fold_batchnorm(model)
    assert len(traces) == 1 and traces[0] is model
    assert report.channels > 0
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())


def test_pruning_traces_only_its_copy_once(traces):
    model = tiny_model().eval()
    block = model.encoder.backbone.layer1[0]
    with torch.no_grad():
        for p in (block.conv1.weight, block.bn1.weight, block.bn1.bias):
            p[:3] = 0.0  # three dead channels: something to cut
    x = torch.rand(1, 3, 32, 32)
    model_sparsity_report(model, "coupled", ["*"])
    result = prune_model(model, x)
    assert result.removed_channels == 3
    assert sum(m is model for m in traces) <= 1
    assert [m for m in traces if m is not model] == [result.model]
    # the pruned copy's graph was private: asking for it traces the pruned structure afresh
    sets = {s.name: s for s in channel_sets(result.model, ["*"], x)}
    assert len(traces) == 3 and traces[-1] is result.model
    assert sets["encoder.backbone.layer1.0.conv1"].channels == block.conv1.out_channels - 3


def test_weight_values_and_modes_keep_the_graph(traces):
    model = tiny_model()
    graph = model_graph(model)
    sets = channel_sets(model, PATTERNS)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(0.5).add_(1.0)
    model.load_state_dict(copy.deepcopy(model.state_dict()))
    model.eval()
    assert model_graph(model) is graph
    assert all(a is b for a, b in zip(channel_sets(model, PATTERNS), sets))
    assert len(traces) == 1


def test_input_shape_selects_its_own_graph(traces):
    model = chain()
    small, large = model_graph(model, torch.rand(1, 3, 8, 8)), model_graph(model, torch.rand(2, 3, 16, 16))
    assert small is not large and small.input_key[0] == (1, 3, 8, 8)
    assert model_graph(model, torch.rand(1, 3, 8, 8)) is small
    assert len(traces) == 2


def test_a_structure_change_retraces(traces):
    model = chain()
    graph = model_graph(model)
    # pruned in place on its own graph
    group = graph.dependency.get_pruning_group(model[0], tp.prune_conv_out_channels, [0, 1])
    group.prune()
    (pruned,) = channel_sets(model, ["0"])
    assert model_graph(model) is not graph and pruned.channels == 6
    # a conv swapped for one of another width (with its BN and reader)
    model[0], model[1], model[3] = nn.Conv2d(3, 5, 1), nn.BatchNorm2d(5), nn.Conv2d(5, 4, 1)
    (swapped,) = channel_sets(model, ["0"])
    assert swapped.channels == 5
    # same shapes, new objects: the sets must name the model's current parameters
    model[0] = nn.Conv2d(3, 5, 1)
    (same_shape,) = channel_sets(model, ["0"])
    assert any(w.param is model[0].weight for w in same_shape.writers)
    model[0].weight = nn.Parameter(torch.ones(5, 3, 1, 1))
    (new_param,) = channel_sets(model, ["0"])
    assert any(w.param is model[0].weight for w in new_param.writers)
    assert len(traces) == 5


def test_copies_never_see_the_original_graph(traces):
    model = chain()
    graph = model_graph(model)
    clone = copy.deepcopy(model)
    assert model_graph(clone) is not graph and model_graph(clone).model is clone
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert model_graph(loaded).model is loaded
    assert model.state_dict().keys() == chain().state_dict().keys()  # the cache is no state
    assert len(traces) == 3


def test_cached_results_equal_a_fresh_trace():
    model = tiny_model()
    cached = channel_sets(model, ["*"])
    fresh = graph_channel_sets(ModelGraph(copy.deepcopy(model)), ["*"])
    assert [(s.name, s.channels) for s in cached] == [(s.name, s.channels) for s in fresh]
    for a, b in zip(cached, fresh):
        assert torch.equal(a.to_output, b.to_output)
        for mine, theirs in ((a.writers, b.writers), (a.readers, b.readers)):
            assert [(s.name, s.dim) for s in mine] == [(s.name, s.dim) for s in theirs]
            assert all(
                torch.equal(s.index, t.index) and torch.equal(s.channel, t.channel) for s, t in zip(mine, theirs)
            )
    pairs = [(type(c), type(b)) for c, b in foldable_pairs(model)]
    assert len(pairs) == sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def test_the_cache_does_not_keep_a_model_alive():
    model = tiny_model()
    graph = model_graph(model)
    channel_sets(model, PATTERNS)
    fold_batchnorm(model)
    refs = [weakref.ref(model), weakref.ref(graph), weakref.ref(graph.dependency)]
    del model, graph
    gc.collect()
    assert all(ref() is None for ref in refs)


def test_the_graph_keeps_no_activations():
    model = chain()
    node = model_graph(model, torch.rand(1, 3, 8, 8)).dependency.module2node[model[3]]
    assert node.grad_fn is not None
    with pytest.raises(RuntimeError, match="keeps no activations"):
        node.grad_fn._saved_input
