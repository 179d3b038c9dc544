"""The inbox devices push to: which bundles wait, where rejected ones go, and sweeping what is left behind.

Bundles wait as `pending/<device>/<digest>.mmb`; a rejected one moves to `quarantine/<device>/` with a
`<digest>.json` beside it stating the reason.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Literal

from .backend import Backend, Entry
from .bundle import BUNDLE_SUFFIX
from .concurrency import io_pool
from .errors import StoreURLError
from .manifest import LINEAGE_PATTERN

__all__ = ["PENDING", "Outcome", "ReadAhead", "Swept", "check_apart", "pending", "quarantine", "quarantine_key", "sweep_inbox"]

_QUARANTINED = re.compile(r"quarantine/[^/]+/[0-9a-f]{64}\.(mmb|json)")
PENDING = re.compile(r"pending/(?P<device>[^/]+)/(?P<digest>[0-9a-f]{64})" + re.escape(BUNDLE_SUFFIX))
_DEVICE = re.compile(LINEAGE_PATTERN)

# Bundles up to this size are read ahead, many at once, up to this much in all.
_PREFETCH_BUNDLE, _PREFETCH_BYTES = 4 << 20, 256 << 20

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


def check_apart(store: Backend, inbox: Backend) -> None:
    """Refuse an inbox that is the store, lies inside it or holds it: ingest's moves and sweeps never reach the store."""
    ours, theirs = _location(store), _location(inbox)
    if ours == theirs or ours.startswith(theirs + "/") or theirs.startswith(ours + "/"):
        raise StoreURLError(f"the inbox {inbox.url} and the store {store.url} overlap; give the inbox a location of its own "
                            "(by default the store's URL with -inbox appended)")


def _location(backend: Backend) -> str:
    # Local paths are compared as the directories they lead to, whatever links or dots name them.
    url = backend.url
    return "file://" + os.path.realpath(url) if "://" not in url else url.rstrip("/")


def quarantine_key(device: str, digest: str) -> str:
    """Where a rejected bundle is kept (its reason beside it, as `.json`)."""
    return f"quarantine/{device}/{digest}{BUNDLE_SUFFIX}"


def pending(inbox: Backend) -> dict[str, list[Entry]]:
    """The bundles waiting in the inbox (key, size, time), by device, from one listing; other names are not bundles."""
    found: dict[str, list[Entry]] = {}
    for entry in inbox.scan("pending"):
        match = PENDING.fullmatch(entry.key)
        if match and _DEVICE.fullmatch(match["device"]):
            found.setdefault(match["device"], []).append(entry)
    return {device: sorted(entries, key=lambda e: e.key) for device, entries in sorted(found.items())}


def quarantine(inbox: Backend, device: str, key: str, reason: str) -> Outcome:
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
        elif not PENDING.fullmatch(entry.key) and entry.mtime < now - grace:
            inbox.delete(entry.key)
            unfinished, nbytes = unfinished + 1, nbytes + entry.size
    return Swept(unfinished + inbox.abort_uploads(now - grace), quarantined, nbytes)


class ReadAhead:
    """The inbox, with the small bundles of a run already being read, many at once (what is read is checked where it is used)."""

    def __init__(self, inbox: Backend, entries: list[Entry]):
        self.inbox, self._pending, budget = inbox, {}, _PREFETCH_BYTES
        for entry in entries:
            if entry.size <= min(budget, _PREFETCH_BUNDLE):
                budget -= entry.size
                self._pending[entry.key] = io_pool().submit(inbox.get, entry.key, entry.size + 1)

    def read(self, entry: Entry) -> bytes:
        """The bundle's bytes, never more than one past its listed size (so a bundle replaced meanwhile shows)."""
        future = self._pending.pop(entry.key, None)
        return future.result() if future else self.inbox.get(entry.key, at_most=entry.size + 1)

    def __getattr__(self, name: str):
        """Everything else is the inbox's own."""
        return getattr(self.inbox, name)
