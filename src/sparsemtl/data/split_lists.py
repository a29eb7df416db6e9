"""Split lists (text files with one sample id per line): every id once, every sample in one split.

A repeated id used to put one sample in both train and the carved validation split, and an id in
two official lists leaks test data into training; both are dataset-level errors, never skipped.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from ..errors import DataError, one_line


def read_ids(path: Path) -> dict[str, int]:
    """``{id: 1-based line number}`` in file order (blank lines ignored); DataError if the file is
    missing or unreadable or an id is listed twice."""
    if not path.is_file():
        raise DataError(f"{path}: missing split file")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: unreadable split file ({one_line(exc)})") from None
    ids: dict[str, int] = {}
    for lineno, line in enumerate(text.splitlines(), start=1):
        sample_id = line.strip()
        if not sample_id:
            continue
        if sample_id in ids:
            raise DataError(
                f"{path}:{lineno}: id {sample_id!r} is listed twice (first on line {ids[sample_id]}); "
                "expected each id once"
            )
        ids[sample_id] = lineno
    return ids


def check_disjoint(lists: Mapping[Path, Mapping[str, int]]) -> None:
    """DataError naming the file and line of the first id that is in two of ``lists`` (as read by
    :func:`read_ids`, in split order)."""
    seen: dict[str, tuple[Path, int]] = {}
    for path, ids in lists.items():
        for sample_id, lineno in ids.items():
            if sample_id in seen:
                first, first_line = seen[sample_id]
                raise DataError(
                    f"{path}:{lineno}: id {sample_id!r} is also in {first} (line {first_line}); "
                    "a sample must be in one split only"
                )
        seen.update({sample_id: (path, lineno) for sample_id, lineno in ids.items()})


def split_ids(lists: Mapping[str, Path], split: str) -> list[str]:
    """The ids of ``split`` from the split lists ``{split name: file}``. DataError if its file is
    missing or empty, if a list repeats an id, or if two lists share one; the lists of other splits
    are read when present (a partial copy may lack them)."""
    read = {path: read_ids(path) for name, path in lists.items() if name == split or path.is_file()}
    check_disjoint(read)
    ids = list(read[lists[split]])
    if not ids:
        raise DataError(f"{lists[split]}: empty split file; expected one sample id per line")
    return ids
