"""Evaluate any saved model (run directory, checkpoint or pruned file) on a split of its data."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from torch.utils.data import DataLoader

from ..config import apply_overrides, config_from_dict
from ..data import build_dataset, select_tasks
from ..data.collate import TaskCollate
from ..errors import ConfigError, DataError
from ..runs import ModelFile, open_model
from ..runtime import resolve_device
from .evaluate import EvalResult, evaluate

#: what may be overridden when evaluating a saved model (the architecture comes from the file)
EVAL_OVERRIDABLE = ("data.", "train.device", "train.amp")


def evaluate_model_file(
    path: str | Path, split: str = "test", overrides: Sequence[str] = ()
) -> tuple[ModelFile, EvalResult]:
    """Open ``path``, rebuild its dataset's ``split`` from the stored config (``overrides`` such
    as ``data.root=/new/place`` apply first) and evaluate in eval mode."""
    if split not in ("train", "val", "test"):
        raise ConfigError(f"argument --split: expected train, val or test, got {split!r}")
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        if not any(key == k or (k.endswith(".") and key.startswith(k)) for k in EVAL_OVERRIDABLE):
            raise ConfigError(f"override {item!r}: only data.*, train.device and train.amp can change for evaluation")
    opened = open_model(path)
    cfg = config_from_dict(apply_overrides(opened.config.to_dict(), list(overrides)))
    device = resolve_device(cfg.train.device)
    dataset = build_dataset(cfg.data, split, tuple(opened.specs))
    found = select_tasks(dataset, tuple(opened.specs))
    for name, spec in opened.specs.items():
        if (found[name].kind, found[name].num_classes) != (spec.kind, spec.num_classes):
            raise DataError(
                f"task {name!r} of {str(opened.path)!r} was trained as {spec.kind} with {spec.num_classes} classes, "
                f"but the data gives {found[name].kind} with {found[name].num_classes} classes"
            )
    loader = DataLoader(
        dataset,
        cfg.data.eval_batch_size,
        shuffle=False,
        num_workers=cfg.data.num_workers,
        collate_fn=TaskCollate(found),
    )
    result = evaluate(opened.model.to(device), loader, opened.specs, device, cfg.train.amp)
    return opened, result
