"""ONNX export of a pruned model matches PyTorch under onnxruntime at any batch and image size,
with the current exporter and with the TorchScript fallback."""

from __future__ import annotations

import contextlib
import importlib.util
import io

import numpy as np
import pytest
import torch

from sparsemtl.pruning import export as export_module
from sparsemtl.pruning import export_onnx, prune_model

from .test_prune import SPECS, example, tiny_model, zero_coupled

pytest.importorskip("onnx")
onnxruntime = pytest.importorskip("onnxruntime")

#: (batch, height, width) not among the export's own checks: odd sizes, not multiples of 32.
UNSEEN = [(1, 32, 32), (2, 48, 80), (4, 45, 71)]


@pytest.fixture(scope="module")
def pruned():
    model, x = tiny_model(), example()
    zero_coupled(model, x, 0.4)
    return prune_model(model, x).model


def outputs_match(path, model, shapes) -> None:
    """Every output of ``path`` equals ``model``'s (within 1e-4 of its largest magnitude) at each
    (batch, height, width), with the task names and dynamic shapes intact."""
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images"]
    assert [o.name for o in session.get_outputs()] == list(SPECS)
    generator = torch.Generator().manual_seed(3)
    for batch, height, width in shapes:
        images = torch.rand(batch, 3, height, width, generator=generator)
        got = session.run(None, {"images": images.numpy()})
        with torch.no_grad():
            expected = model(images)
        for name, value in zip(SPECS, got):
            ref = expected[name].numpy()
            assert value.shape == ref.shape, (name, value.shape, ref.shape)
            assert ref.shape[0] == batch and (ref.ndim == 2 or ref.shape[-2:] == (height, width))
            assert np.abs(ref - value).max() <= 1e-4 * np.abs(ref).max(), (name, batch, height, width)


@pytest.mark.skipif(export_module.dynamo_unavailable() is not None, reason="no dynamo ONNX exporter here")
def test_dynamo_export_has_dynamic_batch_and_size(pruned, tmp_path, capsys):
    path = export_onnx(pruned, tmp_path / "m.onnx", (32, 32))
    assert "TorchScript" not in capsys.readouterr().err, "the current exporter must be used where it works"
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"], "one self-contained file"
    outputs_match(path, pruned, UNSEEN)


@pytest.fixture(scope="module")
def fallback(pruned, tmp_path_factory):
    """An export where the dynamo exporter raises: (path, what was printed on stderr)."""
    real_export = torch.onnx.export

    def no_dynamo(*args, **kwargs):
        if kwargs.get("dynamo", True):
            raise RuntimeError("exporter exploded\non two lines")
        return real_export(*args, **kwargs)

    err = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stderr(err):
        patch.setattr(export_module, "dynamo_unavailable", lambda: None)
        patch.setattr(torch.onnx, "export", no_dynamo)
        path = export_onnx(pruned, tmp_path_factory.mktemp("onnx") / "m.onnx", (32, 32))
    return path, err.getvalue()


def test_fallback_to_torchscript_says_why_and_stays_dynamic(pruned, fallback):
    path, err = fallback
    assert err.count("\n") == 1, err
    assert err.startswith(
        "note: ONNX: the dynamo exporter failed on this model (RuntimeError: exporter exploded on two"
    )
    assert err.rstrip().endswith("using the TorchScript exporter")
    outputs_match(path, pruned, UNSEEN)


def test_a_missing_exporter_is_named(monkeypatch):
    assert export_module.dynamo_unavailable() is None or "onnxscript" in export_module.dynamo_unavailable()
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name: None if name == "onnxscript" else real_find_spec(name)
    )
    assert export_module.dynamo_unavailable() == "is missing (onnxscript is not installed: pip install -e '.[onnx]')"

    def old_export(model, args, f, input_names=None, output_names=None, dynamic_axes=None, opset_version=None):
        """torch < 2.5: no dynamo or dynamic_shapes keywords."""

    monkeypatch.setattr(torch.onnx, "export", old_export)
    assert export_module.dynamo_unavailable().startswith(f"is missing (torch {torch.__version__} has none")


def test_check_catches_a_wrong_graph(pruned, fallback):
    """The verification compares every element at every checked shape: a graph whose depth is
    off at one pixel of one image of the larger size is refused."""
    path, _ = fallback
    inputs = export_module.check_inputs((32, 32))
    assert [tuple(x.shape) for x in inputs] == [(1, 3, 32, 32), (3, 3, 32, 32), (1, 3, 64, 96), (3, 3, 64, 96)]
    export_module.check_onnx(export_module._TupleOutputs(pruned).eval(), path, inputs, 1e-4)

    class OnePixelOff(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = pruned
            self.task_names = list(SPECS)

        def forward(self, images):
            out = dict(self.inner(images))
            if images.shape[0] == 3 and images.shape[-1] == 96:
                out["depth"] = out["depth"].clone()
                out["depth"][2, 0, 5, 7] += out["depth"].abs().max()
            return out

    with pytest.raises(ValueError, match=r"'depth' differs from PyTorch at input \(3, 3, 64, 96\)"):
        export_module.check_onnx(export_module._TupleOutputs(OnePixelOff()).eval(), path, inputs, 1e-4)
