"""The fleet catalog: every lineage's versions and head under `catalog/`, so fleet queries cost a few requests.

The catalog is a cache of what refs and manifests say, never the only copy of anything: `rebuild`
derives it from them alone. Writers replace its documents by compare-and-swap only; readers check
every set id they hand out against its manifest. Layout and consistency argument: docs/architecture.md
("Fleet catalog").
"""

from __future__ import annotations

import fnmatch
import random
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any

from .blobs import check_id
from .catalog_documents import (CATALOG_VERSION, HEADS_KEY, Head, HeadsDocument, LineageDocument, Version, lineage_key, to_time,
                                version_time)
from .catalog_writes import CatalogWrites
from .errors import FormatError, MMStoreError, NewerFormatError, NotFoundError
from .manifest import MAX_DOCUMENT_BYTES, Manifest, parse_document, parse_json

if TYPE_CHECKING:
    from .store import Store

__all__ = ["Catalog", "Version", "Head", "HEADS_KEY", "to_time", "version_time"]

_REF_BYTES = 65  # a set id, perhaps with a newline
_REBUILD = "rebuild it with `mmstore fleet rebuild`"


class Catalog(CatalogWrites):
    """The fleet catalog of a store: lineage heads and versions under `catalog/`, each query a few requests."""

    def __init__(self, store: Store, retries: int = 50, workers: int = 8):
        self.store, self.backend, self.retries, self.workers = store, store.backend, retries, workers
        # Lineage documents as this catalog last wrote or read them: a first compare-and-swap against them
        # needs no read, and fails (then reads) if another writer changed one since.
        self._written: dict[str, tuple[bytes, LineageDocument]] = {}

    # -- queries -------------------------------------------------------------------------------

    def heads(self, match: str = "*", verify: bool = False) -> dict[str, Head]:
        """Every catalogued lineage matching the glob with its newest version (one request; may be stale).

        With `verify`, each head is checked against its ref and manifest and a lineage that disagrees
        is answered from its ref and manifests instead (three requests per lineage).
        """
        raw, current = self._heads()
        if raw is None:
            raise NotFoundError(f"the store at {self.backend.url} has no fleet catalog; {_REBUILD}")
        heads = {name: head for name, head in sorted(current.items()) if fnmatch.fnmatchcase(name, match)}
        for name, head in heads.items() if verify else ():
            if self._ref(name) != head.head or self._confirmed(name, head.time, head.head) is None:
                heads[name] = LineageDocument(lineage=name, versions=self._walk(name, self._ref(name), {})[1]).head()
        return {name: head for name, head in heads.items() if head is not None}

    def changed_since(self, since: str | datetime, match: str = "*") -> dict[str, Head]:
        """Lineages with a version newer than `since` (one request; as stale as `heads`)."""
        cutoff = to_time(since)
        return {name: head for name, head in self.heads(match).items() if head.latest > cutoff}

    def versions(self, lineage: str) -> list[Version]:
        """A lineage's versions, oldest first: the catalog's, completed from the ref when the ref moved past it."""
        return [Version(lineage, set_id, t) for t, set_id in self._current(lineage, self._document(lineage))]

    def at(self, lineage: str, when: str | datetime) -> Version:
        """The version `lineage` held at `when` (at most 5 requests), confirmed by its manifest and its successor's.

        A lineage holds each version from its time until the next version's time; the ref is read
        only when `when` is at or after the newest catalogued time, the one case a stale catalog affects.
        """
        cutoff = to_time(when)
        doc = self._document(lineage)
        versions = doc.versions
        if not versions or cutoff >= versions[-1][0]:
            versions = self._current(lineage, doc)
        index = _pick(versions, cutoff)
        if not self._holds(lineage, versions, index):
            versions = self._walk(lineage, self._ref(lineage), {})[1]  # the catalog disagrees: ask the manifests
            index = _pick(versions, cutoff)
        if not versions:
            raise NotFoundError(f"lineage {lineage!r} has no versions in {self.backend.url}; list the fleet with `mmstore fleet ls`")
        if index is None:
            raise NotFoundError(f"lineage {lineage!r} held no version at {cutoff}: its first version is from "
                                f"{versions[0][0]}; give a later time")
        return Version(lineage, versions[index][1], versions[index][0])

    # -- inside --------------------------------------------------------------------------------

    def _heads(self, repair: bool = False) -> tuple[bytes | None, dict[str, Head]]:
        """The heads document's bytes and entries; with `repair`, a damaged one counts as empty (a rebuild replaces it)."""
        what = "the fleet catalog's heads"
        try:
            raw = self._read(HEADS_KEY, what)
        except FormatError:
            if not repair:
                raise
            self.backend.delete(HEADS_KEY)  # too large to compare-and-swap against
            return None, {}
        try:
            return raw, (self._parse(HeadsDocument, raw, what).lineages if raw is not None else {})
        except FormatError:
            if not repair:
                raise
            return raw, {}

    def _current(self, lineage: str, doc: LineageDocument | None) -> list[tuple[str, str]]:
        """The lineage's versions: the catalog's up to the first one the ref's chain meets, then the newer ones."""
        known = {set_id: i for i, (_, set_id) in enumerate(doc.versions)} if doc else {}
        kept, newer = self._walk(lineage, self._ref(lineage), known)
        return (doc.versions[:kept] if doc else []) + newer

    def _walk(self, lineage: str, head: str | None, known: dict[str, int]) -> tuple[int, list[tuple[str, str]]]:
        """From `head` back along the lineage's chain to a set in `known`: (that set's index + 1, newer versions)."""
        found, current, seen = [], head, set()
        while current is not None and current not in known:
            manifest = self.store.documents.current(current)  # a re-based set is followed to its new id
            if manifest.id in known or manifest.lineage != lineage:
                current = manifest.id if manifest.id in known else None  # a foreign base is not a version
                break
            if manifest.id in seen:
                raise FormatError(f"the chain of lineage {lineage!r} loops; the store was forged")
            seen.add(manifest.id)
            found.append((version_time(manifest), manifest.id))
            current = manifest.base
        return (known[current] + 1 if current is not None else 0), found[::-1]

    def _holds(self, lineage: str, versions: list[tuple[str, str]], index: int | None) -> bool:
        """Whether the manifests confirm an answer: the version chosen, and the one after it derives from it.

        With no version chosen, the first must be confirmed and derive from no set of the lineage.
        Versions the ref's chain supplied are confirmed already, and from the manifests' cache.
        """
        if not versions:
            return True
        try:
            if index is None:
                first = self._confirmed(lineage, *versions[0])
                return first is not None and (first.base is None or self.store.documents.current(first.base).lineage != lineage)
            chosen = self._confirmed(lineage, *versions[index])
            after = self._confirmed(lineage, *versions[index + 1]) if index + 1 < len(versions) else None
            return chosen is not None and (index + 1 == len(versions) or (after is not None and after.base == chosen.id))
        except MMStoreError:
            return False

    def _confirmed(self, lineage: str, when: str, set_id: str) -> Manifest | None:
        """The set's manifest if it exists, belongs to the lineage and has that time (what the catalog claims)."""
        try:
            manifest = self.store.manifest(set_id)
            return manifest if manifest.lineage == lineage and version_time(manifest) == when else None
        except MMStoreError:
            return None

    def _document(self, lineage: str) -> LineageDocument:
        raw = self._read(lineage_key(lineage), f"the catalog of lineage {lineage!r}")
        doc = self._parse(LineageDocument, raw, f"the catalog of lineage {lineage!r}") if raw else None
        if doc is not None and doc.lineage != lineage:
            raise FormatError(f"the catalog of lineage {lineage!r} describes {doc.lineage!r}: it was forged or damaged; {_REBUILD}")
        return doc or LineageDocument(lineage=lineage)

    def _try_parse(self, lineage: str, raw: bytes) -> LineageDocument | None:
        # A writer replaces a damaged document with one made from the manifests instead of giving up.
        try:
            doc = self._parse(LineageDocument, raw, f"the catalog of lineage {lineage!r}")
        except MMStoreError:
            return None
        return doc if doc.lineage == lineage else None

    def _ref(self, lineage: str) -> str | None:
        raw = self._read(f"refs/{lineage}", f"lineage {lineage!r}", _REF_BYTES)
        if raw is None:
            return None
        return check_id(raw.decode("ascii", "replace").removesuffix("\n"), f"lineage {lineage!r} points at")

    def _read(self, key: str, what: str, limit: int = MAX_DOCUMENT_BYTES) -> bytes | None:
        """The object's bytes (None if absent), read in one ranged request and never more than `limit` of them."""
        try:
            data = self.backend.get(key, at_most=limit + 1)
        except NotFoundError:
            return None
        if len(data) > limit:
            raise FormatError(f"{what} in {self.backend.url} is larger than it can be; the store was forged or damaged")
        return data

    @staticmethod
    def _parse(model: Any, raw: bytes, what: str) -> Any:
        try:
            obj = parse_json(raw, what)
        except FormatError as exc:
            raise FormatError(f"{exc}; {_REBUILD}") from None
        version = obj.get("schema_version") if isinstance(obj, dict) else None
        if isinstance(version, int) and not isinstance(version, bool) and version > CATALOG_VERSION:
            raise NewerFormatError(f"{what} was written by a newer mmstore (catalog format {version}); upgrade mmstore")
        try:
            return parse_document(model, obj, what)
        except FormatError as exc:
            raise FormatError(f"{exc}; {_REBUILD}") from None

    @staticmethod
    def _pause(attempt: int) -> None:
        # Jittered, growing pauses spread writers that collided so the next attempt of each likely succeeds.
        time.sleep(random.uniform(0, min(0.5, 0.005 * 2**attempt)))


def _pick(versions: list[tuple[str, str]], cutoff: str) -> int | None:
    """The index of the newest version held at `cutoff`: its time at or before, the next one's after it."""
    for index in range(len(versions) - 1, -1, -1):
        if versions[index][0] <= cutoff and (index + 1 == len(versions) or versions[index + 1][0] > cutoff):
            return index
    return None
