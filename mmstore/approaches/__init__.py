"""The approaches a store can save a set with, by name."""

from __future__ import annotations

from ..errors import MMStoreError
from .base import Approach, Encoded, StoreAccess
from .baseline import Baseline
from .provenance import Provenance
from .update import Update

__all__ = ["Approach", "Encoded", "StoreAccess", "get_approach", "APPROACHES"]

APPROACHES: dict[str, Approach] = {a.name: a for a in (Baseline(), Update(), Provenance())}


def get_approach(name: str) -> Approach:
    """The approach called `name`."""
    try:
        return APPROACHES[name]
    except KeyError:
        raise MMStoreError(f"unknown approach {name!r}; choose one of {sorted(APPROACHES)}") from None
