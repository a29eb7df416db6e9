"""Typed run configuration: plain YAML validated into dataclasses, plus ``key=value`` overrides.

Every key is checked against the dataclass fields: unknown keys, wrong types and values outside
the allowed set raise :class:`ConfigError` with a one-line message naming the dotted key and
what is allowed. Only ``yaml.safe_load`` is ever used.
"""

from __future__ import annotations

import dataclasses
import math
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml

from .errors import ConfigError, one_line


@dataclass
class DataConfig:
    """Which dataset, how large, and how it is batched."""

    name: str = "synthetic-scenes"
    root: str | None = None
    layout: str = "auto"
    val_fraction: float = 0.1
    skip_bad_samples: bool = False
    resize: bool = False
    augment: bool = False
    classes: int = 0
    depth_scale: float = 1.0
    check: bool = True
    image_size: tuple[int, int] = (64, 64)
    num_train: int = 512
    num_val: int = 128
    num_test: int = 128
    batch_size: int = 16
    eval_batch_size: int = 32
    num_workers: int = 0
    cache: bool = True
    seed: int = 0


@dataclass
class ModelConfig:
    """Shared timm encoder and per-task heads."""

    encoder: str = "resnet50d"
    output_stride: Literal[8, 16, 32] = 8
    pretrained: str | None = None
    dense_head: str = "aspp"
    head_channels: int = 256
    aspp_rates: tuple[int, ...] = (12, 24, 36)
    head_dropout: float = 0.1
    classifier_channels: tuple[int, int] = (64, 32)
    classifier_dropout: tuple[float, float] = (0.6, 0.4)


@dataclass
class BudgetConfig:
    """What the pruned model must cost by ``sparsity.budget_epochs``: exactly one of ``macs`` or
    ``params`` (fractions of the dense model's) or ``latency_ms`` (milliseconds per forward at
    ``batch`` on ``device`` with ``threads`` CPU threads, 0 = torch's current count)."""

    macs: float | None = None
    params: float | None = None
    latency_ms: float | None = None
    batch: int = 1
    device: str = "cpu"
    threads: int = 0

    @property
    def kind(self) -> str:
        """Which budget is set: ``macs``, ``params`` or ``latency_ms``."""
        return next(k for k in BUDGET_KINDS if getattr(self, k) is not None)

    @property
    def value(self) -> float:
        return float(getattr(self, self.kind))


BUDGET_KINDS = ("macs", "params", "latency_ms")


@dataclass
class SparsityConfig:
    """Group-sparsity regulariser on the shared encoder, applied as a proximal step."""

    penalty: str = "none"
    lam: float = 0.0
    mcp_gamma: float = 100.0
    grouping: str = "input_channels"
    modules: tuple[str, ...] = ("encoder.*",)
    reweight: str = "sqrt_size"
    warmup_epochs: int = 0
    ramp_epochs: int = 0
    prox_metric: Literal["corrected", "reference"] = "corrected"
    budget: BudgetConfig | None = None
    budget_epochs: int = 0

    @property
    def enabled(self) -> bool:
        """Whether the run is sparse: the one test for it (``lam > 0``; ``penalty: none`` with a
        positive ``lam`` is refused when the config is loaded, so it never disagrees)."""
        return self.lam > 0


@dataclass
class OptimConfig:
    """AdamW hyper-parameters (the prox step is added on top when sparsity is on)."""

    lr: float = 1e-3
    weight_decay: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    native_prox: bool = False  # CPU: AdamW update and group-lasso prox in native passes (sparsity/native_step.py)


@dataclass
class SchedulerConfig:
    """Learning-rate schedule; ``plateau`` watches the validation monitor."""

    name: str = "cosine"
    min_lr: float = 0.0
    factor: float = 0.1
    patience: int = 5
    step_size: int = 30


@dataclass
class LossConfig:
    """How per-task losses are combined."""

    weighting: str = "uncertainty"
    weights: dict[str, float] = field(default_factory=dict)
    label_smoothing: float = 0.0


@dataclass
class TrainConfig:
    """Loop, device, early stopping and output directory."""

    epochs: int = 10
    patience: int = 0
    task_patience: int = 0
    monitor: str = "loss"
    device: str = "auto"
    amp: Literal["none", "fp16", "bf16"] = "none"
    grad_clip: float = 0.0
    seed: int = 0
    deterministic: bool = False
    progress: bool = True
    loggers: tuple[str, ...] = ("csv",)
    out_dir: str = "runs"
    name: str | None = None
    baselines: dict[str, str] = field(default_factory=dict)
    checkpoint_every: int = 1  # write last.pt every N epochs (and always after the last one)
    async_checkpoint: bool = False  # write checkpoints in a background thread from a CPU copy


@dataclass
class Config:
    """A complete, validated training run description."""

    tasks: tuple[str, ...] = ("segmentation", "depth", "normals")
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    sparsity: SparsityConfig = field(default_factory=SparsityConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (tuples as lists) suitable for YAML/JSON."""
        return plain(dataclasses.asdict(self))


# Numeric range constraints, checked after type conversion: key -> (predicate, description).
_CONSTRAINTS: dict[str, tuple[Any, str]] = {
    "data.num_train": (lambda v: v >= 1, "an integer >= 1"),
    "data.val_fraction": (lambda v: 0.0 < v < 1.0, "a number in (0, 1)"),
    "data.classes": (lambda v: v >= 0, "an integer >= 0 (0 = the dataset's default)"),
    "data.seed": (lambda v: v >= 0, "an integer >= 0"),
    "train.seed": (lambda v: v >= 0, "an integer >= 0"),
    "data.depth_scale": (lambda v: v > 0.0, "a number > 0 (metres per stored depth unit, e.g. 0.001 for mm)"),
    "data.num_val": (lambda v: v >= 1, "an integer >= 1"),
    "data.num_test": (lambda v: v >= 1, "an integer >= 1"),
    "data.batch_size": (lambda v: v >= 1, "an integer >= 1"),
    "data.eval_batch_size": (lambda v: v >= 1, "an integer >= 1"),
    "data.num_workers": (lambda v: v >= 0, "an integer >= 0"),
    "data.image_size": (lambda v: min(v) >= 16, "two integers >= 16 (height, width)"),
    "model.head_channels": (lambda v: v >= 1, "an integer >= 1"),
    "model.aspp_rates": (lambda v: len(v) >= 1 and min(v) >= 1, "a non-empty list of integers >= 1"),
    "model.head_dropout": (lambda v: 0.0 <= v < 1.0, "a number in [0, 1)"),
    "model.classifier_channels": (lambda v: min(v) >= 1, "two integers >= 1"),
    "model.classifier_dropout": (lambda v: all(0.0 <= p < 1.0 for p in v), "two numbers in [0, 1)"),
    "sparsity.lam": (lambda v: v >= 0.0, "a number >= 0"),
    "sparsity.warmup_epochs": (lambda v: v >= 0, "an integer >= 0"),
    "sparsity.ramp_epochs": (lambda v: v >= 0, "an integer >= 0"),
    "sparsity.mcp_gamma": (lambda v: v > 0.0, "a number > 0"),
    "sparsity.budget_epochs": (lambda v: v >= 0, "an integer >= 0 (0 = half of train.epochs)"),
    "sparsity.budget.macs": (lambda v: v is None or 0.0 < v < 1.0, "a fraction of the dense model's MACs in (0, 1)"),
    "sparsity.budget.params": (
        lambda v: v is None or 0.0 < v < 1.0,
        "a fraction of the dense model's parameters in (0, 1)",
    ),
    "sparsity.budget.latency_ms": (lambda v: v is None or v > 0.0, "a number of milliseconds > 0"),
    "sparsity.budget.batch": (lambda v: v >= 1, "an integer >= 1"),
    "sparsity.budget.threads": (lambda v: v >= 0, "an integer >= 0 (0 = torch's current count)"),
    "sparsity.modules": (lambda v: len(v) >= 1, "a non-empty list of module-name patterns"),
    "optim.lr": (lambda v: v > 0.0, "a number > 0"),
    "optim.weight_decay": (lambda v: v >= 0.0, "a number >= 0"),
    "optim.betas": (lambda v: all(0.0 <= b < 1.0 for b in v), "two numbers in [0, 1)"),
    "optim.eps": (lambda v: v > 0.0, "a number > 0"),
    "scheduler.min_lr": (lambda v: v >= 0.0, "a number >= 0"),
    "scheduler.factor": (lambda v: 0.0 < v < 1.0, "a number in (0, 1)"),
    "scheduler.patience": (lambda v: v >= 0, "an integer >= 0"),
    "scheduler.step_size": (lambda v: v >= 1, "an integer >= 1"),
    "loss.label_smoothing": (lambda v: 0.0 <= v < 1.0, "a number in [0, 1)"),
    "train.epochs": (lambda v: v >= 1, "an integer >= 1"),
    "train.patience": (lambda v: v >= 0, "an integer >= 0 (0 disables early stopping)"),
    "train.task_patience": (lambda v: v >= 0, "an integer >= 0 (0 disables per-task early stopping)"),
    "train.grad_clip": (lambda v: v >= 0.0, "a number >= 0 (0 disables clipping)"),
    "train.checkpoint_every": (lambda v: v >= 1, "an integer >= 1 (write last.pt every N epochs)"),
    "tasks": (lambda v: len(v) >= 1 and len(set(v)) == len(v), "a non-empty list of distinct task names"),
}


def plain(value: Any) -> Any:
    """Tuples as lists, recursively: what YAML and JSON write."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if origin is tuple:
        args = get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_type_name(args[0])}"
        return f"a list of {len(args)} values ({', '.join(_type_name(a) for a in args)})"
    if origin is dict:
        return "a mapping of names to numbers"
    if tp is type(None):
        return "null"
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def section_type(tp: Any) -> type | None:
    """The settings class of a config field that is a section (a dataclass), also an optional
    one such as ``sparsity.budget``; None for a plain value."""
    if dataclasses.is_dataclass(tp):
        return tp
    sections = [a for a in get_args(tp) if dataclasses.is_dataclass(a)]
    return sections[0] if get_origin(tp) in (Union, types.UnionType) and len(sections) == 1 else None


def convert_value(value: Any, tp: Any, key: str) -> Any:
    """Convert ``value`` to type ``tp`` or raise ConfigError naming ``key``."""
    origin = get_origin(tp)
    fail = ConfigError(f"config key {key!r}: expected {_type_name(tp)}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"config key {key!r}: expected a mapping of settings, got {value!r}")
        return _build(tp, value, key + ".")
    if origin is Literal:
        for allowed in get_args(tp):
            if value == allowed and type(value) is type(allowed):
                return allowed
            if isinstance(value, str) and str(allowed) == value:
                return allowed
        raise fail
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None or (isinstance(value, str) and value.lower() in ("null", "none", "~")):
            if type(None) in args:
                return None
        section = section_type(tp)
        if isinstance(value, dict) and section is not None:  # its own key errors name the inner key
            return convert_value(value, section, key)
        for arg in (a for a in args if a is not type(None)):
            try:
                return convert_value(value, arg, key)
            except ConfigError:
                continue
        raise fail
    if origin is tuple:
        args = get_args(tp)
        if isinstance(value, str):
            value = yaml.safe_load(value) if value.strip().startswith("[") else value.split(",")
        if not isinstance(value, (list, tuple)):
            raise fail
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(convert_value(v, args[0], key) for v in value)
        if len(value) != len(args):
            raise fail
        return tuple(convert_value(v, a, key) for v, a in zip(value, args))
    if origin is dict:
        if isinstance(value, str):
            value = yaml.safe_load(value)
        if not isinstance(value, dict):
            raise fail
        return {str(k): convert_value(v, get_args(tp)[1], f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise fail
    if tp is int:
        if isinstance(value, bool):
            raise fail
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                raise fail from None
        raise fail
    if tp is float:
        if isinstance(value, bool):
            raise fail
        try:
            number = float(value) if isinstance(value, (int, float, str)) else math.nan
        except ValueError:
            raise fail from None
        if not math.isfinite(number):
            raise ConfigError(f"config key {key!r}: expected a finite number, got {value!r}")
        return number
    if tp is str:
        if isinstance(value, (dict, list)) or value is None:
            raise fail
        return str(value)
    raise TypeError(f"unsupported config type {tp!r} for key {key!r}")


def _build(cls: type, values: dict[str, Any], prefix: str = "") -> Any:
    hints = get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ConfigError(
            f"unknown config key {prefix + unknown[0]!r}; allowed keys"
            f"{' under ' + repr(prefix[:-1]) if prefix else ''}: {', '.join(names)}"
        )
    kwargs = {}
    for name, value in values.items():
        key = prefix + name
        converted = convert_value(value, hints[name], key)
        check = _CONSTRAINTS.get(key)
        if check is not None and not check[0](converted):
            raise ConfigError(f"config key {key!r}: expected {check[1]}, got {value!r}")
        kwargs[name] = converted
    return cls(**kwargs)


def config_from_dict(values: dict[str, Any]) -> Config:
    """Validate a nested mapping (e.g. parsed YAML) into a :class:`Config`."""
    if not isinstance(values, dict):
        raise ConfigError(f"a config must be a mapping of settings, got {type(values).__name__}")
    cfg = _build(Config, values)
    _check_combinations(cfg)
    from .registries import check_config_names  # the registries live in higher stages

    check_config_names(cfg)
    return cfg


def _check_combinations(cfg: Config) -> None:
    """Settings that are valid alone but would silently do something else together."""
    sp = cfg.sparsity
    if sp.penalty == "none" and sp.lam > 0:
        raise ConfigError(
            f"config key 'sparsity.lam': {sp.lam:g} has no effect with sparsity.penalty=none; "
            "set sparsity.penalty=group_lasso (or group_mcp) for a sparse run, or sparsity.lam=0 for a dense one"
        )
    if sp.budget is not None:
        _check_budget(cfg)
    if cfg.loss.weights and cfg.loss.weighting != "fixed":
        raise ConfigError("config key 'loss.weights': only used with loss.weighting=fixed")
    if cfg.train.name is not None:
        check_run_name(cfg.train.name)


def _check_budget(cfg: Config) -> None:
    sp, budget = cfg.sparsity, cfg.sparsity.budget
    given = [k for k in BUDGET_KINDS if getattr(budget, k) is not None]
    if len(given) != 1:
        raise ConfigError(
            f"config key 'sparsity.budget': expected exactly one of {', '.join(BUDGET_KINDS)}, "
            f"got {', '.join(given) if given else 'none'}"
        )
    if not sp.enabled:
        raise ConfigError(
            "config key 'sparsity.lam': a budget needs a sparse run; set sparsity.penalty=group_lasso (or group_mcp) "
            "and sparsity.lam > 0 (the controller's starting lambda)"
        )
    if sp.ramp_epochs:
        raise ConfigError("config key 'sparsity.ramp_epochs': the budget controller sets lambda itself; use 0")
    deadline = budget_deadline(cfg)
    if not sp.warmup_epochs < deadline <= cfg.train.epochs:
        raise ConfigError(
            f"config key 'sparsity.budget_epochs': expected an epoch after sparsity.warmup_epochs "
            f"({sp.warmup_epochs}) and at most train.epochs ({cfg.train.epochs}), got {deadline}"
        )


def budget_deadline(cfg: Config) -> int:
    """The epoch by whose end the budget is met and held (``sparsity.budget_epochs``; 0: half
    of ``train.epochs``, at least 1)."""
    return cfg.sparsity.budget_epochs or max(1, cfg.train.epochs // 2)


def check_run_name(name: str) -> None:
    """A run name is a relative path that stays inside ``train.out_dir``."""
    path = Path(name)
    if not name.strip() or path.is_absolute() or ".." in path.parts or name.startswith("~"):
        raise ConfigError(
            f"config key 'train.name': expected a relative name inside train.out_dir "
            f"(no absolute path, no '..'), got {name!r}"
        )


def apply_overrides(values: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` strings to a nested mapping (values parsed as YAML)."""
    result = plain(values)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value, e.g. optim.lr=0.001")
        dotted, raw = item.split("=", 1)
        parts = dotted.strip().split(".")
        node = result
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
            node = child
        try:
            node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {item!r}: the value is not valid YAML: {_yaml_problem(exc)}") from None
    return result


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """The parser's complaint with its line and column (1-based), in one line."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or one_line(exc)
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}" if mark is not None else one_line(problem)


def read_yaml(path: Path, what: str) -> Any:
    """The YAML document in ``path``; a missing, unreadable or malformed file is one ConfigError
    that names it as ``what`` (``config file``, ``study file``) with the parser's line and column."""
    if not path.is_file():
        raise ConfigError(f"{what} {str(path)!r} does not exist")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} {str(path)!r} is not valid YAML: {_yaml_problem(exc)}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{what} {str(path)!r} cannot be read: {one_line(exc)}") from None


def merge_config(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """``update`` over ``base``, section by section (a nested mapping is merged, anything else replaced)."""
    out = dict(base)
    for key, value in update.items():
        nested = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = merge_config(out[key], value) if nested else value
    return out


def read_config_file(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The mapping of a YAML config file; a top-level ``base: other.yaml`` (relative to the file)
    is read first and this file's settings are merged over it, so experiment files stay small."""
    path = Path(path)
    if path.resolve() in _seen:
        raise ConfigError(f"config file {str(path)!r} inherits from itself through 'base'")
    loaded = read_yaml(path, "config file")
    if loaded is not None and not isinstance(loaded, dict):
        raise ConfigError(f"config file {str(path)!r} must contain a mapping of settings")
    values = loaded or {}
    base = values.pop("base", None)
    if base is None:
        return values
    if not isinstance(base, str):
        raise ConfigError(f"config file {str(path)!r}: 'base' must be a file name, got {base!r}")
    return merge_config(read_config_file(path.parent / base, (*_seen, path.resolve())), values)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read a YAML config file (optional, with ``base`` inheritance), apply overrides, validate."""
    values = read_config_file(path) if path is not None else {}
    return config_from_dict(apply_overrides(values, overrides or []))
