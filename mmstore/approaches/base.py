"""The protocol every approach implements, what a store offers to it, and how a recovery is run."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import numpy as np

from ..blobs import BlobRef, BlobStore
from ..errors import MMStoreError, NotFoundError
from ..manifest import ApproachDocument, ArchDocument, Manifest
from ..modelset import ModelSet
from ..settings import Settings

__all__ = ["Approach", "StoreAccess", "Encoded", "RecoveryContext", "recovery_context", "check_indices"]


@dataclass(frozen=True)
class Encoded:
    """What an approach wrote for one set: its typed document (naming the blobs it wrote)."""

    document: ApproachDocument


@dataclass(frozen=True)
class RecoveryContext:
    """How to recover, shared by recover, verify and export: the models wanted and replay options.

    `executor` is a registered executor's name or an executor object (provenance replays only;
    None: the settings' `replay_executor`); `force` replays even where the trainer's source changed;
    `dataset_options` go to fsspec when datasets are read.
    """

    models: Sequence[int] | None = None
    executor: Any = None
    force: bool = False
    dataset_options: Mapping[str, Any] = field(default_factory=dict)

    def subset(self, models: Sequence[int] | None) -> "RecoveryContext":
        """The same options for other models."""
        return RecoveryContext(models, self.executor, self.force, self.dataset_options)


class StoreAccess(Protocol):
    """The parts of a store an approach may use."""

    url: str
    blobs: BlobStore
    settings: Settings

    def manifest(self, set_id: str) -> Manifest:
        """The verified, parsed manifest of a set."""

    def base_of(self, manifest: Manifest) -> Manifest:
        """The manifest of a set's base, checked to hold as many models of the same layout."""

    def arch_document(self, manifest: Manifest) -> ArchDocument:
        """The verified architecture and layout of a set, checked against its manifest."""

    def cached_rows(self, set_id: str) -> np.ndarray | None:
        """A recently materialised set's rows, if at hand."""

    def remember(self, set_id: str, rows: np.ndarray) -> None:
        """Keep a copy of a set's rows at hand for later versions."""

    def recover_rows(self, set_id: str, context: RecoveryContext | None = None) -> np.ndarray:
        """The (n, row) bytes of a stored set, or of the context's model indices."""


class Approach(Protocol):
    """A way to store a model set; `save` writes blobs, `recover` rebuilds the rows."""

    name: ClassVar[str]
    document: ClassVar[Any]  # the pydantic model (or TypeAdapter) that parses its part of a manifest

    def save(self, model_set: ModelSet, base: Manifest | None, store: StoreAccess, **options: Any) -> Encoded:
        """Write what is needed to recover `model_set` (given its base, if any)."""

    def recover(self, manifest: Manifest, store: StoreAccess, models: np.ndarray | None,
                context: RecoveryContext) -> np.ndarray:
        """The (n, row) bytes of the set, or only of the rows in `models`."""


def recovery_context(context: RecoveryContext | None, models: Sequence[int] | None, options: dict[str, Any]) -> RecoveryContext:
    """One recovery context from an explicit one, or from a subset and keyword options (not both)."""
    if context is not None and options:
        raise MMStoreError(f"pass either context= or the options {sorted(options)}, not both")
    context = context or RecoveryContext(**options)
    return context if models is None else context.subset(models)


def check_indices(models: Sequence[int], n: int) -> np.ndarray:
    """Model indices as int64 in [0, n), negative ones counted from the end; NotFoundError for anything else."""
    try:
        given = np.asarray(models)
    except (TypeError, ValueError):
        given = np.asarray([None])
    if given.size and given.dtype.kind not in "iu":  # 1.7, True and "3" are not model numbers
        raise NotFoundError(f"model indices must be integers in [0, {n}); got {str(models)[:80]}")
    try:
        picked = given.astype(np.int64).reshape(-1)
    except OverflowError:
        raise NotFoundError(f"model indices must lie in [0, {n}); got {str(models)[:80]}") from None
    if picked.size and (picked.min() < -n or picked.max() >= n):
        raise NotFoundError(f"model indices must lie in [0, {n}); got {models!r}")
    return np.where(picked < 0, picked + n, picked)
