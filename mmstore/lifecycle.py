"""What keeps a store healthy over years: deleting sets, collecting garbage, repairing blobs, checking lineages.

Mixed into `Store`; the protocols and the argument why no committed set loses a byte are in
docs/architecture.md ("Garbage collection and deletion").
"""

from __future__ import annotations

import re
import uuid
from collections import Counter
from typing import TYPE_CHECKING

from .blobs import blob_key
from .errors import InUseError, IntegrityError, MMStoreError, NotFoundError
from .gc import TRASH, GcReport, collect
from .manifest import LINEAGE_PATTERN

if TYPE_CHECKING:
    from .store import Store

__all__ = ["Lifecycle", "DEFAULT_GRACE"]

_LINEAGE = re.compile(LINEAGE_PATTERN)
DEFAULT_GRACE = 24 * 3600.0  # longer than any save takes: a blob written by a running save is never a candidate


class Lifecycle:
    """Deletion, garbage collection, repair and lineage checks of a `Store`."""

    def delete(self, set_id: str) -> int:
        """Delete a set no other set derives from; returns the bytes of its manifest.

        A lineage pointing at the set moves back to the set's base. The set's blobs are left to
        `collect_garbage`, whose protocol keeps every blob a concurrent save still needs. The
        manifest is first moved aside, then the store is listed again: a set derived from it
        meanwhile puts it back and the deletion is refused.
        """
        set_id = self.resolve(set_id)
        manifest = self.manifest(set_id)
        self._refuse_dependents(set_id)
        key, aside = f"sets/{set_id}.json", f"{TRASH}/{uuid.uuid4().hex}-set-{set_id}.json"
        freed = self.backend.size(key)
        self.backend.move(key, aside)
        self.documents.forget_manifest(set_id)
        try:
            self._refuse_dependents(set_id)
        except InUseError:
            self.backend.move(aside, key)
            raise
        # Nothing derives from the set through its old ids either: they go with it.
        for old_id in self.documents.aliases.pointing_at(set_id):
            self.documents.aliases.remove(old_id)
        for name, head in self.lineages().items():
            if head == set_id:
                self._retarget_lineage(name, set_id, manifest.base)
        self.backend.delete(aside)
        # A collection may have taken this for an interrupted deletion and put the manifest back.
        self.backend.delete(key)
        self.documents.forget_manifest(set_id)
        return freed

    def _refuse_dependents(self, set_id: str) -> None:
        present = set(self.documents.set_ids())
        aliases = self.documents.aliases
        dependents = [info.id[:12] for info in self.list() if info.base is not None and (
            info.base == set_id or (info.base not in present and aliases.leads_to(info.base, set_id)))]
        if dependents:
            raise InUseError(f"set {set_id[:12]} is the base of {', '.join(dependents)}; delete those first (newest first)")

    def collect_garbage(self, grace: float = DEFAULT_GRACE, dry_run: bool = False) -> GcReport:
        """Remove blobs no set references, stale temporary files and unfinished uploads older than `grace` s."""
        return collect(self, grace, dry_run)

    def _retarget_lineage(self, name: str, head: str, base: str | None) -> None:
        if base is None:
            self.backend.delete(f"refs/{name}")
        else:
            self.backend.swap(f"refs/{name}", head.encode(), base.encode())

    def repair(self, source: Store, set_id: str | None = None) -> list[str]:
        """Rewrite every damaged or missing blob of one set (or all sets) from `source`; returns their ids.

        A blob is taken from `source` only after it verifies there against the same digest.
        """
        ids = [self.resolve(set_id)] if set_id else [info.id for info in self.list()]
        repaired = []
        for ref in {ref.id: ref for sid in ids for ref in self._refs(self.manifest(sid))}.values():
            try:
                self.blobs.get(ref)
            except (IntegrityError, NotFoundError):
                try:
                    healthy = source.blobs.get(ref)
                    # A packed blob is healed by its whole pack, taken once its own bytes verified there.
                    whole = source.blobs.read_object(ref.pack) if ref.pack else memoryview(healthy)
                except MMStoreError as exc:
                    raise MMStoreError(f"blob {ref.id[:12]} is damaged here and cannot be read from {source.url} ({exc}); "
                                       "restore it from a backup") from None
                self.backend.put(blob_key(ref.object_id), whole, exclusive=False)
                repaired.append(ref.id)
        return repaired

    def verify_lineages(self) -> None:
        """Every lineage ref must name a set that exists and parses."""
        for name in self.backend.list("refs"):
            if not _LINEAGE.fullmatch(name):
                continue
            try:
                self.manifest(self.documents.ref(name) or "")
            except MMStoreError as exc:
                raise IntegrityError(
                    f"lineage {name!r} is damaged or points at a set that is missing or damaged ({exc}); "
                    f"move it to a valid set or delete refs/{name}"
                ) from None

    def verify_aliases(self) -> None:
        """Every alias must parse, carry the manifest its name is the digest of, and lead to a set with that content.

        An alias whose set was deleted leads nowhere; that is an error only for a set that needs it.
        """
        for old_id in self.documents.aliases.names():
            try:
                self.documents.current(old_id)
            except NotFoundError:
                self.documents.aliases.read(old_id)

    def unreferenced(self) -> GcReport:
        """What garbage collection with no grace period would remove now: orphaned blobs and temporary files."""
        return collect(self, 0.0, dry_run=True)

    def size(self, set_id: str) -> int:
        """Bytes this set adds to the store: its manifest plus blobs no set in its chain holds already."""
        chain = self.log(set_id)
        older = {ref.id for info in chain[1:] for ref in self._refs(self.manifest(info.id))}
        own = [ref for ref in {r.id: r for r in self._refs(self.manifest(chain[0].id))}.values() if ref.id not in older]
        manifest_bytes = self.backend.size(f"sets/{chain[0].id}.json")
        return manifest_bytes + sum(self.blobs.stored_size(ref) for ref in own)

    def sizes(self) -> dict[str, int]:
        """What every set adds to the store (as `size` computes it), in one walk over all chains."""
        infos = {info.id: info for info in self.list()}
        children: dict[str | None, list[str]] = {}
        for info in infos.values():
            base = info.base if info.base is None or info.base in infos else self._aliased_base(info)
            children.setdefault(base, []).append(info.id)
        held: Counter[str] = Counter()  # blobs the sets on the path from a root to here reference
        sizes: dict[str, int] = {}
        stack: list[tuple[str, bool]] = [(set_id, True) for set_id in children.get(None, [])]
        while stack:
            set_id, entering = stack.pop()
            refs = {ref.id: ref for ref in self._refs(self.manifest(set_id))}
            if not entering:
                held.subtract(refs.keys())
                continue
            own = [ref for blob_id, ref in refs.items() if held[blob_id] <= 0]
            sizes[set_id] = self.backend.size(f"sets/{set_id}.json") + sum(self.blobs.stored_size(r) for r in own)
            held.update(refs.keys())
            stack.append((set_id, False))
            stack.extend((child, True) for child in children.get(set_id, []))
        return sizes

    def _aliased_base(self, info) -> str:
        """The id a set's re-based base has now."""
        try:
            return self.documents.current(info.base).id
        except NotFoundError:
            raise NotFoundError(f"set {info.id[:12]} derives from {info.base[:12]}, which is missing; "
                                "the store is damaged: run `mmstore verify` and restore it from a backup") from None
