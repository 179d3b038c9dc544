"""The approaches a store can save a set with, registered by name in `mmstore.plugins.APPROACHES`."""

from __future__ import annotations

from ..plugins import APPROACHES
from .base import Approach, Encoded, RecoveryContext, StoreAccess
from .baseline import Baseline
from .provenance import Provenance
from .update import Update

__all__ = ["Approach", "Encoded", "RecoveryContext", "StoreAccess", "get_approach", "APPROACHES"]

for _approach in (Baseline(), Update(), Provenance()):
    APPROACHES.register(_approach.name, _approach)


def get_approach(name: str) -> Approach:
    """The approach called `name` (UnknownApproachError naming the known ones otherwise)."""
    return APPROACHES.get(name)
