"""One registry per plug-in point (approaches, codecs, executors): names in, objects out.

Each plug-in registers once, by name; every list of choices (the CLI's, the flows' parameter types,
the settings' validation) is derived from the registry, and an unknown name is an error, never a
fallback. Installed distributions add plug-ins through the entry-point group `mmstore.<kind>`,
imported only when one of their names is asked for.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from importlib.metadata import entry_points
from typing import Generic, TypeVar

from .errors import MMStoreError, UnknownPluginError

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(Generic[T]):
    """Named plug-ins of one kind; `kind` appears in errors, `group` is the entry-point group."""

    def __init__(self, kind: str, group: str, error: type[UnknownPluginError] = UnknownPluginError):
        self.kind, self.group, self.error = kind, group, error
        self._items: dict[str, T] = {}

    def register(self, name: str, item: T) -> T:
        """Add `item` under `name`; registering another object under a taken name is refused."""
        present = self._items.get(name)
        if present is not None and present is not item:
            raise MMStoreError(f"{self.kind} {name!r} is registered twice; give the second one another name")
        self._items[name] = item
        return item

    def decorator(self, name: str) -> Callable[[T], T]:
        """`@registry.decorator("name")` registers what it decorates."""
        return lambda item: self.register(name, item)

    def get(self, name: str) -> T:
        """The plug-in called `name`, or the registry's error naming the known ones."""
        if isinstance(name, str) and name not in self._items:
            point = self._entry_points().get(name)
            if point is not None:
                self.register(name, point.load())
        try:
            return self._items[name]
        except (KeyError, TypeError):
            raise self.error(
                f"unknown {self.kind} {str(name)[:80]!r}; known: {', '.join(self.names())}. "
                "A newer mmstore or a plug-in package may provide it"
            ) from None

    def names(self) -> tuple[str, ...]:
        """Every name registered or offered by an installed package (without importing it), sorted."""
        return tuple(sorted({*self._items, *self._entry_points()}))

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self.names()

    def _entry_points(self) -> dict:
        return _installed(self.group)


@lru_cache(maxsize=None)
def _installed(group: str) -> dict:
    # Scanning installed distributions costs ~10 ms; what is installed does not change while a process runs.
    return {point.name: point for point in entry_points(group=group)}
