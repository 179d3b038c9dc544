"""The protocol every approach implements, and what a store offers to it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import numpy as np
from pydantic import JsonValue

from ..blobs import BlobRef, BlobStore
from ..manifest import ArchDocument, Manifest
from ..modelset import ModelSet
from ..settings import Settings

__all__ = ["Approach", "StoreAccess", "Encoded"]


@dataclass(frozen=True)
class Encoded:
    """What an approach wrote for one set: blob refs by role and small JSON fields."""

    blobs: dict[str, BlobRef] = field(default_factory=dict)
    extra: dict[str, JsonValue] = field(default_factory=dict)


class StoreAccess(Protocol):
    """The parts of a store an approach may use."""

    blobs: BlobStore
    settings: Settings

    def manifest(self, set_id: str) -> Manifest:
        """The verified manifest of a set."""

    def arch_document(self, manifest: Manifest) -> ArchDocument:
        """The verified architecture and layout of a set."""

    def cached_rows(self, set_id: str) -> np.ndarray | None:
        """A recently materialised set's rows, if at hand."""

    def remember(self, set_id: str, rows: np.ndarray) -> None:
        """Keep a copy of a set's rows at hand for later versions."""

    def recover_rows(self, set_id: str, models: Sequence[int] | None = None, **options: Any) -> np.ndarray:
        """The (n, row) bytes of a stored set, or of the given model indices."""


class Approach(Protocol):
    """A way to store a model set; `save` writes blobs, `recover` rebuilds the rows."""

    name: ClassVar[str]

    def save(self, model_set: ModelSet, base: Manifest | None, store: StoreAccess, **options: Any) -> Encoded:
        """Write what is needed to recover `model_set` (given its base, if any)."""

    def recover(self, manifest: Manifest, store: StoreAccess, models: np.ndarray | None, **options: Any) -> np.ndarray:
        """The (n, row) bytes of the set, or only of the rows in `models`."""
