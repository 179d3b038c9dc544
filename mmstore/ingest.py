"""Ingest: turn the bundles devices left in the inbox into versions of their lineages.

The inbox is untrusted input. A bundle is read only below `pending/<device>/`, bounded by what the
device's models can need, checked against the digest it is named by and against the lineage's
architecture, and decoded only against models the store holds for that device. Each device's
bundles are applied in the order their bases chain, each commit moves the lineage with
compare-and-swap, and a bundle delivered again changes nothing. What cannot be applied is moved to
`quarantine/<device>/` with a readable reason beside it.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Literal

import numpy as np

from .backend import Backend, Entry
from .bundle import BUNDLE_SUFFIX, Bundle, apply_bundle, bundle_time, change_mask, parse_bundle
from .errors import ConflictError, MMStoreError, NotFoundError
from .manifest import LINEAGE_PATTERN, Manifest
from .modelset import ModelSet
from .store import Store

__all__ = ["Outcome", "Swept", "pending", "ingest", "ingest_device", "quarantine_key", "sweep_inbox", "RECENT_VERSIONS"]

_QUARANTINED = re.compile(r"quarantine/[^/]+/[0-9a-f]{64}\.(mmb|json)")
_PENDING = re.compile(r"pending/(?P<device>[^/]+)/(?P<digest>[0-9a-f]{64})" + re.escape(BUNDLE_SUFFIX))
_DEVICE = re.compile(LINEAGE_PATTERN)
# How far back a stale or repeated bundle is looked for: a device is at most this many versions behind.
RECENT_VERSIONS = 64
_HEADER_ALLOWANCE = 1 << 20

Status = Literal["committed", "duplicate", "deferred", "quarantined"]


@dataclass(frozen=True)
class Outcome:
    """What became of one bundle."""

    key: str
    device: str
    status: Status
    set_id: str | None = None
    reason: str = ""
    nbytes: int = 0


@dataclass
class _Lineage:
    """A device's lineage while its bundles are applied: its head and the head's rows."""

    name: str
    head: Manifest
    rows: np.ndarray


def quarantine_key(device: str, digest: str) -> str:
    """Where a rejected bundle is kept (its reason beside it, as `.json`)."""
    return f"quarantine/{device}/{digest}{BUNDLE_SUFFIX}"


def pending(inbox: Backend) -> dict[str, list[Entry]]:
    """The bundles waiting in the inbox (key, size, time), by device, from one listing; other names are not bundles."""
    found: dict[str, list[Entry]] = {}
    for entry in inbox.scan("pending"):
        match = _PENDING.fullmatch(entry.key)
        if match and _DEVICE.fullmatch(match["device"]):
            found.setdefault(match["device"], []).append(entry)
    return {device: sorted(entries, key=lambda e: e.key) for device, entries in sorted(found.items())}


def ingest(store: Store, inbox: Backend, devices: dict[str, list[Entry]]) -> list[Outcome]:
    """Ingest the given bundles, device after device."""
    return [outcome for device, entries in devices.items() for outcome in ingest_device(store, inbox, device, entries)]


def ingest_device(store: Store, inbox: Backend, device: str, entries: Iterable[Entry]) -> list[Outcome]:
    """Apply one device's bundles to its lineage in the order their bases chain."""
    entries = list(entries)
    try:
        lineage = _open_lineage(store, device)
    except MMStoreError as exc:
        reason = f"device {device!r} has no usable lineage in the store ({exc})"
        return [_quarantine(inbox, device, entry.key, reason) for entry in entries]
    outcomes, waiting = [], []
    for entry in entries:
        try:
            waiting.append(_read(store, inbox, lineage, entry))
        except NotFoundError:
            outcomes.append(Outcome(entry.key, device, "duplicate", reason="taken by another ingest run"))
        except MMStoreError as exc:
            outcomes.append(_quarantine(inbox, device, entry.key, str(exc)))
    waiting.sort(key=lambda b: (b.header.device_time, b.digest))
    while waiting:
        bundle = next((b for b in waiting if b.header.base_content == _content(lineage.head)), None)
        if bundle is None:
            bundle = waiting[0]
        waiting.remove(bundle)
        outcomes.append(_apply(store, inbox, lineage, bundle, waiting))
    return outcomes


def _open_lineage(store: Store, device: str) -> _Lineage:
    head_id = store.documents.ref(device)
    if head_id is None:
        raise MMStoreError("no lineage of that name; deploy the fleet to it first")
    return _Lineage(device, store.manifest(head_id), store.recover_rows(head_id))


def _read(store: Store, inbox: Backend, lineage: _Lineage, entry: Entry) -> Bundle:
    key = entry.key
    match = _PENDING.fullmatch(key)
    layout = store.arch_document(lineage.head).layout
    limit = 2 * lineage.head.n_models * layout.row_nbytes + _HEADER_ALLOWANCE
    what = f"bundle {key}"
    if match is None or match["device"] != lineage.name:
        raise MMStoreError(f"{what} is not named as a bundle of device {lineage.name!r}")
    if entry.size > limit:
        raise MMStoreError(f"{what} is larger than any bundle of this device's {lineage.head.n_models} models can be")
    data = inbox.get(key, at_most=entry.size + 1)  # replaced since the listing: never more than it claimed is read
    if len(data) != entry.size:
        raise MMStoreError(f"{what} changed while it was read; it is not a bundle a device finished")
    bundle = parse_bundle(data, match["digest"], lineage.name, layout, what)
    if bundle.header.arch != lineage.head.arch.id or bundle.header.n_models != lineage.head.n_models:
        raise MMStoreError(f"{what} holds models of another architecture or count than lineage {lineage.name!r}")
    return bundle


def _apply(store: Store, inbox: Backend, lineage: _Lineage, bundle: Bundle, waiting: list[Bundle]) -> Outcome:
    """Commit one bundle; a lineage another ingest run moved meanwhile is read again and the bundle retried once."""
    key = f"pending/{lineage.name}/{bundle.digest}{BUNDLE_SUFFIX}"
    conflict = ""
    for _ in range(2):
        try:
            return _apply_to_head(store, inbox, lineage, bundle, waiting, key)
        except ConflictError as exc:
            conflict = str(exc)
            _reload(store, lineage)
        except MMStoreError as exc:
            return _quarantine(inbox, lineage.name, key, str(exc))
    return Outcome(key, lineage.name, "deferred", reason=conflict)


def _apply_to_head(store: Store, inbox: Backend, lineage: _Lineage, bundle: Bundle, waiting: list[Bundle], key: str) -> Outcome:
    header, layout = bundle.header, store.arch_document(lineage.head).layout
    if header.content == _content(lineage.head) or _already_ingested(store, lineage, bundle.digest):
        inbox.delete(key)
        return Outcome(key, lineage.name, "duplicate", lineage.head.id, nbytes=bundle.nbytes)
    if header.base_content == _content(lineage.head):
        rows, rebased = apply_bundle(bundle, lineage.rows, layout), None
    else:
        base = _recent_with_content(store, lineage, header.base_content)
        if base is None:
            if any(other.header.content == header.base_content for other in waiting):
                return Outcome(key, lineage.name, "deferred", reason="waits for the bundle it builds on")
            if store.documents.ref(lineage.name) != lineage.head.id:
                raise ConflictError(f"lineage {lineage.name!r} moved while its bundles were read")
            return _quarantine(inbox, lineage.name, key, "it starts from models the store never held for this device")
        rows, rebased = _rebase(store, lineage, bundle, base), base.id
    set_id = _commit(store, lineage, bundle, rows, rebased)
    inbox.delete(key)
    return Outcome(key, lineage.name, "committed", set_id, nbytes=bundle.nbytes)


def _reload(store: Store, lineage: _Lineage) -> None:
    fresh = _open_lineage(store, lineage.name)
    lineage.head, lineage.rows = fresh.head, fresh.rows


def _rebase(store: Store, lineage: _Lineage, bundle: Bundle, base: Manifest) -> np.ndarray:
    """The bundle's changes laid over the newer head, if nothing it changed has changed since its base."""
    layout = store.arch_document(lineage.head).layout
    base_rows = store.recover_rows(base.id)
    new = apply_bundle(bundle, base_rows, layout)
    since = change_mask(lineage.rows, base_rows, layout)
    ours = change_mask(new, base_rows, layout)
    if (since & ours).any():
        models = sorted({int(i) for i in np.flatnonzero((since & ours).any(axis=1))})
        raise MMStoreError(f"it changes models {models[:8]} that also changed in the store since its base {base.id[:12]}")
    rows = lineage.rows.copy()
    for t, spec in enumerate(layout.tensors):
        columns = slice(spec.offset, spec.offset + spec.nbytes)
        rows[ours[:, t], columns] = new[ours[:, t], columns]
    return rows


def _commit(store: Store, lineage: _Lineage, bundle: Bundle, rows: np.ndarray, rebased: str | None) -> str:
    header = bundle.header
    doc = store.arch_document(lineage.head)
    meta = {"device_time": bundle_time(header), "bundle": bundle.digest, "bundle_kind": header.kind, "bundle_bytes": bundle.nbytes}
    if rebased:
        meta["rebased_from"] = rebased
    # No base: the lineage's head is the base, and `if_head` makes sure it is still the one the bundle was applied to.
    set_id = store.save(ModelSet(doc.arch, doc.layout, rows), "update", lineage=lineage.name, meta=meta, if_head=lineage.head.id)
    store.remember(set_id, rows)
    lineage.head, lineage.rows = store.manifest(set_id), rows
    return set_id


def _versions(store: Store, lineage: _Lineage) -> list[Manifest]:
    """The head and up to RECENT_VERSIONS versions before it, newest first."""
    found, current = [lineage.head], lineage.head
    while len(found) <= RECENT_VERSIONS and current.base and current.lineage == lineage.name:
        current = store.manifest(current.base)
        found.append(current)
    return found


def _already_ingested(store: Store, lineage: _Lineage, digest: str) -> bool:
    return any(m.meta.get("bundle") == digest for m in _versions(store, lineage))


def _recent_with_content(store: Store, lineage: _Lineage, content: str) -> Manifest | None:
    return next((m for m in _versions(store, lineage) if m.lineage == lineage.name and _content(m) == content), None)


def _content(manifest: Manifest) -> str | None:
    return getattr(manifest.data, "content", None)


def _quarantine(inbox: Backend, device: str, key: str, reason: str) -> Outcome:
    digest = key.rsplit("/", 1)[-1].removesuffix(BUNDLE_SUFFIX)
    target = quarantine_key(device, digest)
    note = {"reason": reason, "bundle": key, "time": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    inbox.put(target.removesuffix(BUNDLE_SUFFIX) + ".json", json.dumps(note).encode(), exclusive=False)
    inbox.move(key, target)
    return Outcome(key, device, "quarantined", reason=reason)


@dataclass(frozen=True)
class Swept:
    """What a sweep of the inbox removed: unfinished uploads and quarantined bundles past their keeping time."""

    unfinished: int
    quarantined: int
    nbytes: int


def sweep_inbox(inbox: Backend, grace: float, keep_quarantined: float, now: float | None = None) -> Swept:
    """Remove what is not a bundle below `pending/` after `grace` seconds, and quarantined ones after `keep_quarantined`.

    Waiting bundles are never removed: only ingest takes them, by committing or quarantining them.
    """
    now = time.time() if now is None else now
    unfinished = quarantined = nbytes = 0
    for entry in inbox.scan("pending") + inbox.scan("quarantine"):
        if _QUARANTINED.fullmatch(entry.key):
            if entry.mtime < now - keep_quarantined:
                inbox.delete(entry.key)
                quarantined, nbytes = quarantined + 1, nbytes + entry.size
        elif not _PENDING.fullmatch(entry.key) and entry.mtime < now - grace:
            inbox.delete(entry.key)
            unfinished, nbytes = unfinished + 1, nbytes + entry.size
    return Swept(unfinished + inbox.abort_uploads(now - grace), quarantined, nbytes)
