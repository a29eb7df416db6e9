"""The model graph: Torch-Pruning's traced dependency graph of a model, built once and shared.

Everything that needs the wiring of a model as executed reads it from here: the groupings and
coupled channel sets (:mod:`sparsemtl.sparsity.channels`), the sparsity report, pruning and
BatchNorm folding (:mod:`sparsemtl.evaluation.fold`). Tracing runs a forward pass and walks its
autograd graph, so :func:`model_graph` caches the result on the model and hands the same
:class:`ModelGraph` to every caller until the model's *structure* changes.

The cache lives in the model's ``__dict__`` (not in a global table: the graph references the
model's modules, so a global entry would keep the model alive; on the model it is a reference
cycle that the garbage collector frees with the model). It is not in the ``state_dict``, and deep
copies and pickles of the model get an empty cache, since a graph points at one model's modules.
"""

from __future__ import annotations

from typing import Callable, Hashable, TypeVar

import torch
import torch_pruning as tp
from torch import nn

T = TypeVar("T")

#: ``model.__dict__`` key of the cache
_SLOT = "_sparsemtl_model_graph"

#: shape, dtype and device of a trace input: what a graph depends on besides the structure
InputKey = tuple[tuple[int, ...], torch.dtype, torch.device]


def trace_input(model: nn.Module, example_inputs: torch.Tensor | None = None) -> torch.Tensor:
    """The tensor a trace runs on: ``example_inputs`` (default: one random 64x64 RGB image in the
    model's dtype) on the model's device."""
    ref = next(model.parameters())
    x = torch.rand(1, 3, 64, 64, dtype=ref.dtype) if example_inputs is None else example_inputs
    return x.detach().to(ref.device)


def _input_key(x: torch.Tensor) -> InputKey:
    return tuple(x.shape), x.dtype, x.device


class ModelGraph:
    """A traced graph of one model for one input shape, and values derived from it.

    ``dependency`` is the Torch-Pruning graph; :meth:`derived` memoises anything computed from
    the graph alone (e.g. the channel sets per module pattern), so it is computed once per graph
    too. A graph built directly (not through :func:`model_graph`) is private to its builder:
    pruning builds one, because cutting channels rewrites the graph it cuts on.
    """

    def __init__(self, model: nn.Module, example_inputs: torch.Tensor | None = None) -> None:
        x = trace_input(model, example_inputs)
        self.input_key = _input_key(x)
        self.dependency = _trace(model, x)
        self.names = {module: name for name, module in model.named_modules()}
        self._derived: dict[Hashable, object] = {}

    @property
    def model(self) -> nn.Module:
        return self.dependency.model

    def node(self, name: str) -> tp.Node | None:
        """The graph node of the submodule called ``name``; None where the trace did not reach it.

        Looked up by name, so the graph of a model also answers for a deep copy of it.
        """
        return self.dependency.module2node.get(self.model.get_submodule(name))

    def derived(self, key: Hashable, compute: Callable[[], T]) -> T:
        """``compute()``, run once per graph and ``key``; for results that depend on the wiring
        only, never on weight values (those change every training step, the graph does not)."""
        if key not in self._derived:
            self._derived[key] = compute()
        return self._derived[key]  # type: ignore[return-value]


def _trace(model: nn.Module, x: torch.Tensor) -> tp.DependencyGraph:
    """Trace ``model`` with Torch-Pruning.

    Tracing needs autograd, so grad is enabled and the input requires grad (frozen layers still
    get a ``grad_fn``). Torch-Pruning leaves the model in eval mode; every submodule's flag is
    restored. Layers that run without reaching an output are traced too (:func:`_build`).

    The graph keeps the trace's autograd nodes, of which Torch-Pruning only reads shapes and
    dims; the tensors autograd would save for a backward pass are dropped instead, or a cached
    graph would hold every activation of the trace (~0.8 GB for a two-head ResNet-26D at 512x512).
    """
    x = x.detach().requires_grad_(x.is_floating_point())
    modes = [(m, m.training) for m in model.modules()]
    try:
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(_drop, _dropped):
            ran: set[nn.Module] = set()
            graph = _build(model, x, ran, ())
            untraced = [m for m in model.modules() if m in ran and m not in graph.module2node]
            return _build(model, x, set(), untraced) if untraced else graph
    finally:
        for module, training in modes:
            module.training = training


#: layers whose channels a graph must know about whenever they run
_LAYERS = (nn.modules.conv._ConvNd, nn.Linear, nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)


def _build(model: nn.Module, x: torch.Tensor, ran: set[nn.Module], extra: list[nn.Module]) -> tp.DependencyGraph:
    """Trace ``model`` on ``x``, recording in ``ran`` the layers that ran.

    Torch-Pruning traces backwards from the outputs, so a layer that runs but reaches no output
    (e.g. an unused branch of timm's HRNet features) is missing from its graph, and cutting the
    channels it reads would break the forward pass. The layers in ``extra`` are traced as extra
    outputs (a copy of their output, taken before any in-place op), so their own channels are
    never cut and they are updated with the channels they read.
    """
    copies: list[torch.Tensor] = []
    hooks = [m.register_forward_hook(lambda _m, _a, out: copies.append(out.clone())) for m in extra]
    hooks += [m.register_forward_hook(lambda m, _a, _o: ran.add(m)) for m in model.modules() if isinstance(m, _LAYERS)]

    def forward(module: nn.Module, inputs: tuple[torch.Tensor]) -> tuple[object, list[torch.Tensor]]:
        return module(*inputs), copies

    try:
        return tp.DependencyGraph().build_dependency(model, example_inputs=(x,), forward_fn=forward, verbose=False)
    finally:
        for hook in hooks:
            hook.remove()


def _drop(tensor: torch.Tensor) -> None:
    return None


def _dropped(_: None) -> torch.Tensor:
    raise RuntimeError("a model graph trace keeps no activations: it cannot be backpropagated")


class _Slot:
    """A model's cached graphs, one per trace input, all valid for the structure ``structure``.

    ``pinned`` keeps the objects whose ``id`` is in ``structure`` alive, so a later object can
    never reuse an id and pass for one that was replaced.
    """

    def __init__(self) -> None:
        self.structure: tuple = ()
        self.pinned: list[object] = []
        self.graphs: dict[InputKey, ModelGraph] = {}

    def __deepcopy__(self, memo: dict) -> _Slot:
        return _Slot()

    def __reduce__(self) -> tuple:
        return _Slot, ()


def _structure(model: nn.Module) -> tuple[tuple, list[object]]:
    """A cheap signature of everything a graph and its derived values depend on, and the objects
    it identifies: each submodule and parameter by name and identity (a replaced layer or
    parameter of the same shape would leave the graph pointing at the old one), each parameter
    and buffer by shape. Weight values are deliberately left out."""
    modules = list(model.named_modules())
    params = list(model.named_parameters())
    signature = (
        tuple((name, id(m)) for name, m in modules),
        tuple((name, id(p), tuple(p.shape)) for name, p in params),
        tuple((name, tuple(b.shape)) for name, b in model.named_buffers()),
    )
    return signature, [m for _, m in modules] + [p for _, p in params]


def model_graph(model: nn.Module, example_inputs: torch.Tensor | None = None) -> ModelGraph:
    """The shared graph of ``model`` traced on ``example_inputs`` (see :func:`trace_input`).

    Traced on first use and cached on the model per input shape, dtype and device; retraced
    after the structure changed (layers pruned, replaced or added, parameters reassigned), not
    when weights change.
    """
    x = trace_input(model, example_inputs)
    slot = model.__dict__.get(_SLOT)
    if slot is None:
        slot = model.__dict__[_SLOT] = _Slot()
    structure, pinned = _structure(model)
    if structure != slot.structure:
        slot.structure, slot.pinned, slot.graphs = structure, pinned, {}
    key = _input_key(x)
    if key not in slot.graphs:
        slot.graphs[key] = ModelGraph(model, x)
    return slot.graphs[key]
