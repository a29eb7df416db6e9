"""Pre-flight data check: one fast pass over every file of the splits a run uses, before epoch 1.

Without it, a corrupt test image surfaced only after the last epoch. An empty split gave NaN
metrics, and a 13-class tree read with 40 classes or depth stored in millimetres trained without a
word. :func:`check_data` finds these problems in seconds. Images are verified, not decoded; labels,
depth and normals are read once.

Each file-based dataset checks its own samples (``check_sample``) and judges its split as a whole
(``split_problems``): see :class:`CheckableDataset`. The procedural datasets have nothing on disk,
so their check only reports the split sizes.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol, runtime_checkable

from ..config import DataConfig
from ..errors import DataError, one_line
from . import SPLITS, build_dataset
from .sample_check import SampleFacts
from .samples import keep_loadable

SUMMARY_BAD_LINES = 5
"""Bad samples listed by :meth:`DataCheckReport.summary`; all of them are in :meth:`DataCheckReport.to_dict`."""


@runtime_checkable
class CheckableDataset(Protocol):
    """A dataset read from files, as :func:`check_data` needs it."""

    split: str
    sample_ids: list[str]

    def check_sample(self, sample_id: str, facts: SampleFacts | None = None) -> SampleFacts:
        """Check one sample's files, record facts; DataError naming the bad file (the last of ``facts.files``)."""
        ...

    def split_problems(self, facts: list[SampleFacts]) -> list[str]:
        """Dataset-level problems (one line each) judged on the facts of every sample of the split."""
        ...


class BadSample(NamedTuple):
    """A sample whose files fail the check: the loaders skip it with ``data.skip_bad_samples``."""

    split: str
    sample_id: str
    file: str
    reason: str


@dataclass
class SplitCheck:
    """One split: ``samples`` listed, ``checked`` of them checked on disk, ``files`` read."""

    samples: int
    checked: int
    files: int
    seconds: float
    bad: list[BadSample] = field(default_factory=list)


@dataclass
class DataCheckReport:
    """What :func:`check_data` found. ``errors`` are dataset-level problems (a bad split list, the
    wrong class count or depth unit, a split left empty) and always fail; ``bad`` samples fail
    unless ``skip_bad_samples``, in which case the loaders drop them."""

    dataset: str
    root: str | None
    skip_bad_samples: bool
    splits: dict[str, SplitCheck] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    @property
    def bad_samples(self) -> list[BadSample]:
        return [bad for split in self.splits.values() for bad in split.bad]

    @property
    def seconds(self) -> float:
        return sum(split.seconds for split in self.splits.values())

    def problems(self) -> list[str]:
        """Every problem that fails the check, dataset-level first."""
        return self.errors + ([] if self.skip_bad_samples else [bad.reason for bad in self.bad_samples])

    @property
    def ok(self) -> bool:
        return not self.problems()

    def failure(self) -> str | None:
        """One line: the first problem, and how many more; None when the check passed."""
        problems = self.problems()
        if not problems:
            return None
        return problems[0] + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else "")

    def summary(self) -> str:
        """A few human lines: verdict, one line per split, the dataset-level errors and the first bad samples."""
        bad = self.bad_samples
        verdict = "FAILED" if not self.ok else f"OK, {len(bad)} bad sample(s) skipped" if bad else "OK"
        where = f" at {self.root}" if self.root else ""
        lines = [f"data check of {self.dataset}{where}: {verdict} ({self.seconds:.1f} s)"]
        for name, split in self.splits.items():
            if split.checked or split.bad:
                what = f"{split.checked} checked ({split.files} files), {len(split.bad)} bad"
            else:
                what = "generated in memory, nothing on disk to check" if split.samples else "not read"
            lines.append(f"  {name}: {split.samples} samples, {what} ({split.seconds:.1f} s)")
        lines += [f"  error: {error}" for error in self.errors]
        lines += [f"  bad {b.split}/{b.sample_id}: {b.reason}" for b in bad[:SUMMARY_BAD_LINES]]
        if len(bad) > SUMMARY_BAD_LINES:
            lines.append(f"  ... and {len(bad) - SUMMARY_BAD_LINES} more bad samples (see data_check.json)")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: written to the run directory as ``data_check.json``."""
        return {
            "dataset": self.dataset,
            "root": self.root,
            "ok": self.ok,
            "skip_bad_samples": self.skip_bad_samples,
            "seconds": round(self.seconds, 3),
            "splits": {
                name: {**dataclasses.asdict(split), "seconds": round(split.seconds, 3), "bad": len(split.bad)}
                for name, split in self.splits.items()
            },
            "errors": list(self.errors),
            "bad_samples": [bad._asdict() for bad in self.bad_samples],
        }


def check_data(
    cfg: DataConfig, tasks: Sequence[str], splits: Sequence[str] = SPLITS, *, raise_errors: bool = True
) -> DataCheckReport:
    """Check every file of ``splits`` that training on ``tasks`` would read.

    Raises DataError (one line: the first problem and how many more) unless the check passes; with
    ``raise_errors=False`` the report is returned either way (for a ``check-data`` command). With
    ``data.skip_bad_samples`` bad samples only fail a split they would leave empty; the loaders drop
    the same ones, by the same per-sample check. Config errors (unknown task, no ``data.root``)
    raise ConfigError at once.
    """
    probe = dataclasses.replace(cfg, skip_bad_samples=False, cache=False)  # list the samples, load nothing
    report = DataCheckReport(cfg.name, cfg.root, cfg.skip_bad_samples)
    for split in splits:
        report.splits[split] = _check_split(probe, split, tasks, report.errors, cfg.skip_bad_samples)
    if raise_errors and not report.ok:
        raise DataError(report.failure())
    return report


def _check_split(cfg: DataConfig, split: str, tasks: Sequence[str], errors: list[str], skipping: bool) -> SplitCheck:
    """Check one split; dataset-level problems go to ``errors`` once each (every split reads the same
    split lists), and with ``skipping`` also a split that dropping its bad samples would leave empty."""
    start = time.perf_counter()
    try:
        dataset = build_dataset(cfg, split, tasks)
    except DataError as exc:
        _add_new(errors, [one_line(exc)])
        return SplitCheck(0, 0, 0, time.perf_counter() - start)
    if not isinstance(dataset, CheckableDataset):
        return SplitCheck(len(dataset), 0, 0, time.perf_counter() - start)
    facts = {sample_id: SampleFacts() for sample_id in dataset.sample_ids}
    good, skipped = keep_loadable(
        dataset.sample_ids, lambda sample_id: dataset.check_sample(sample_id, facts[sample_id])
    )
    bad = [BadSample(split, sample_id, str(facts[sample_id].files[-1]), reason) for sample_id, reason in skipped]
    problems = dataset.split_problems(list(facts.values()))
    if skipping and not good and not problems:
        problems.append(
            f"{bad[0].reason}; every sample of the {split} split is bad, skipping them would leave it empty"
        )
    _add_new(errors, problems)
    files = sum(len(f.files) for f in facts.values())
    return SplitCheck(len(facts), len(facts), files, time.perf_counter() - start, bad)


def _add_new(errors: list[str], problems: list[str]) -> None:
    errors += [problem for problem in problems if problem not in errors]
