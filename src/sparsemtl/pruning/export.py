"""ONNX export of a (pruned) multi-task model with dynamic batch and image size, checked against
PyTorch with onnxruntime at two batch sizes and two image sizes.

The current exporter (``torch.onnx.export(..., dynamo=True)``, torch >= 2.5 with ``onnxscript``)
is used where it exists and succeeds; otherwise the TorchScript exporter writes the same graph
interface (``dynamic_axes``), after a one-line notice on stderr saying why.
"""

from __future__ import annotations

import importlib.util
import inspect
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import one_line

#: Dynamic dimensions of the input and of every dense output (image-level outputs: batch only).
DYNAMIC_AXES = {0: "batch", 2: "height", 3: "width"}
#: Smallest image side the exported graph accepts (the smallest configurable ``data.image_size``).
MIN_SIDE = 16
#: Batch sizes the export is checked at (torch.export would specialise a batch of 1, so the
#: example used for tracing has another size).
CHECK_BATCHES = (1, 3)
#: The second checked image size is the given one plus this (H, W): larger, and not square.
CHECK_GROWTH = (32, 64)
TORCHSCRIPT_OPSET = 17


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
    """Write the CPU ``model`` (eval mode; input ``images`` (batch, 3, height, width) with all three
    dynamic, outputs named after the tasks); when onnxruntime is installed, compare it with
    PyTorch at batch sizes :data:`CHECK_BATCHES` and at ``input_size`` and a larger size, and raise
    ``ValueError`` if any element differs by more than ``rtol`` (see :func:`check_onnx`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    wrapped = _TupleOutputs(model).eval()
    example = torch.rand(2, 3, *input_size, generator=torch.Generator().manual_seed(0))
    missing = dynamo_unavailable()
    if missing is None:
        try:
            _export_dynamo(wrapped, example, path)
        except Exception as exc:  # noqa: BLE001 - any exporter failure: the older exporter may still work
            missing = f"failed on this model ({type(exc).__name__}: {one_line(exc)[:200]})"
    if missing is not None:
        print(f"note: ONNX: the dynamo exporter {missing}; using the TorchScript exporter", file=sys.stderr)
        _export_torchscript(wrapped, example, path)
    if importlib.util.find_spec("onnxruntime") is not None:
        check_onnx(wrapped, path, check_inputs(input_size), rtol)
    return path


def dynamo_unavailable() -> str | None:
    """Why ``torch.onnx.export(..., dynamo=True)`` cannot run here, or None when it can."""
    parameters = inspect.signature(torch.onnx.export).parameters
    if "dynamo" not in parameters or "dynamic_shapes" not in parameters:
        return f"is missing (torch {torch.__version__} has none; it needs torch >= 2.5)"
    if importlib.util.find_spec("onnxscript") is None:
        return "is missing (onnxscript is not installed: pip install -e '.[onnx]')"
    return None


def _export_dynamo(wrapped: _TupleOutputs, example: torch.Tensor, path: Path) -> None:
    dims = {axis: torch.export.Dim(name, min=1 if axis == 0 else MIN_SIDE) for axis, name in DYNAMIC_AXES.items()}
    torch.onnx.export(
        wrapped,
        (example,),
        str(path),
        input_names=["images"],
        output_names=wrapped.names,
        dynamo=True,
        dynamic_shapes={"images": dims},
        external_data=False,  # one self-contained file (weights far below protobuf's 2 GB)
        verbose=False,
    )


def _export_torchscript(wrapped: _TupleOutputs, example: torch.Tensor, path: Path) -> None:
    with torch.no_grad():
        ranks = [out.dim() for out in wrapped(example)]
    axes = {"images": DYNAMIC_AXES}
    for name, rank in zip(wrapped.names, ranks):
        axes[name] = {axis: label for axis, label in DYNAMIC_AXES.items() if axis < rank}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its deprecation notice: the note above already says which exporter
        torch.onnx.export(
            wrapped,
            (example,),
            str(path),
            input_names=["images"],
            output_names=wrapped.names,
            dynamic_axes=axes,
            dynamo=False,
            opset_version=TORCHSCRIPT_OPSET,
        )


def check_inputs(input_size: tuple[int, int]) -> list[torch.Tensor]:
    """Random images at every batch size of :data:`CHECK_BATCHES` and at two image sizes."""
    height, width = input_size
    sizes = [(height, width), (height + CHECK_GROWTH[0], width + CHECK_GROWTH[1])]
    generator = torch.Generator().manual_seed(1)
    return [torch.rand(batch, 3, *size, generator=generator) for size in sizes for batch in CHECK_BATCHES]


def check_onnx(wrapped: _TupleOutputs, path: Path, inputs: list[torch.Tensor], rtol: float) -> None:
    """Compare onnxruntime's outputs with PyTorch's on every input, per task: shapes must be equal
    and every element within ``rtol`` of the output's largest magnitude (so near-zero elements are
    not held to a relative bound float32 cannot meet); ``ValueError`` names the first mismatch."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for x in inputs:
        got = dict(zip(wrapped.names, session.run(wrapped.names, {"images": x.numpy()})))
        with torch.no_grad():
            expected = wrapped(x)
        where = f"input {tuple(x.shape)}"
        for name, ref in zip(wrapped.names, expected):
            ref = ref.numpy()
            if got[name].shape != ref.shape:
                raise ValueError(f"ONNX output {name!r} has shape {got[name].shape} at {where}, PyTorch {ref.shape}")
            scale = max(float(np.abs(ref).max()), np.finfo(np.float32).tiny)
            err = np.abs(ref.astype(np.float64) - got[name]) / scale
            if not np.all(err <= rtol):
                raise ValueError(
                    f"ONNX output {name!r} differs from PyTorch at {where} by {float(np.nanmax(err)):.3e} "
                    f"of its largest magnitude (> {rtol:g})"
                )
