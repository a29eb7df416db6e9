"""The study file: a base run config, a grid of values, and how cells are post-processed and launched.

A study is validated like a run config, at load time and for every cell: unknown keys and bad
values stop with one line naming the study file and the key (or the cell) concerned, before
anything is trained. Grid keys are dotted run-config keys; ``lam``, ``seed`` are shorthands for
``sparsity.lam`` and ``train.seed``. A cell with ``lam`` 0 is dense: its penalty is set to
``none``.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

from ..config import (
    Config,
    apply_overrides,
    config_from_dict,
    convert_value,
    merge_config,
    plain,
    read_config_file,
    read_yaml,
    section_type,
)
from ..errors import ConfigError

#: grid-key shorthands -> dotted run-config keys
SHORTHANDS = {"lam": "sparsity.lam", "seed": "train.seed"}
_SHORT_NAMES = {dotted: short for short, dotted in SHORTHANDS.items()}

STUDY_KEYS = ("base", "config", "grid", "include", "exclude", "prune", "bench", "slurm")
STUDY_PREFIX = "study."


@dataclass
class PruneSettings:
    """What is kept on disk once a cell is finished."""

    keep_last: bool = False


@dataclass
class BenchSettings:
    """Where and how the deployed model of every cell is timed (``batches: []`` skips timing)."""

    device: str = "cpu"
    batches: tuple[int, ...] = (1, 8)
    threads: int | None = None
    min_run_time: float = 1.0


@dataclass
class SlurmSettings:
    """submitit's SLURM parameters for ``--launcher slurm`` (one array task per cell)."""

    partition: str | None = None
    gpus_per_node: int = 1
    cpus_per_task: int = 8
    mem_gb: int | None = None
    timeout_min: int = 2880
    array_parallelism: int = 32
    extra: dict[str, str] = field(default_factory=dict)


_SETTINGS_CHECKS: dict[str, tuple[Any, str]] = {
    "bench.device": (lambda v: re.fullmatch(r"cpu|cuda(:\d+)?", v) is not None, "cpu, cuda or cuda:N"),
    "bench.batches": (lambda v: all(b >= 1 for b in v), "a list of batch sizes >= 1 (empty: no timing)"),
    "bench.threads": (lambda v: v is None or v >= 1, "an integer >= 1 or null (torch's current setting)"),
    "bench.min_run_time": (lambda v: 0 < v < float("inf"), "a finite number of seconds > 0"),
    "slurm.gpus_per_node": (lambda v: v >= 0, "an integer >= 0"),
    "slurm.cpus_per_task": (lambda v: v >= 1, "an integer >= 1"),
    "slurm.mem_gb": (lambda v: v is None or v >= 1, "an integer >= 1 or null"),
    "slurm.timeout_min": (lambda v: v >= 1, "an integer >= 1"),
    "slurm.array_parallelism": (lambda v: v >= 1, "an integer >= 1"),
}


@dataclass
class Cell:
    """One run of the study: its grid values (dotted keys), its id and its validated config."""

    id: str
    values: dict[str, Any]
    config: Config

    @property
    def dense(self) -> bool:
        return not self.config.sparsity.enabled


@dataclass
class StudySpec:
    """A parsed study file; ``base`` is the run config mapping every cell starts from."""

    base: dict[str, Any]
    grid: dict[str, list[Any]]
    include: list[dict[str, Any]] = field(default_factory=list)
    exclude: list[dict[str, Any]] = field(default_factory=list)
    prune: PruneSettings = field(default_factory=PruneSettings)
    bench: BenchSettings = field(default_factory=BenchSettings)
    slurm: SlurmSettings = field(default_factory=SlurmSettings)
    source: str = "<study>"

    def to_dict(self) -> dict[str, Any]:
        """The resolved study (base inlined, values typed) as plain data: what ``study.yaml`` holds."""
        return {
            "base": copy.deepcopy(self.base),
            "grid": {_short(k): [plain(v) for v in values] for k, values in self.grid.items()},
            "include": [{_short(k): plain(v) for k, v in entry.items()} for entry in self.include],
            "exclude": [{_short(k): plain(v) for k, v in entry.items()} for entry in self.exclude],
            "prune": plain(dataclasses.asdict(self.prune)),
            "bench": plain(dataclasses.asdict(self.bench)),
            "slurm": plain(dataclasses.asdict(self.slurm)),
        }


def _short(key: str) -> str:
    return _SHORT_NAMES.get(key, key)


def _dotted(key: Any, where: str) -> str:
    if not isinstance(key, str) or not key.strip():
        raise ConfigError(f"{where}: expected a dotted config key such as sparsity.lam, got {key!r}")
    return SHORTHANDS.get(key, key)


def _field_type(key: str, where: str) -> Any:
    """The annotated type of a dotted run-config key (a ConfigError naming it if there is none)."""
    cls: Any = Config
    parts = key.split(".")
    for depth, part in enumerate(parts):
        names = [f.name for f in dataclasses.fields(cls)]
        if part not in names:
            section = ".".join(parts[:depth])
            under = f" under {section!r}" if section else ""
            raise ConfigError(f"{where}: unknown config key {key!r}; allowed keys{under}: {', '.join(names)}")
        tp = get_type_hints(cls)[part]
        if depth < len(parts) - 1:
            section = section_type(tp)
            if section is None:
                raise ConfigError(f"{where}: {'.'.join(parts[: depth + 1])!r} is a value, not a section")
            cls = section
    if section_type(tp) is not None:
        raise ConfigError(f"{where}: {key!r} is a section; vary one of its keys, e.g. {key}.{names[0]}")
    return tp


def _typed(key: str, value: Any, where: str) -> Any:
    """``value`` converted to the key's type, as plain data (``1e-5`` read by YAML as text becomes a float)."""
    tp = _field_type(key, where)
    try:
        return plain(convert_value(value, tp, key))
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _mapping(value: Any, where: str, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected {what}, got {value!r}")
    return value


def _settings(cls: type, section: str, raw: Any, where: str) -> Any:
    """A settings dataclass from the mapping under ``section`` (unknown keys, bad types: one line)."""
    values = _mapping(raw, f"{where}: {section!r}", "a mapping of settings")
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in values if k not in names]
    if unknown:
        raise ConfigError(
            f"{where}: unknown study key '{section}.{unknown[0]}'; allowed under {section!r}: {', '.join(names)}"
        )
    hints = get_type_hints(cls)
    kwargs = {}
    for name, value in values.items():
        key = f"{section}.{name}"
        if name == "extra":  # passed to SLURM as is
            kwargs[name] = dict(_mapping(value, f"{where}: study key {key!r}", "a mapping of sbatch options"))
            continue
        try:
            converted = convert_value(value, hints[name], key)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {str(exc).replace('config key', 'study key', 1)}") from None
        check = _SETTINGS_CHECKS.get(key)
        if check is not None and not check[0](converted):
            raise ConfigError(f"{where}: study key {key!r}: expected {check[1]}, got {value!r}")
        kwargs[name] = converted
    return cls(**kwargs)


def _read_base(raw: dict[str, Any], folder: Path, where: str) -> dict[str, Any]:
    """``base`` (a config file relative to the study file, or an inline mapping) with ``config`` merged over it."""
    if "base" not in raw:
        raise ConfigError(
            f"{where}: 'base' is missing: expected a run config file (relative to the study file) "
            "or a mapping of run settings"
        )
    base = raw["base"]
    if isinstance(base, str):
        try:
            values = read_config_file(folder / base)
        except ConfigError as exc:
            raise ConfigError(f"{where}: base: {exc}") from None
    elif isinstance(base, dict):
        values = copy.deepcopy(base)
    else:
        raise ConfigError(f"{where}: 'base': expected a config file name or a mapping of settings, got {base!r}")
    return merge_config(values, _mapping(raw.get("config"), f"{where}: 'config'", "a mapping of run settings"))


def _grid(raw: Any, where: str) -> dict[str, list[Any]]:
    grid: dict[str, list[Any]] = {}
    for key, values in _mapping(raw, f"{where}: 'grid'", "a mapping of config keys to lists of values").items():
        dotted = _dotted(key, f"{where}: grid")
        if dotted in grid:
            raise ConfigError(f"{where}: grid key {key!r} is given twice (also as {_short(dotted)!r})")
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}: grid key {key!r}: expected a non-empty list of values, got {values!r}")
        typed = [_typed(dotted, v, f"{where}: grid key {key!r}") for v in values]
        if len({_label(v) for v in typed}) != len(typed):
            raise ConfigError(f"{where}: grid key {key!r}: values must be distinct, got {values!r}")
        grid[dotted] = typed
    return grid


def _entries(raw: Any, section: str, where: str) -> list[dict[str, Any]]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise ConfigError(f"{where}: {section!r}: expected a list of {{key: value}} mappings, got {raw!r}")
    entries = []
    for number, entry in enumerate(raw, 1):
        here = f"{where}: {section} entry {number}"
        if not isinstance(entry, dict) or not entry:
            raise ConfigError(f"{here}: expected a non-empty mapping of config keys to values, got {entry!r}")
        entries.append({_dotted(k, here): _typed(_dotted(k, here), v, f"{here}, key {k!r}") for k, v in entry.items()})
    return entries


def study_from_dict(raw: Any, folder: Path, source: str, overrides: list[str] | None = None) -> StudySpec:
    """Validate a study mapping; ``folder`` resolves a ``base`` file name, ``source`` names the
    study in errors. Overrides ``study.<key>=value`` change the study itself (``study.grid.seed=[0]``,
    ``study.bench.device=cuda``), any other ``key=value`` the base run config."""
    where = f"study file {source!r}"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping with keys {', '.join(STUDY_KEYS)}")
    overrides = list(overrides or [])
    study_overrides = [o[len(STUDY_PREFIX) :] for o in overrides if o.startswith(STUDY_PREFIX)]
    run_overrides = [o for o in overrides if not o.startswith(STUDY_PREFIX)]
    raw = apply_overrides(raw, study_overrides)
    unknown = [k for k in raw if k not in STUDY_KEYS]
    if unknown:
        raise ConfigError(f"{where}: unknown study key {unknown[0]!r}; allowed: {', '.join(STUDY_KEYS)}")
    spec = StudySpec(
        base=apply_overrides(_read_base(raw, folder, where), run_overrides),
        grid=_grid(raw.get("grid"), where),
        include=_entries(raw.get("include"), "include", where),
        exclude=_entries(raw.get("exclude"), "exclude", where),
        prune=_settings(PruneSettings, "prune", raw.get("prune"), where),
        bench=_settings(BenchSettings, "bench", raw.get("bench"), where),
        slurm=_settings(SlurmSettings, "slurm", raw.get("slurm"), where),
        source=source,
    )
    for number, entry in enumerate(spec.exclude, 1):
        stray = [k for k in entry if k not in spec.grid]
        if stray:
            raise ConfigError(
                f"{where}: exclude entry {number}: {_short(stray[0])!r} is not a grid key "
                f"(grid keys: {', '.join(_short(k) for k in spec.grid) or 'none'})"
            )
    expand(spec)  # every cell's config is validated now, not when its turn comes
    return spec


def load_study(path: str | Path, overrides: list[str] | None = None) -> StudySpec:
    """Read and validate a study YAML file (see :func:`study_from_dict`)."""
    path = Path(path)
    raw = read_yaml(path, "study file")
    return study_from_dict(raw, path.parent, str(path), overrides)


# ---------------------------------------------------------------------------------------- cells
def _label(value: Any) -> str:
    """A short, filesystem-safe text for one value (lists joined with ``+``, floats as ``repr``)."""
    if isinstance(value, list):
        return "+".join(_label(v) for v in value)
    if isinstance(value, dict):
        return "+".join(f"{k}-{_label(v)}" for k, v in value.items())
    if isinstance(value, float):
        text = repr(value)
        return text[:-2] if text.endswith(".0") else text
    return re.sub(r"[^A-Za-z0-9._+-]", "-", str(value))


def cell_id(values: dict[str, Any]) -> str:
    """``tasks=segmentation+depth__lam=1e-05__seed=0``: deterministic, readable, a valid folder name."""
    return "__".join(f"{_short(k)}={_label(v)}" for k, v in values.items())


def _set(values: dict[str, Any], dotted: str, value: Any) -> None:
    node = values
    for part in dotted.split(".")[:-1]:
        node = node.setdefault(part, {})
    node[dotted.split(".")[-1]] = copy.deepcopy(value)


def cell_config(base: dict[str, Any], values: dict[str, Any]) -> Config:
    """The base config with the cell's values; ``sparsity.lam`` 0 makes the cell dense (penalty none)."""
    merged = copy.deepcopy(base)
    for key, value in values.items():
        _set(merged, key, value)
    if values.get("sparsity.lam") == 0:
        _set(merged, "sparsity.penalty", "none")
    return config_from_dict(merged)


def _matches(values: dict[str, Any], partial: dict[str, Any]) -> bool:
    return all(key in values and values[key] == value for key, value in partial.items())


def expand(spec: StudySpec) -> list[Cell]:
    """Cells in grid order: the cross product (first key slowest), minus ``exclude`` matches, plus
    ``include`` entries not already present. Every cell's config is validated here."""
    keys = list(spec.grid)
    combos = [dict(zip(keys, combo)) for combo in itertools.product(*spec.grid.values())] if keys else []
    combos = [v for v in combos if not any(_matches(v, partial) for partial in spec.exclude)]
    for entry in spec.include:
        ordered = {k: entry[k] for k in keys if k in entry} | {k: v for k, v in entry.items() if k not in keys}
        if ordered not in combos:
            combos.append(ordered)
    if not combos:
        raise ConfigError(f"study file {spec.source!r}: the study has no cells (empty grid, or all excluded)")
    cells, seen = [], set()
    for values in combos:
        ident = cell_id(values)
        if ident in seen:
            raise ConfigError(f"study file {spec.source!r}: two cells have the same id {ident!r}")
        seen.add(ident)
        try:
            config = cell_config(spec.base, values)
        except ConfigError as exc:
            raise ConfigError(f"study file {spec.source!r}, cell {ident}: {exc}") from None
        cells.append(Cell(ident, values, config))
    return cells
