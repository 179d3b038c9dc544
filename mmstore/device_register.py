"""The device register: which lineages belong to devices, and the newest bundle each has had ingested.

`devices/<name>.json` is written when a device is deployed and marks its lineage as a device's: ingest
commits only to lineages so marked, so a bundle under `pending/<name>/` cannot move the fleet's own
lineage or any other. After each commit ingest raises the entry's `newest` to the device time and
digest of the newest bundle it committed. The entry outlives every version prune removes, so a
bundle no newer than it is never committed again, however long after it is delivered a second time.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from .backend import Backend
from .blobs import Hex64
from .catalog_documents import Time, to_time
from .concurrency import each
from .errors import ConflictError, MMStoreError, NotFoundError
from .manifest import LineageName, Manifest, canonical_json, parse_versioned

__all__ = ["REGISTER_VERSION", "Newest", "DeviceEntry", "Registered", "register_key", "enrol", "read_entries", "raise_newest",
           "newest_of"]

REGISTER_VERSION = 1
_ENTRY_BYTES = 64 << 10
_RETRIES = 8


class Newest(BaseModel):
    """The newest bundle committed for a device: its device time and digest."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    time: Time
    bundle: Hex64


class DeviceEntry(BaseModel):
    """`devices/<name>.json`: a device's lineage, the set it was deployed from, and its newest ingested bundle."""

    model_config = ConfigDict(frozen=True, extra="forbid", regex_engine="python-re")

    schema_version: int = Field(REGISTER_VERSION, ge=1, le=REGISTER_VERSION)
    device: LineageName
    fleet: Hex64
    first_model: int = Field(ge=0, le=1 << 40)
    newest: Newest | None = None


def register_key(device: str) -> str:
    """Where a device's register entry lives in the store."""
    return f"devices/{device}.json"


def enrol(backend: Backend, device: str, fleet: str, first_model: int) -> DeviceEntry:
    """Mark `device`'s lineage as a device's (kept as it is if it already is one, with its newest bundle)."""
    entry = DeviceEntry(device=device, fleet=fleet, first_model=first_model)
    for _ in range(_RETRIES):
        raw, existing = _read(backend, device)
        if existing is not None:
            entry = entry.model_copy(update={"newest": existing.newest})
            if existing == entry:
                return existing
        try:
            backend.swap(register_key(device), raw, canonical_json(entry))
            return entry
        except ConflictError:
            continue
    raise ConflictError(f"the register entry of device {device!r} kept changing; deploy it again")


@dataclass(frozen=True)
class Registered:
    """A device's register entry as read: its bytes (what a swap compares), the entry, or why it is unusable."""

    raw: bytes | None
    entry: DeviceEntry | None
    problem: str = ""


def read_entries(backend: Backend, devices: Iterable[str]) -> dict[str, Registered]:
    """Each device's register entry, read in parallel; a missing one has no entry, a damaged one a problem."""
    names = list(devices)
    return dict(zip(names, each(lambda name: _registered(backend, name), names)))


def _registered(backend: Backend, device: str) -> Registered:
    try:
        return Registered(*_read(backend, device))
    except MMStoreError as exc:
        return Registered(None, None, str(exc))


def _read(backend: Backend, device: str) -> tuple[bytes | None, DeviceEntry | None]:
    key = register_key(device)
    try:
        raw = backend.get(key, at_most=_ENTRY_BYTES + 1)
    except NotFoundError:
        return None, None
    what = f"the register entry of device {device!r}"
    if len(raw) > _ENTRY_BYTES:
        raise MMStoreError(f"{what} is larger than it can be; the store was forged or damaged")
    entry = parse_versioned(raw, DeviceEntry, REGISTER_VERSION, what, "device register")
    if entry.device != device:
        raise MMStoreError(f"{what} names device {entry.device!r}; the store was forged or damaged")
    return raw, entry


def newest_of(entry: DeviceEntry, head: Manifest) -> str | None:
    """The newest device time committed for the device: its register entry's, or its head's if newer.

    The head's own bundle time covers a commit whose register update was cut off by a crash.
    """
    times = [entry.newest.time] if entry.newest else []
    if isinstance(head.meta.get("bundle"), str) and isinstance(head.meta.get("device_time"), str):
        try:
            times.append(to_time(head.meta["device_time"]))
        except MMStoreError:
            pass  # a head whose metadata holds no time: the entry alone decides
    return max(times, default=None)


def raise_newest(backend: Backend, device: str, read: Registered, time: str | datetime, bundle: str) -> None:
    """Raise the device's `newest` to (time, bundle) if that is newer, by compare-and-swap against the entry `read`."""
    newest = Newest(time=to_time(time), bundle=bundle)
    raw, entry = read.raw, read.entry
    for _ in range(_RETRIES):
        if entry is None:
            return  # not (or no longer) a device's lineage: nothing to raise
        if entry.newest is not None and entry.newest.time >= newest.time:
            return
        try:
            backend.swap(register_key(device), raw, canonical_json(entry.model_copy(update={"newest": newest})))
            return
        except ConflictError:
            raw, entry = _read(backend, device)
    raise ConflictError(f"the register entry of device {device!r} kept changing; ingest again")
