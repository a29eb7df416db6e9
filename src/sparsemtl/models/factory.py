"""``build_model``: the one way to turn a model config and task specs into a model."""

from __future__ import annotations

from ..config import ConfigError, ModelConfig
from ..tasks import get_task
from ..tasks.spec import TaskSpec
from .encoder import Encoder
from .heads import HEADS
from .multitask import MultiTaskModel


def build_model(cfg: ModelConfig, task_specs: dict[str, TaskSpec]) -> MultiTaskModel:
    """Encoder from timm plus one head per task, the head type chosen by the task kind."""
    try:
        encoder = Encoder(cfg.encoder, cfg.output_stride, cfg.pretrained)
    except RuntimeError as exc:
        if "Unknown model" in str(exc) or "Invalid model" in str(exc):
            raise ConfigError(f"config key 'model.encoder': unknown timm model {cfg.encoder!r}") from None
        raise
    dense_head = _head_builder(cfg.dense_head, "model.dense_head")
    heads = {}
    dense = set()
    for name, spec in task_specs.items():
        task = get_task(spec.kind)
        builder = dense_head if task.head == "dense" else HEADS.get("classifier")
        heads[name] = builder(encoder.out_channels, task.out_channels(spec), cfg)
        if task.head == "dense":
            dense.add(name)
    return MultiTaskModel(encoder, heads, dense)


def _head_builder(name: str, key: str):
    try:
        return HEADS.get(name)
    except KeyError as exc:
        raise ConfigError(f"config key {key!r}: {exc.args[0]}") from None
