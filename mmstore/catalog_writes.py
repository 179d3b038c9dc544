"""The catalog's writes: record new versions, refresh or rebuild from refs and manifests, publish the heads.

Every write is a compare-and-swap on the bytes read (or last written); docs/architecture.md ("Fleet
catalog") gives the argument that concurrent writers lose no entry.
"""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

from .blobs import check_id
from .catalog_documents import HEADS_KEY, Head, HeadsDocument, LineageDocument, is_lineage, lineage_key
from .errors import ConflictError, FormatError
from .manifest import canonical_json

__all__ = ["CatalogWrites", "HeadsSnapshot"]

# The heads document's bytes as read and its entries: what a publish compares and extends.
HeadsSnapshot = tuple[bytes, dict[str, Head]]


class CatalogWrites:
    """The writing half of `Catalog` (its reading half supplies `_heads`, `_walk`, `_current`, `_document`, `_read`)."""

    def record(self, set_ids: Iterable[str], moved: dict[str, tuple[str, str]] | None = None) -> list[str]:
        """Bring the lineages of sets just committed up to date in the catalog; returns their names.

        `moved` gives, per lineage, the heads the caller's compare-and-swap moved it from and to: a
        document ending at the first is extended by the chain back from the second, without reading the ref.
        """
        before = self.before()
        if before is None:
            return self.rebuild()  # a catalog covers every lineage from its first write on
        entries = self.index(set_ids, moved)
        self.publish(before, entries)
        return sorted(entries)

    def before(self) -> HeadsSnapshot | None:
        """The heads document as read before indexing, for `publish`; None if there is no usable catalog yet.

        Indexing may be split over threads or tasks: read this first, `index` in each, `publish` once.
        """
        try:
            before = self._heads()
        except FormatError:
            return None
        return before if before[0] is not None else None

    def index(self, set_ids: Iterable[str], moved: dict[str, tuple[str, str]] | None = None) -> dict[str, Head | None]:
        """Extend the lineage documents of sets just committed (see `record`); the heads entries `publish` takes."""
        moved = moved or {}
        ids = [check_id(s, "set id") for s in set_ids]
        # As in `rebuild`: independent lineages, each waiting on one request at a time, overlap on threads.
        with ThreadPoolExecutor(self.workers) as pool:
            names = sorted({m.lineage for m in pool.map(self.store.manifest, ids) if m.lineage})
            docs = dict(zip(names, pool.map(lambda name: self._update(name, False, moved.get(name)), names)))
        return {name: doc.head() for name, doc in docs.items()}

    def publish(self, before: HeadsSnapshot | None, entries: dict[str, Head | None]) -> None:
        """Swap in the heads with `entries` over `before`, which was read before their documents were written.

        Without `before` (no catalog yet), the catalog is rebuilt. If another writer swapped the heads
        meanwhile, they are read again and every entry from its document read after them.
        """
        if before is None:
            self.rebuild()
        else:
            self._publish(sorted(entries), everything=False, first=(before, entries))

    def refresh(self, lineage: str) -> Head | None:
        """Rebuild one lineage's entry from its ref and manifests (after a deletion or a prune)."""
        self._update(lineage, full=True)
        self._publish([lineage], everything=False)
        return self._document(lineage).head()

    def rebuild(self) -> list[str]:
        """Rebuild the whole catalog from refs and manifests alone; returns the lineages it holds."""
        names = set(self.store.lineages()) | {n[:-5] for n in self.backend.list("catalog/lineages") if n.endswith(".json")}
        names = sorted(n for n in names if is_lineage(n))
        # Lineages are independent and each walk waits on one request at a time: threads overlap the waits.
        with ThreadPoolExecutor(self.workers) as pool:
            list(pool.map(lambda name: self._update(name, full=True), names))
        return self._publish(names, everything=True)

    def _update(self, name: str, full: bool, moved: tuple[str, str] | None = None) -> LineageDocument:
        """Compare-and-swap the lineage's document until it holds the chain the ref names; that document."""
        key = lineage_key(name)
        for attempt in range(self.retries):
            remembered = self._written.pop(name, None) if attempt == 0 and not full else None
            if remembered is None:
                try:
                    raw = self._read(key, f"the catalog of lineage {name!r}")
                except FormatError:
                    self.backend.delete(key)  # too large to compare-and-swap against: the manifests remake it
                    continue
                remembered = (raw, self._try_parse(name, raw) if raw is not None else None)
            raw, existing = remembered
            versions = self._extended(name, existing, moved) or self._current(name, None if full else existing)
            doc = LineageDocument(lineage=name, versions=versions)
            if existing is not None and existing.versions == versions:
                self._written[name] = (raw, existing)
                return existing
            try:
                self.backend.swap(key, raw, data := canonical_json(doc))
                self._written[name] = (data, doc)
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

    def _extended(self, lineage: str, doc: LineageDocument | None, moved: tuple[str, str] | None) -> list | None:
        """The document's versions and the chain from `moved`'s new head back to its old one, if the document ends there."""
        if doc is None or not doc.versions or moved is None or doc.versions[-1][1] != moved[0]:
            return None
        kept, newer = self._walk(lineage, moved[1], {moved[0]: len(doc.versions) - 1})
        return doc.versions + newer if kept == len(doc.versions) else None
