"""A name-keyed registry of components (models, estimators, solvers, profiles).

Lookups by an unknown name raise `UnknownComponentError` listing the valid names; a
component whose optional dependency is missing raises `MissingDependencyError` naming the
extra to install.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

from engine._errors import MissingDependencyError, UnknownComponentError

T = TypeVar("T")


def _always() -> bool:
    return True


@dataclass(frozen=True)
class Entry(Generic[T]):
    """One registered component."""

    name: str
    target: T
    available: Callable[[], bool] = _always
    extra: str | None = None
    description: str = ""


class Registry(Generic[T]):
    """Components of one kind, looked up by name.

    Args:
        kind: What the components are ("model", "solver", ...), used in messages.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}

    def register(
        self,
        name: str,
        target: T,
        *,
        available: Callable[[], bool] = _always,
        extra: str | None = None,
        description: str = "",
    ) -> T:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered.")
        self._entries[name] = Entry(name, target, available, extra, description)
        return target

    def entry(self, name: str) -> Entry[T]:
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownComponentError(
                f"unknown {self.kind} {name!r}; choose one of: {', '.join(self.names())}."
            ) from None

    def get(self, name: str) -> T:
        """The component registered as `name`, checking its optional dependencies."""
        e = self.entry(name)
        if not e.available():
            hint = (f" (install the `{e.extra}` extra: pip install 'allocator[{e.extra}]')"
                    if e.extra else "")
            raise MissingDependencyError(f"{self.kind} {name!r} is not available here{hint}.")
        return e.target

    def names(self, *, only_available: bool = False) -> list[str]:
        return [n for n, e in self._entries.items() if not only_available or e.available()]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[Entry[T]]:
        return iter(list(self._entries.values()))
