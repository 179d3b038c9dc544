"""Ingest: turn the bundles devices left in the inbox into versions of their lineages.

The inbox is untrusted input. A bundle is read only below `pending/<device>/`, bounded by what the
device's models can need, checked against the digest it is named by and against the lineage's
architecture, and decoded only against models the store holds for that device. Each device's
bundles are applied in the order their bases chain, each commit moves the lineage with
compare-and-swap, and a bundle delivered again changes nothing. What cannot be applied is moved to
`quarantine/<device>/` with a readable reason beside it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from .backend import Backend, Entry
from .bundle import BUNDLE_SUFFIX, Bundle, apply_bundle, bundle_time, change_mask, parse_bundle
from .bundle_provenance import replay_bundle
from .catalog_documents import to_time
from .commit import LineageBatch, NewVersion
from .concurrency import each
from .device_register import Registered, newest_of, raise_newest, read_entries
from .errors import ConflictError, MMStoreError, NotFoundError
from .inbox import PENDING, Outcome, ReadAhead, Swept, check_apart, pending, quarantine, quarantine_key, sweep_inbox
from .manifest import Manifest
from .modelset import ModelSet
from .store import Store

__all__ = ["Outcome", "Swept", "pending", "ingest", "ingest_device", "quarantine_key", "sweep_inbox", "RECENT_VERSIONS",
           "DATASET_ALLOWANCE"]

# How far back a stale or repeated bundle is looked for: a device is at most this many versions behind.
RECENT_VERSIONS = 64
_HEADER_ALLOWANCE = 1 << 20
# What a provenance bundle may carry in datasets beyond that (a bundle is read whole before it is checked).
DATASET_ALLOWANCE = 64 << 20
# Bundles committed together: one pack and one inbox deletion for this many, a few MB of parameters held.
GROUP = 256


@dataclass
class _Lineage:
    """A device's lineage while its bundles are applied: its head and the head's rows."""

    name: str
    head: Manifest
    rows: np.ndarray
    registered: Registered
    newest: str | None = None


def ingest(store: Store, inbox: Backend, devices: dict[str, list[Entry]], group: int = GROUP,
           heads: dict[str, str] | None = None) -> list[Outcome]:
    """Ingest the given bundles: each device's applied in the order their bases chain, committed in groups.

    `heads` holds the lineage heads a caller saw last (kept up to date here) and saves reading each
    device's ref; a stale one costs a lost compare-and-swap and a retry, never a wrong commit.
    """
    heads = {} if heads is None else heads
    check_apart(store.backend, inbox)
    fetched = ReadAhead(inbox, [entry for entries in devices.values() for entry in entries])
    registered = read_entries(store.backend, devices)
    outcomes: list[Outcome] = []
    staged: list[_Staged] = []
    for device, entries in devices.items():
        stage = stage_device(store, fetched, device, entries, registered[device], heads.pop(device, None))
        outcomes += stage.outcomes
        staged.append(stage)
        if sum(len(s.accepted) for s in staged) >= group:
            outcomes += _commit_group(store, inbox, staged, heads)
            staged = []
    return outcomes + _commit_group(store, inbox, staged, heads)


def ingest_device(store: Store, inbox: Backend, device: str, entries: Iterable[Entry]) -> list[Outcome]:
    """Apply one device's bundles to its lineage in the order their bases chain."""
    return ingest(store, inbox, {device: list(entries)})


@dataclass
class _Staged:
    """A device's bundles applied in memory: what to commit on top of `head`, and what became of the others."""

    lineage: _Lineage
    head: str
    accepted: list[tuple[Bundle, NewVersion]]
    outcomes: list[Outcome]


def stage_device(store: Store, inbox: Backend, device: str, entries: Iterable[Entry], registered: Registered,
                 known: str | None = None) -> _Staged:
    """Read, check and apply one device's bundles in memory (nothing is committed); a lineage moved meanwhile is read again once.

    Only a lineage the device register marks as this device's takes bundles. `known` is the head the
    caller saw last, used instead of reading the lineage's ref if it is still a set.
    """
    entries = list(entries)
    inbox = inbox if isinstance(inbox, ReadAhead) else ReadAhead(inbox, entries)
    for attempt in range(2):
        try:
            lineage = _open_lineage(store, device, registered, known if attempt == 0 else None)
        except MMStoreError as exc:
            reason = f"device {device!r} has no usable lineage in the store ({exc})"
            return _Staged(None, "", [], [quarantine(inbox, device, entry.key, reason) for entry in entries])
        try:
            return _stage(store, inbox, lineage, entries)
        except ConflictError as exc:
            moved = str(exc)
    return _Staged(lineage, lineage.head.id, [], [Outcome(e.key, device, "deferred", reason=moved) for e in entries])


def _stage(store: Store, inbox: Backend, lineage: _Lineage, entries: list[Entry]) -> _Staged:
    stage = _Staged(lineage, lineage.head.id, [], [])
    waiting = []
    for entry in entries:
        try:
            waiting.append(_read(store, inbox, lineage, entry))
        except NotFoundError:
            stage.outcomes.append(Outcome(entry.key, lineage.name, "duplicate", reason="taken by another ingest run"))
        except MMStoreError as exc:
            stage.outcomes.append(quarantine(inbox, lineage.name, entry.key, str(exc)))
    waiting.sort(key=lambda b: (b.header.device_time, b.digest))
    content = _content(lineage.head)
    while waiting:
        bundle = next((b for b in waiting if b.header.base_content == content), waiting[0])
        waiting.remove(bundle)
        key = f"pending/{lineage.name}/{bundle.digest}{BUNDLE_SUFFIX}"
        try:
            rows, meta, status = _apply(store, lineage, bundle, waiting, content, stage)
        except ConflictError:
            raise
        except MMStoreError as exc:
            stage.outcomes.append(quarantine(inbox, lineage.name, key, str(exc)))
            continue
        if status != "accepted":
            stage.outcomes.append(Outcome(key, lineage.name, status, reason=meta.get("reason", ""), nbytes=bundle.nbytes))
            continue
        version = NewVersion(rows.models, meta, rows.approach, rows.options)
        stage.accepted.append((bundle, version))
        lineage.rows, content = version.models.data, bundle.header.content
        lineage.newest = to_time(bundle.header.device_time)
    return stage


def _apply(store: Store, lineage: _Lineage, bundle: Bundle, waiting: list[Bundle], content: str | None,
           stage: _Staged) -> tuple[NewVersion | None, dict, str]:
    """The rows after `bundle` over the lineage's newest rows (committed or staged) and its set's metadata, or why not."""
    header = bundle.header
    staged = {b.digest for b, _ in stage.accepted}
    if header.content == content or bundle.digest in staged or _already_ingested(store, lineage, bundle.digest):
        return None, {}, "duplicate"
    when = to_time(header.device_time)
    if lineage.newest is not None and when <= lineage.newest:
        raise MMStoreError(f"it is no newer ({when}) than the newest bundle this device has had ingested ({lineage.newest}): "
                           "a bundle delivered again, or a device clock that went back")
    meta = {"device_time": bundle_time(header), "bundle": bundle.digest, "bundle_kind": header.kind, "bundle_bytes": bundle.nbytes}
    if header.base_content == content:
        return _decode(store, lineage, bundle, lineage.rows), meta, "accepted"
    base = _recent_with_content(store, lineage, header.base_content)
    if base is None:
        if any(other.header.content == header.base_content for other in waiting):
            return None, {"reason": "waits for the bundle it builds on"}, "deferred"
        if store.documents.ref(lineage.name) != lineage.head.id:
            raise ConflictError(f"lineage {lineage.name!r} moved while its bundles were read")
        raise MMStoreError("it starts from models the store never held for this device")
    # A rebased provenance bundle is kept as its changed tensors: its training started from other models.
    return _rebase(store, lineage, bundle, base), {**meta, "rebased_from": base.id}, "accepted"


def _decode(store: Store, lineage: _Lineage, bundle: Bundle, base_rows: np.ndarray) -> NewVersion:
    """The models a bundle holds over `base_rows`: decoded tensors, or for a provenance bundle models re-trained here."""
    doc = store.arch_document(lineage.head)
    if bundle.header.kind == "provenance":
        rows, record = replay_bundle(bundle, base_rows, doc, store, lineage.name)
        return NewVersion(ModelSet(doc.arch, doc.layout, rows), approach="provenance", options={"provenance": record})
    return NewVersion(ModelSet(doc.arch, doc.layout, apply_bundle(bundle, base_rows, doc.layout)))


def _commit_group(store: Store, inbox: Backend, staged: list[_Staged], heads: dict[str, str]) -> list[Outcome]:
    """Commit the staged versions of many devices at once; their bundles then leave the inbox in one request."""
    staged = [s for s in staged if s.lineage is not None]
    committing = [s for s in staged if s.accepted]
    results = store.save_lineages([_batch(s) for s in committing])
    outcomes = []
    for stage in staged:
        result = results.get(stage.lineage.name, [])
        if isinstance(result, list):
            heads[stage.lineage.name] = result[-1] if result else stage.head
    for stage in committing:
        result = results[stage.lineage.name]
        for i, (bundle, _) in enumerate(stage.accepted):
            key = f"pending/{stage.lineage.name}/{bundle.digest}{BUNDLE_SUFFIX}"
            if isinstance(result, ConflictError):
                outcomes.append(Outcome(key, stage.lineage.name, "deferred", reason=str(result)))
            elif isinstance(result, MMStoreError):
                outcomes.append(quarantine(inbox, stage.lineage.name, key, str(result)))
            else:
                outcomes.append(Outcome(key, stage.lineage.name, "committed", result[i], nbytes=bundle.nbytes))
    _raise_newest(store, [s for s in committing if isinstance(results[s.lineage.name], list)])
    done = [o.key for s in staged for o in s.outcomes if o.status == "duplicate"] + [o.key for o in outcomes if o.status == "committed"]
    inbox.delete_many(done)
    return outcomes


def _raise_newest(store: Store, committed: list[_Staged]) -> None:
    """Record each device's newest committed bundle in its register entry, which outlives any prune."""
    def one(stage: _Staged) -> None:
        bundle = stage.accepted[-1][0]
        try:
            raise_newest(store.backend, stage.lineage.name, stage.lineage.registered, bundle.header.device_time, bundle.digest)
        except MMStoreError:
            pass  # the head just committed carries the same time and digest until the next commit records it
    each(one, committed)


def _batch(stage: _Staged) -> LineageBatch:
    return LineageBatch(stage.lineage.name, stage.head, [version for _, version in stage.accepted])


def _open_lineage(store: Store, device: str, registered: Registered, known: str | None = None) -> _Lineage:
    if registered.problem:
        raise MMStoreError(registered.problem)
    if registered.entry is None:
        raise MMStoreError(f"lineage {device!r} is not a device's; only lineages deployed with `mmstore device deploy` take bundles")
    head = _find_lineage(store, device, known)
    return _Lineage(device, head, store.recover_rows(head.id), registered, newest_of(registered.entry, head))


def _find_lineage(store: Store, device: str, known: str | None) -> Manifest:
    if known is not None:
        try:
            head = store.manifest(known)
            if head.lineage == device:
                return head
        except MMStoreError:
            pass  # pruned or re-based since: the ref says where the lineage is now
    head_id = store.documents.ref(device)
    if head_id is None:
        raise MMStoreError("no lineage of that name; deploy the fleet to it first")
    head = store.manifest(head_id)
    if getattr(head.data, "kind", None) == "slice" and store.cached_rows(head_id) is None and head.base:
        _hold_deployed(store, head.base)
    return head


_DEPLOYED: dict[tuple[str, str], np.ndarray] = {}
_DEPLOYED_LOCK = threading.Lock()
# A deployed set up to this size is read whole once per process: every device's first bundle is a slice of it.
_DEPLOYED_BYTES = 1 << 30


def _hold_deployed(store: Store, set_id: str) -> None:
    """Keep the deployed fleet set's rows at hand, shared read-only by every ingest slot of this process."""
    manifest = store.manifest(set_id)
    if manifest.n_models * store.arch_document(manifest).layout.row_nbytes > _DEPLOYED_BYTES:
        return  # each device's slice is then read on its own, as exactly its bytes
    with _DEPLOYED_LOCK:
        rows = _DEPLOYED.get((store.url, set_id))
        if rows is None:
            rows = store.recover_rows(set_id)
            rows.setflags(write=False)
            _DEPLOYED.clear()  # one deployed set at a time: a new deployment replaces the last
            _DEPLOYED[(store.url, set_id)] = rows
    store.remember(set_id, rows, copy=False)


def _read(store: Store, inbox: Backend, lineage: _Lineage, entry: Entry) -> Bundle:
    key = entry.key
    match = PENDING.fullmatch(key)
    layout = store.arch_document(lineage.head).layout
    limit = 2 * lineage.head.n_models * layout.row_nbytes + _HEADER_ALLOWANCE + DATASET_ALLOWANCE
    what = f"bundle {key}"
    if match is None or match["device"] != lineage.name:
        raise MMStoreError(f"{what} is not named as a bundle of device {lineage.name!r}")
    if entry.size > limit:
        raise MMStoreError(f"{what} is larger than any bundle of this device's {lineage.head.n_models} models can be")
    data = inbox.read(entry)
    if len(data) != entry.size:
        raise MMStoreError(f"{what} changed while it was read; it is not a bundle a device finished")
    bundle = parse_bundle(data, match["digest"], lineage.name, layout, what)
    if bundle.header.arch != lineage.head.arch.id or bundle.header.n_models != lineage.head.n_models:
        raise MMStoreError(f"{what} holds models of another architecture or count than lineage {lineage.name!r}")
    return bundle


def _rebase(store: Store, lineage: _Lineage, bundle: Bundle, base: Manifest) -> NewVersion:
    """The bundle's changes laid over the newer head, if nothing it changed has changed since its base."""
    doc = store.arch_document(lineage.head)
    layout = doc.layout
    base_rows = store.recover_rows(base.id)
    new = _decode(store, lineage, bundle, base_rows).models.data
    since = change_mask(lineage.rows, base_rows, layout)
    ours = change_mask(new, base_rows, layout)
    if (since & ours).any():
        models = sorted({int(i) for i in np.flatnonzero((since & ours).any(axis=1))})
        raise MMStoreError(f"it changes models {models[:8]} that also changed in the store since its base {base.id[:12]}")
    rows = lineage.rows.copy()
    for t, spec in enumerate(layout.tensors):
        columns = slice(spec.offset, spec.offset + spec.nbytes)
        rows[ours[:, t], columns] = new[ours[:, t], columns]
    return NewVersion(ModelSet(doc.arch, layout, rows))


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
