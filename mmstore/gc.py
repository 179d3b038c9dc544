"""Garbage collection: remove what no set references, never what a committed or committing set needs.

The protocol (docs/architecture.md, "Garbage collection") works on every backend without locks:

1. List every manifest and collect the blobs they reference.
2. Candidates are blobs nobody references, older than the grace period; each is moved to
   `trash/<run>/` (an atomic rename locally, copy + delete on S3), so it disappears from `blobs/`.
3. List the manifests again. A candidate a set committed meanwhile references is moved back;
   the others are deleted.

A save checks after its commit that every blob it wrote or found present still exists and writes
any missing one again (`BlobStore.ensure`). A blob is therefore gone for good only if no manifest
named it when step 3 listed the manifests, and a manifest committed after that listing belongs to a
save whose own check comes later still, sees the blob missing and restores it.
"""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import dataclass, field

from .blobs import blob_key
from .errors import FormatError, MMStoreError, NotFoundError
from .manifest import MAX_DOCUMENT_BYTES, Manifest

__all__ = ["GcReport", "collect", "referenced_blobs", "restore_set_aside", "TRASH"]

TRASH = "trash"
_BLOB = re.compile(r"blobs/([0-9a-f]{2})/([0-9a-f]{62})")
_TEMP = re.compile(r".+\.tmp-[0-9a-f]{32}")
_TRASHED = re.compile(TRASH + r"/[0-9a-f]{32}-([0-9a-f]{64})")
_SET_ASIDE_NAME = re.compile(r"[0-9a-f]{32}-set-([0-9a-f]{64})\.json")


@dataclass
class GcReport:
    """What a collection removed (or, in a dry run, would remove), in objects and bytes."""

    dry_run: bool
    blobs: int = 0
    blob_bytes: int = 0
    temp_files: int = 0
    temp_bytes: int = 0
    uploads: int = 0
    restored: int = 0
    young: int = 0
    young_bytes: int = 0
    removed: list[str] = field(default_factory=list)

    @property
    def freed(self) -> int:
        """Bytes freed (or to be freed)."""
        return self.blob_bytes + self.temp_bytes


def referenced_blobs(store) -> set[str]:
    """Every blob id the store's manifests reference (architecture documents included).

    Manifests a deletion moved aside count too, and `sets/` is listed before and after `trash/`:
    a manifest moving between the two is seen in one of the three listings wherever it is.
    A manifest that cannot be read stops the collection: what it references is unknown.
    """
    ids: set[str] = set()
    first = store.documents.set_ids()
    aside = {found.group(1): name for name in store.backend.list(TRASH) if (found := _SET_ASIDE_NAME.fullmatch(name))}
    for set_id in sorted(set(first) | set(store.documents.set_ids()) | set(aside)):
        try:
            manifest = _manifest(store, set_id, aside.get(set_id))
        except MMStoreError as exc:
            raise MMStoreError(
                f"set {set_id[:12]} cannot be read ({exc}); nothing was collected. Restore or delete that "
                "set (`mmstore verify` lists damaged sets), then collect again"
            ) from None
        if manifest is not None:
            ids.add(manifest.arch.object_id)
            ids.update(ref.object_id for ref in manifest.blobs.values())
    return ids


def _manifest(store, set_id: str, aside: str | None):
    """The manifest under `sets/`, or where a deletion moved it; None if it vanished meanwhile."""
    try:
        return store.manifest(set_id)
    except NotFoundError:
        store.documents.forget_manifest(set_id)
    if aside is None:
        return None
    key = f"{TRASH}/{aside}"
    try:
        if store.backend.size(key) > MAX_DOCUMENT_BYTES:  # bounded like any manifest before it is read
            raise FormatError(f"{key} is larger than any manifest; the store was forged or damaged")
        return Manifest.decode(set_id, store.backend.get(key))
    except NotFoundError:
        return None


def restore_set_aside(store) -> int:
    """Put back the manifests deletions moved aside (one that stopped half way comes back whole); how many.

    A deletion still running removes its manifest again after its own check, so this is safe at any time.
    """
    moved = 0
    for name in store.backend.list(TRASH):
        aside = _SET_ASIDE_NAME.fullmatch(name)
        if aside and store.backend.move(f"{TRASH}/{name}", f"sets/{aside.group(1)}.json"):
            moved += 1
    return moved


def collect(store, grace: float, dry_run: bool = False, now: float | None = None) -> GcReport:
    """Remove unreferenced blobs, temporary files and unfinished uploads older than `grace` seconds."""
    store.documents.require()
    cutoff = (time.time() if now is None else now) - grace
    report = GcReport(dry_run)
    entries = store.backend.scan("")
    live = referenced_blobs(store)
    candidates, leftovers = [], []
    for entry in entries:
        blob = _BLOB.fullmatch(entry.key)
        if entry.key.startswith(f"{TRASH}/"):
            leftovers.append(entry)  # a collection that stopped half way: finish its work
        elif _TEMP.fullmatch(entry.key.rsplit("/", 1)[-1]) and entry.mtime < cutoff:
            report.temp_files, report.temp_bytes = report.temp_files + 1, report.temp_bytes + entry.size
            if not dry_run:
                store.backend.delete(entry.key)
        elif blob and "".join(blob.groups()) not in live:
            if entry.mtime < cutoff:
                candidates.append(entry)
            else:
                report.young, report.young_bytes = report.young + 1, report.young_bytes + entry.size
    if dry_run:
        # What an interrupted collection left in the trash and nobody references goes too.
        doomed = candidates + [e for e in leftovers if (t := _TRASHED.fullmatch(e.key)) and t.group(1) not in live]
        report.blobs, report.blob_bytes = len(doomed), sum(e.size for e in doomed)
        report.removed = [e.key for e in doomed]
        return report
    _sweep(store, candidates, leftovers, report)
    report.uploads = store.backend.abort_uploads(cutoff)
    return report


def _sweep(store, candidates, leftovers, report: GcReport) -> None:
    """Steps 2 and 3 of the protocol: trash the candidates, list manifests again, restore or delete."""
    run = uuid.uuid4().hex
    trashed = []
    for entry in candidates:
        blob_id = "".join(_BLOB.fullmatch(entry.key).groups())
        if store.backend.move(entry.key, f"{TRASH}/{run}-{blob_id}"):
            trashed.append((f"{TRASH}/{run}-{blob_id}", blob_id, entry.size))
    for entry in leftovers:
        found = _TRASHED.fullmatch(entry.key)
        if found:
            trashed.append((entry.key, found.group(1), entry.size))
    restore_set_aside(store)
    live = referenced_blobs(store)
    for trash_key, blob_id, size in trashed:
        if blob_id in live:
            # A save committed meanwhile names it: back into place (a save that wrote it again wins).
            store.backend.move(trash_key, blob_key(blob_id))
            report.restored += 1
            continue
        store.backend.delete(trash_key)
        report.blobs, report.blob_bytes = report.blobs + 1, report.blob_bytes + size
        report.removed.append(blob_key(blob_id))
