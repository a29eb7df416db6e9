"""Checks of one sample's files that need no full decode, and the facts a whole split is judged on.

The file-based datasets' ``check_sample`` fills a :class:`SampleFacts` while it checks a sample.
Some mistakes only show in the split as a whole: a 40-class tree never stays below id 14, and a
tree in millimetres has a median depth in the thousands. So the split check (:mod:`.check`) judges
the facts of all samples with :func:`class_count_problem` and :func:`depth_scale_problem`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import DataError, one_line

DEPTH_RANGE = (0.05, 100.0)
"""Plausible median of the valid (> 0) depth of one file, in metres: NYU frames lie around 1..10 m,
while millimetres give thousands and a wrong ``data.depth_scale`` on metres gives millimetre values."""
NORMAL_FILL = 0.05
"""Normals shorter than this are fill (all-zero, or the grey 127/128 PNG fill): invalid, not wrong."""
NORMAL_TOLERANCE = 0.1
"""A non-fill normal is unit length when its length is within 1 +- this (8-bit PNGs stay within 0.01)."""
MAX_OFF_UNIT = 0.01
"""Largest fraction of non-fill normals of one file that may miss unit length."""


@dataclass
class SampleFacts:
    """What checking one sample found; the last of ``files`` is the bad file when the check raised."""

    files: list[Path] = field(default_factory=list)
    top_class: tuple[Path, int] | None = None
    """(label file, highest 0-based class id in it); None without labels or with only void."""
    depth_median: tuple[Path, float] | None = None
    """(depth file, median valid depth in metres after ``data.depth_scale``); None without valid depth."""


def verify_image(path: Path) -> tuple[int, int]:
    """(H, W) of an image file after checking that it is complete, much faster than decoding it:
    PNG chunk checksums (no decompression), JPEG decoded at 1/8 scale (which still reads the whole
    stream, so truncation shows), any other format decoded."""
    try:
        with Image.open(path) as img:
            size = (img.height, img.width)
            if img.format == "PNG":
                img.verify()
            else:
                if img.format == "JPEG":
                    img.draft(img.mode, (max(1, img.width // 8), max(1, img.height // 8)))
                img.load()
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
        raise DataError(f"{path}: corrupt or truncated image ({one_line(exc)})") from None
    return size


def _depth_message(path: Path, median: float, scale: float) -> str:
    example = "0.001 if the files hold millimetres" if median > DEPTH_RANGE[1] else "1 if the files hold metres"
    return (
        f"{path}: median depth {median:.4g} (after data.depth_scale={scale:g}) is implausible for metres; "
        f"expected {DEPTH_RANGE[0]:g}..{DEPTH_RANGE[1]:g} — set data.depth_scale to metres per stored unit, "
        f"e.g. {example}"
    )


def _plausible(median: float) -> bool:
    return DEPTH_RANGE[0] <= median <= DEPTH_RANGE[1]


def check_depth(depth: np.ndarray, path: Path, scale: float, facts: SampleFacts) -> None:
    """Record the median valid depth of ``depth`` (metres, 0 = invalid); DataError if implausible."""
    valid = depth[depth > 0]
    if valid.size == 0:
        return
    median = float(np.median(valid))
    facts.depth_median = (path, median)
    if not _plausible(median):
        raise DataError(_depth_message(path, median, scale))


def check_unit_normals(normals: np.ndarray, path: Path) -> None:
    """DataError unless the non-fill vectors of ``normals`` (H,W,3) have unit length; the loader
    would otherwise rescale e.g. 0..255 values or unconverted ``(n+1)/2`` codes without a word."""
    squared = np.einsum("...i,...i->...", normals, normals)  # squared lengths: no sqrt over the whole map
    squared = squared[squared > NORMAL_FILL**2]
    if squared.size == 0:
        return
    low, high = (1 - NORMAL_TOLERANCE) ** 2, (1 + NORMAL_TOLERANCE) ** 2
    off = float(np.mean((squared < low) | (squared > high)))
    if off > MAX_OFF_UNIT:
        raise DataError(
            f"{path}: {off:.0%} of the non-zero normals have length outside "
            f"{1 - NORMAL_TOLERANCE:g}..{1 + NORMAL_TOLERANCE:g} (median length {np.sqrt(np.median(squared)):.3g}); "
            "expected unit vectors with all-zero = invalid"
        )


def depth_scale_problem(facts: Sequence[SampleFacts], scale: float) -> str | None:
    """When most depth files of a split have an implausible median, ``data.depth_scale`` is wrong:
    one message naming the first of them; else None (a few odd files are bad samples, found by
    :func:`check_depth`)."""
    medians = [f.depth_median for f in facts if f.depth_median is not None]
    wrong = [(path, median) for path, median in medians if not _plausible(median)]
    if 2 * len(wrong) <= len(medians):
        return None
    return f"{_depth_message(*wrong[0], scale)} ({len(wrong)} of {len(medians)} depth files)"


def class_count_problem(
    folder: Path, facts: Sequence[SampleFacts], classes: int, other: int, offset: int = 0, void: int | None = None
) -> str | None:
    """A tree with ``other`` classes read with ``classes`` (the dataset's two label sets), judged on
    the highest class id of each label file; None when the ids fit ``classes``.

    Stored id = 0-based class id + ``offset``; ``void`` is the stored void id, if any. Read with more
    classes, the tree is the smaller one when no label uses an id above the smaller set. Read with
    fewer, it is the larger one when most labels use ids above the smaller set (a few stray ids are
    bad files, reported file by file).
    """
    tops = [f.top_class[1] for f in facts if f.top_class is not None]
    if not tops or classes == other:
        return None
    small = min(classes, other)
    above = [t for t in tops if small <= t < max(classes, other)]
    if (other < classes and max(tops) < small) or (other > classes and 2 * len(above) > len(tops)):
        low = offset if void is None else void
        ids = f"ids {low}..{other - 1 + offset}" + ("" if void is None else f", {void} = void")
        seen = f"{len(above)} of {len(tops)} label files use" if above else "no label file uses"
        return (
            f"{folder}: looks like a {other}-class tree ({ids}) but it is read with {classes} classes: "
            f"{seen} ids above {small - 1 + offset}; set data.classes={other}"
        )
    return None
