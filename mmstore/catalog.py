"""The fleet catalog: every lineage's versions and head under `catalog/`, so fleet queries cost a few requests.

The catalog is a cache of what refs and manifests say, never the only copy of anything: `rebuild`
derives it from them alone. Writers replace its documents by compare-and-swap only; readers check
every set id they hand out against its manifest. Layout and consistency argument: docs/architecture.md
("Fleet catalog").
"""

from __future__ import annotations

import fnmatch
import random
import re
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import TYPE_CHECKING, Any

from .blobs import check_id
from .catalog_documents import CATALOG_VERSION, Head, HeadsDocument, LineageDocument, Version, to_time, version_time
from .errors import ConflictError, FormatError, MMStoreError, NewerFormatError, NotFoundError
from .manifest import LINEAGE_PATTERN, MAX_DOCUMENT_BYTES, Manifest, canonical_json, parse_document, parse_json

if TYPE_CHECKING:
    from .store import Store

__all__ = ["Catalog", "Version", "Head", "HEADS_KEY", "to_time", "version_time"]

HEADS_KEY = "catalog/heads.json"
_LINEAGE = re.compile(LINEAGE_PATTERN)
_REF_BYTES = 65  # a set id, perhaps with a newline
_REBUILD = "rebuild it with `mmstore fleet rebuild`"


class Catalog:
    """The fleet catalog of a store: lineage heads and versions under `catalog/`, each query a few requests."""

    def __init__(self, store: Store, retries: int = 50, workers: int = 8):
        self.store, self.backend, self.retries, self.workers = store, store.backend, retries, workers

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

    # -- writes --------------------------------------------------------------------------------

    def record(self, set_ids: Iterable[str]) -> list[str]:
        """Bring the lineages of sets just committed up to date in the catalog; returns their names."""
        try:
            before = self._heads()
        except FormatError:
            before = (None, {})
        if before[0] is None:
            return self.rebuild()  # a catalog covers every lineage from its first write on
        ids = [check_id(s, "set id") for s in set_ids]
        # As in `rebuild`: independent lineages, each waiting on one request at a time, overlap on threads.
        with ThreadPoolExecutor(self.workers) as pool:
            names = sorted({m.lineage for m in pool.map(self.store.manifest, ids) if m.lineage})
            docs = dict(zip(names, pool.map(lambda name: self._update(name, full=False), names)))
        # The documents were written (or found current) after the heads were read: a first attempt needs no re-read.
        self._publish(names, everything=False, first=(before, {name: doc.head() for name, doc in docs.items()}))
        return names

    def refresh(self, lineage: str) -> Head | None:
        """Rebuild one lineage's entry from its ref and manifests (after a deletion or a prune)."""
        self._update(lineage, full=True)
        self._publish([lineage], everything=False)
        return self._document(lineage).head()

    def rebuild(self) -> list[str]:
        """Rebuild the whole catalog from refs and manifests alone; returns the lineages it holds."""
        names = set(self.store.lineages()) | {n[:-5] for n in self.backend.list("catalog/lineages") if n.endswith(".json")}
        names = sorted(n for n in names if _LINEAGE.fullmatch(n))
        # Lineages are independent and each walk waits on one request at a time: threads overlap the waits.
        with ThreadPoolExecutor(self.workers) as pool:
            list(pool.map(lambda name: self._update(name, full=True), names))
        return self._publish(names, everything=True)

    # -- inside --------------------------------------------------------------------------------

    def _update(self, name: str, full: bool) -> LineageDocument:
        """Compare-and-swap the lineage's document until it holds the chain the ref names; that document."""
        key = _lineage_key(name)
        for attempt in range(self.retries):
            try:
                raw = self._read(key, f"the catalog of lineage {name!r}")
            except FormatError:
                self.backend.delete(key)  # too large to compare-and-swap against: the manifests remake it
                continue
            existing = self._try_parse(name, raw) if raw is not None else None
            versions = self._current(name, None if full else existing)
            if existing is not None and existing.versions == versions:
                return existing
            doc = LineageDocument(lineage=name, versions=versions)
            try:
                self.backend.swap(key, raw, canonical_json(doc))
                return doc
            except ConflictError:
                self._pause(attempt)
        raise ConflictError(f"the catalog of lineage {name!r} kept changing under {self.retries} attempts; record again")

    def _publish(self, names: list[str], everything: bool, first: tuple | None = None) -> list[str]:
        """Compare-and-swap the heads document, each named entry taken from its lineage document read afterwards.

        Reading the lineage documents after the heads document is what keeps a slower writer from
        putting an older entry back (docs/architecture.md, "Fleet catalog"). `first` is a heads
        document read earlier and the entries of documents written or read since, for a first attempt.
        """
        for attempt in range(self.retries):
            (raw, current), known = first if attempt == 0 and first else (self._heads(repair=everything), {})
            heads = {} if everything else dict(current)
            touched = sorted(set(names) | (set(current) if everything else set()))
            with ThreadPoolExecutor(self.workers) as pool:
                found = pool.map(lambda name: known[name] if name in known else self._document(name).head(), touched)
                for name, head in zip(touched, found):
                    heads.pop(name, None)
                    if head is not None:
                        heads[name] = head
            try:
                self.backend.swap(HEADS_KEY, raw, canonical_json(HeadsDocument(lineages=heads)))
                return sorted(heads)
            except ConflictError:
                self._pause(attempt)
        raise ConflictError(f"the fleet catalog's heads kept changing under {self.retries} attempts; record again")

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
        raw = self._read(_lineage_key(lineage), f"the catalog of lineage {lineage!r}")
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


def _lineage_key(lineage: str) -> str:
    if not isinstance(lineage, str) or not _LINEAGE.fullmatch(lineage):
        raise NotFoundError(f"{str(lineage)[:80]!r} is not a lineage name; list the fleet with `mmstore fleet ls`")
    return f"catalog/lineages/{lineage}.json"


def _pick(versions: list[tuple[str, str]], cutoff: str) -> int | None:
    """The index of the newest version held at `cutoff`: its time at or before, the next one's after it."""
    for index in range(len(versions) - 1, -1, -1):
        if versions[index][0] <= cutoff and (index + 1 == len(versions) or versions[index + 1][0] > cutoff):
            return index
    return None
