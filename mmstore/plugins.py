"""The plug-in points of mmstore, one registry each: approaches, codecs, replay executors, trust.

Built-in approaches and codecs register when their modules are imported; executors (a factory
`make(store, set_id) -> Executor` per name) and the packages an installed distribution vouches for
come from entry points, so this module imports nothing heavy.
"""

from __future__ import annotations

from functools import lru_cache
from importlib.metadata import entry_points
from typing import Any

from .errors import UnknownApproachError, UnknownCodecError, UnknownExecutorError
from .registry import Registry

__all__ = ["APPROACHES", "CODECS", "EXECUTORS", "installed_trusted_modules"]

APPROACHES: Registry[Any] = Registry("approach", "mmstore.approaches", UnknownApproachError)
CODECS: Registry[Any] = Registry("codec", "mmstore.codecs", UnknownCodecError)
EXECUTORS: Registry[Any] = Registry("replay executor", "mmstore.executors", UnknownExecutorError)


@lru_cache(maxsize=1)
def installed_trusted_modules() -> tuple[str, ...]:
    """Packages that installed distributions vouch for (entry-point group `mmstore.trusted_modules`)."""
    return tuple(sorted(point.value for point in entry_points(group="mmstore.trusted_modules")))
