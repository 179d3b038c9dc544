"""A store's documents as a reader sees them: marker, lineage refs, manifests and architecture documents.

Each is bounded in size before it is read, parsed into its typed model, checked against the
documents it refers to, and cached by id (ids are digests, so a cached document never goes stale).
"""

from __future__ import annotations

import json
import re
import threading

from .aliases import Aliases
from .backend import Backend
from .blobs import BlobStore, check_id
from .diff import DIGEST_SIZE
from .errors import FormatError, NewerFormatError, NotFoundError, ResourceLimitError
from .manifest import FORMAT_VERSION, MAX_DOCUMENT_BYTES, ArchDocument, Manifest, parse_document, parse_json
from .settings import Settings

__all__ = ["StoreDocuments", "MARKER"]

# Written by the first save: tells a store from any other directory, and which format wrote it.
MARKER = "mmstore.json"
_HEX64 = re.compile(r"[0-9a-f]{64}")
_REF_BYTES = 65  # a set id, perhaps with a newline
_CACHED_MANIFESTS = 1 << 16  # about 100 MB of parsed manifests
_MODEL_OVERHEAD = 64  # bytes a reader spends per model at least, whatever its row


class StoreDocuments:
    """The parsed documents of the store on `backend`."""

    def __init__(self, backend: Backend, blobs: BlobStore, settings: Settings):
        self.backend, self.blobs, self.settings = backend, blobs, settings
        self._manifests: dict[str, Manifest] = {}
        self._lock = threading.Lock()
        self._arch_docs: dict[str, ArchDocument] = {}
        self._is_store = False
        self.aliases = Aliases(self)

    def mark(self) -> None:
        """Write the store's marker if it has none (a save calls this before writing anything else)."""
        if not self._is_store and not self.backend.exists(MARKER):
            self.backend.put(MARKER, json.dumps({"format_version": FORMAT_VERSION}).encode(), exclusive=True)
        self._is_store = True

    def require(self) -> None:
        """Refuse to read a location that holds no store (a v1 store has `sets/` but no marker)."""
        if self._is_store:
            return
        if self.backend.exists(MARKER):
            marker = parse_json(self.bounded(MARKER, MAX_DOCUMENT_BYTES, "the store's marker"), f"{MARKER} of {self.backend.url}")
            version = marker.get("format_version") if isinstance(marker, dict) else None
            if isinstance(version, int) and version > FORMAT_VERSION:
                raise NewerFormatError(
                    f"the store at {self.backend.url} was written by a newer mmstore (format {version}); upgrade mmstore"
                )
        elif not self.backend.list("sets"):
            raise NotFoundError(
                f"there is no mmstore store at {self.backend.url}; pass --store URL or set MMSTORE_STORE "
                "(a store is created by its first save)"
            )
        self._is_store = True

    def ref(self, lineage: str) -> str | None:
        """The set id a lineage points at (parsed: a forged ref never becomes a path), or None."""
        try:
            raw = self.bounded(f"refs/{lineage}", _REF_BYTES, f"lineage {lineage!r}")
        except NotFoundError:
            return None
        text = raw.decode("ascii", "replace").removesuffix("\n")
        return check_id(text, f"lineage {lineage!r} in {self.backend.url} points at")

    def set_ids(self) -> list[str]:
        """The ids of the stored manifests; other names in `sets/` are not sets and are left out."""
        names = (name[:-5] for name in self.backend.list("sets") if name.endswith(".json"))
        return [name for name in names if _HEX64.fullmatch(name)]

    def manifest(self, set_id: str) -> Manifest:
        """The verified, parsed manifest of a set."""
        found = self._manifests.get(set_id)
        if found is None:
            key = f"sets/{check_id(set_id, 'set id')}.json"
            found = Manifest.decode(set_id, self.bounded(key, MAX_DOCUMENT_BYTES, f"the manifest of set {set_id[:12]}"))
            self._keep(found)
        return found

    def current(self, set_id: str) -> Manifest:
        """The manifest a set id names now: the set's own or, for a re-based set, the one its aliases lead to."""
        return self.aliases.follow(set_id)

    def remember_manifest(self, manifest: Manifest) -> None:
        """Cache a manifest this process just wrote."""
        self._keep(manifest)

    def _keep(self, manifest: Manifest) -> None:
        # Bounded, oldest first out: a process that ingests for months keeps a working set, not every set.
        with self._lock:
            self._manifests[manifest.id] = manifest
            while len(self._manifests) > _CACHED_MANIFESTS:
                del self._manifests[next(iter(self._manifests))]

    def forget_manifest(self, set_id: str) -> None:
        """Drop a deleted set's manifest from the cache."""
        self._manifests.pop(set_id, None)

    def base_of(self, manifest: Manifest) -> Manifest:
        """The manifest of a set's base, checked to hold as many models of the same layout."""
        if manifest.base is None:
            raise FormatError(f"set {manifest.id[:12]} is derived but names no base; the store was forged or damaged")
        base = self.current(manifest.base)
        same_arch = base.arch.id == manifest.arch.id or self.arch_document(base).layout == self.arch_document(manifest).layout
        if base.n_models != manifest.n_models or not same_arch:
            raise FormatError(
                f"set {manifest.id[:12]} and its base {base.id[:12]} differ in model count or layout; "
                "the store was forged or damaged"
            )
        return base

    def arch_document(self, manifest: Manifest) -> ArchDocument:
        """The verified architecture and layout a manifest names, checked against the manifest's sizes."""
        doc = self._arch_docs.get(manifest.arch.id)
        if doc is None:
            what = f"the architecture document of set {manifest.id[:12]}"
            if manifest.arch.size > MAX_DOCUMENT_BYTES:
                raise FormatError(f"{what} is larger than any architecture document; the store was forged")
            doc = parse_document(ArchDocument, parse_json(self.blobs.get(manifest.arch).tobytes(), what), what)
            self._arch_docs[manifest.arch.id] = doc
        # Rows, digest tables and per-model objects all grow with the model count, even for empty rows.
        per_model = max(doc.layout.row_nbytes, len(doc.layout.tensors) * DIGEST_SIZE, _MODEL_OVERHEAD)
        if manifest.n_models * per_model > self.settings.max_set_bytes:
            raise ResourceLimitError(
                f"set {manifest.id[:12]} needs {manifest.n_models * per_model} bytes for {manifest.n_models} models, "
                f"more than the limit of {self.settings.max_set_bytes}; raise MMSTORE_MAX_SET_BYTES if you trust this store"
            )
        manifest.data.check(manifest.n_models, doc.layout)
        return doc

    def verified_arch(self, arch_id: str) -> bool:
        """Whether this reader has read and checked the architecture document `arch_id`."""
        return arch_id in self._arch_docs

    def bounded(self, key: str, limit: int, what: str) -> bytes:
        """The object at `key`, refused if it is larger than `limit` (reading at most one byte more)."""
        data = self.backend.get(key, at_most=limit + 1)
        if len(data) > limit:
            raise FormatError(f"{what} in {self.backend.url} is larger than it can be; the store was forged or damaged")
        return data
