"""Store: save, recover, verify and inspect model sets on any backend."""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, JsonValue

from .aliases import content_of
from .approaches import RecoveryContext, get_approach
from .approaches.base import check_indices, recovery_context
from .backend import Backend, open_backend
from .commit import Committing
from .blobs import BlobRef, BlobStore
from .digest import digest_bytes
from .documents import StoreDocuments
from .lifecycle import Lifecycle
from .rebase import Rebasing
from .errors import ConflictError, FormatError, IntegrityError, MMStoreError, NotFoundError
from .manifest import LINEAGE_PATTERN, ArchDocument, Manifest
from .modelset import ModelSet
from .settings import Settings

__all__ = ["Store", "SetInfo", "RecoveryContext"]

_LINEAGE = re.compile(LINEAGE_PATTERN)
_SET_ID = re.compile(r"[0-9a-f]{64}")


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class SetInfo(BaseModel):
    """A one-line summary of a stored set."""

    model_config = ConfigDict(frozen=True)

    id: str
    approach: str
    n_models: int
    base: str | None
    lineage: str | None
    created: str
    meta: dict[str, JsonValue]


class Store(Lifecycle, Rebasing, Committing):
    """Model sets on one backend: a local directory, s3://bucket/prefix or memory://name."""

    def __init__(self, backend: Backend, settings: Settings | None = None, clock: Callable[[], str] = _utc_now):
        self.backend = backend
        self.settings = settings or Settings()
        self.blobs = BlobStore(backend, self.settings.max_set_bytes)
        self._clock = clock
        self.documents = StoreDocuments(backend, self.blobs, self.settings)
        self._materialised: OrderedDict[str, np.ndarray] = OrderedDict()
        self._materialised_lock = threading.Lock()

    @classmethod
    def open(cls, url: str, settings: Settings | None = None, **storage_options: Any) -> "Store":
        """The store at `url` (created by its first save; nothing is written before); options go to fsspec."""
        settings = settings or Settings()
        return cls(open_backend(str(url), settings.durable, **storage_options), settings)

    @property
    def url(self) -> str:
        """Where the store lives."""
        return self.backend.url

    # -- writing ---------------------------------------------------------------------------------

    def save(
        self,
        model_set: ModelSet,
        approach: str = "baseline",
        base: str | None = None,
        lineage: str | None = None,
        meta: dict[str, JsonValue] | None = None,
        if_head: str | None = None,
        **options: Any,
    ) -> str:
        """Store `model_set` and return its id; with `lineage`, move that name to the new set.

        With a lineage and no base, the set derives from the lineage's newest set; `approach="auto"`
        lets the cost model choose (`mmstore.costmodel`). With `if_head`,
        the lineage moves only from that set (else ConflictError). Blobs are written first and the
        manifest last: the manifest write is the commit. `options` go to the approach (the
        provenance approach takes `provenance=`).
        """
        head = self._lineage_head(lineage)
        if if_head is not None and head != if_head:
            raise ConflictError(f"lineage {lineage!r} no longer points at {if_head[:12]}; read it again and retry")
        base_id = self.resolve(base) if base else head
        with self.blobs.journal() as written:
            manifest = self._encode(model_set, approach, base_id, lineage, meta, options)
            self._write_manifests([manifest], written)
        if lineage:
            self._move_lineage(lineage, head, manifest.id)
        return manifest.id

    def _lineage_head(self, lineage: str | None, read: bool = True) -> str | None:
        if lineage is None:
            return None
        if not isinstance(lineage, str) or not _LINEAGE.fullmatch(lineage):
            raise MMStoreError(
                f"lineage name {str(lineage)[:80]!r} is invalid; use up to 128 letters, digits, '.', '_' and '-', "
                "starting with a letter or digit, not ending in '.lock' and without '.tmp-'"
            )
        return self.documents.ref(lineage) if read else None

    def _move_lineage(self, lineage: str, head: str | None, set_id: str) -> None:
        try:
            self.backend.swap(f"refs/{lineage}", head.encode() if head else None, set_id.encode())
        except ConflictError as exc:
            raise ConflictError(
                f"set {set_id} was saved, but lineage {lineage!r} was moved by another writer meanwhile; "
                f"inspect `mmstore log {lineage}` and save again on top of its new head"
            ) from exc

    # -- reading ---------------------------------------------------------------------------------

    def resolve(self, ref: str) -> str:
        """The full set id for a full id, a unique id prefix, or a lineage name."""
        self.documents.require()
        if not isinstance(ref, str) or not ref:
            raise NotFoundError(f"{str(ref)[:80]!r} names no set; give a set id, a unique id prefix or a lineage")
        head = self.documents.ref(ref) if _LINEAGE.fullmatch(ref) else None
        if head:
            return self.documents.current(head).id
        if _SET_ID.fullmatch(ref):  # a whole id: its manifest, or the alias of a re-based set, answers without a listing
            try:
                return self.documents.current(ref).id
            except NotFoundError:
                raise NotFoundError(f"no set or lineage {ref!r} in {self.url}; list them with `mmstore ls`") from None
        matches = [name for name in self.documents.set_ids() if name.startswith(ref)]
        if not matches:  # the id a set had before it was re-based
            aliased = [name for name in self.documents.aliases.names() if name.startswith(ref)]
            matches = sorted({self.documents.current(name).id for name in aliased})
        if len(matches) == 1:
            return matches[0]
        if not matches:
            raise NotFoundError(f"no set or lineage {ref!r} in {self.url}; list them with `mmstore ls`")
        raise NotFoundError(f"{ref!r} is ambiguous ({len(matches)} sets start with it); give more characters")

    def manifest(self, set_id: str) -> Manifest:
        """The verified, parsed manifest of a set."""
        return self.documents.manifest(set_id)

    def base_of(self, manifest: Manifest) -> Manifest:
        """The manifest of a set's base, checked to hold as many models of the same layout."""
        return self.documents.base_of(manifest)

    def arch_document(self, manifest: Manifest) -> ArchDocument:
        """The verified architecture and layout a manifest names, checked against the manifest's sizes."""
        return self.documents.arch_document(manifest)

    def cached_rows(self, set_id: str) -> np.ndarray | None:
        """A recently materialised set's rows, if this store still holds them (do not modify)."""
        with self._materialised_lock:
            rows = self._materialised.get(set_id)
            if rows is not None:
                self._materialised.move_to_end(set_id)
            return rows

    def remember(self, set_id: str, rows: np.ndarray, copy: bool = True) -> None:
        """Keep a private copy of a set's rows (or, with `copy=False`, rows nobody modifies), evicting beyond the limit.

        Read-only rows that own their memory are kept as they are: nobody can modify them.
        """
        if self.settings.cache_sets:
            rows = rows.copy() if copy and (rows.flags.writeable or rows.base is not None) else rows
            with self._materialised_lock:
                self._materialised[set_id] = rows
                while len(self._materialised) > self.settings.cache_sets:
                    self._materialised.popitem(last=False)

    def forget(self, set_id: str) -> None:
        """Drop a set's rows from those kept at hand."""
        with self._materialised_lock:
            self._materialised.pop(set_id, None)

    def keep(self, set_id: str, model_set: ModelSet) -> None:
        """Hold a set the caller has in memory (checked against its content digest) for deltas against it."""
        set_id = self.resolve(set_id)
        manifest = self.manifest(set_id)
        if len(model_set) != manifest.n_models or digest_bytes(model_set.data) != content_of(manifest):
            raise IntegrityError(f"the models given are not the content of set {set_id[:12]}; pass that set's models")
        self.remember(set_id, model_set.data)

    def recover_rows(self, set_id: str, context: RecoveryContext | None = None) -> np.ndarray:
        """The (n, row) bytes of a set, or only of the context's model indices."""
        context = context or RecoveryContext()
        manifest = self.manifest(set_id)
        self.arch_document(manifest)  # sizes checked against the layout before any blob is read
        picked = None if context.models is None else check_indices(context.models, manifest.n_models)
        return get_approach(manifest.approach).recover(manifest, self, picked, context)

    def recover(self, set_id: str, models: Sequence[int] | None = None, context: RecoveryContext | None = None,
                **options: Any) -> ModelSet:
        """The stored set (or only the models at `models`, in that order), verified on the way.

        `context` (or the `RecoveryContext` fields as keywords: `executor=`, `force=`,
        `dataset_options=`) says how provenance sets are replayed.
        """
        context = recovery_context(context, models, options)
        set_id = self.resolve(set_id)
        doc = self.arch_document(self.manifest(set_id))
        rows = self.recover_rows(set_id, context)
        return ModelSet(doc.arch, doc.layout, rows, trusted=self.settings.allowed_prefixes())

    def verify(self, set_id: str | None = None, context: RecoveryContext | None = None, **options: Any) -> list[str]:
        """Read and check every byte of one set (or of all sets), replaying as `context` says; returns the ids."""
        context = recovery_context(context, None, options).subset(None)
        ids = [self.resolve(set_id)] if set_id else [info.id for info in self.list()]
        if set_id is None:
            self.verify_lineages()
            self.verify_aliases()
        for sid in ids:
            manifest = self.manifest(sid)
            doc = self.arch_document(manifest)
            for ref in self._refs(manifest):
                self.blobs.get(ref)
            # The checks a recovery makes on the rows (width, zero padding), so verify never passes what recover refuses.
            ModelSet(doc.arch, doc.layout, self.recover_rows(sid, context))
        return ids

    def export(self, set_id: str, out_dir: str, context: RecoveryContext | None = None, track: Any = None,
               **options: Any) -> list[str]:
        """Recover a set (or the context's models) and write one `.safetensors` file per model to `out_dir`."""
        from .export import export_safetensors

        context = recovery_context(context, None, options)
        set_id = self.resolve(set_id)
        model_set = self.recover(set_id, context=context)
        models = None if context.models is None else list(context.models)
        return export_safetensors(model_set, out_dir, set_id, models, *([track] if track else []))

    def list(self) -> list[SetInfo]:
        """Every set in the store, oldest first."""
        self.documents.require()
        infos = [self.info(set_id) for set_id in self.documents.set_ids()]
        return sorted(infos, key=lambda info: (info.created, info.id))

    def info(self, set_id: str) -> SetInfo:
        """The summary of one set."""
        m = self.manifest(set_id)
        return SetInfo(
            id=set_id, approach=m.approach, n_models=m.n_models, base=m.base,
            lineage=m.lineage, created=m.created, meta=m.meta,
        )

    def lineages(self) -> dict[str, str]:
        """Every lineage name and the set it points at (names the store does not allow are not lineages)."""
        self.documents.require()
        names = [name for name in self.backend.list("refs") if _LINEAGE.fullmatch(name)]
        return {name: head for name in names if (head := self.documents.ref(name))}

    def log(self, set_id: str) -> list[SetInfo]:
        """The set and its bases, newest first, down to the root."""
        chain, current, seen = [], self.resolve(set_id), set()
        while current:
            manifest = self.documents.current(current)  # a re-based base is followed to its new id
            if manifest.id in seen:  # ids are digests of manifests naming their base: only a forgery cycles
                raise FormatError(f"the chain of set {set_id[:12]} loops; the store was forged")
            seen.add(manifest.id)
            chain.append(self.info(manifest.id))
            current = manifest.base
        return chain

    @staticmethod
    def _refs(manifest: Manifest) -> list[BlobRef]:
        return [manifest.arch, *manifest.blobs.values()]
