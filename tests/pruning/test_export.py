"""ONNX export of a pruned model matches PyTorch under onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sparsemtl.pruning import export_onnx, prune_model

from .test_prune import SPECS, example, tiny_model, zero_coupled

pytest.importorskip("onnx")
onnxruntime = pytest.importorskip("onnxruntime")


def test_pruned_model_exports_with_task_named_outputs(tmp_path):
    model, x = tiny_model(), example()
    zero_coupled(model, x, 0.4)
    pruned = prune_model(model, x).model
    path = export_onnx(pruned, tmp_path / "m.onnx", (32, 32))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == list(SPECS)
    images = torch.rand(1, 3, 32, 32)
    got = session.run(None, {"images": images.numpy()})
    with torch.no_grad():
        expected = pruned(images)
    for name, value in zip(SPECS, got):
        ref = expected[name].numpy()
        assert np.abs(ref - value).max() <= 1e-4 * np.abs(ref).max()
