"""ONNX export of a (pruned) multi-task model, checked against PyTorch with onnxruntime."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch
from torch import nn


class _TupleOutputs(nn.Module):
    """ONNX graphs have positional outputs: return the dict's values in task order."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.names = list(model.task_names)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outputs = self.model(images)
        return tuple(outputs[name] for name in self.names)


def export_onnx(model: nn.Module, path: str | Path, input_size: tuple[int, int], rtol: float = 1e-4) -> Path:
    """Write ``model`` (eval mode, batch 1, input ``images``, outputs named after the tasks)
    with the TorchScript-based exporter; when onnxruntime is installed, run both on one random
    input and raise ``ValueError`` if an output differs by more than ``rtol`` (relative)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    wrapped = _TupleOutputs(model).eval()
    x = torch.rand(1, 3, *input_size)
    torch.onnx.export(
        wrapped,
        (x,),
        str(path),
        input_names=["images"],
        output_names=wrapped.names,
        dynamo=False,
        opset_version=17,
    )
    if importlib.util.find_spec("onnxruntime") is not None:
        check_onnx(wrapped, path, x, rtol)
    return path


def check_onnx(wrapped: _TupleOutputs, path: Path, x: torch.Tensor, rtol: float) -> None:
    """Compare onnxruntime's outputs with PyTorch's, per task."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = dict(zip(wrapped.names, session.run(wrapped.names, {"images": x.numpy()})))
    with torch.no_grad():
        expected = wrapped(x)
    for name, ref in zip(wrapped.names, expected):
        ref = ref.numpy()
        err = float(np.abs(ref - got[name]).max() / max(float(np.abs(ref).max()), np.finfo(np.float32).tiny))
        if not err <= rtol:
            raise ValueError(f"ONNX output {name!r} differs from PyTorch by {err:.3e} relative (> {rtol:g})")
