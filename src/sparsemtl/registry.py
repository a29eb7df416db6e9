"""A small name -> object registry, so every pluggable concept has one lookup and one error."""

from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to objects (classes, factories, task definitions), in one style for every
    pluggable axis (as timm users know it): ``@REG.register("name")`` on the class or factory,
    ``REG.names()`` to list, ``REG.create("name", ...)`` to build.

    Lookups of unknown names raise a ``KeyError`` whose message lists what is available,
    so a typo in a config produces an actionable one-line error.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str, obj: T | None = None) -> Callable[[T], T] | T:
        """Register ``obj`` under ``name``; usable directly or as a decorator."""

        def add(item: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = item
            return item

        return add(obj) if obj is not None else add

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise KeyError(f"unknown {self.kind} {name!r}; available: {', '.join(sorted(self._items))}") from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def create(self, name: str, *args, **kwargs):
        """Build the entry ``name`` (a class or factory) with the given arguments."""
        return self.get(name)(*args, **kwargs)

    def describe(self, name: str) -> str:
        """One line about the entry (what ``sparsemtl list`` prints): its ``summary`` when it has
        one, else the first sentence of its docstring."""
        entry = self.get(name)
        summary = getattr(entry, "summary", None)
        if isinstance(summary, str):
            return summary
        paragraph = " ".join((getattr(entry, "__doc__", None) or "").strip().split("\n\n")[0].split())
        return paragraph.split(". ")[0].rstrip(".")

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))
