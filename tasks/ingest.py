"""Tasks that bring device bundles into the store: list them by slot, ingest and index some slots, sweep the inbox."""

from __future__ import annotations

import zlib
from dataclasses import asdict

from prefect import get_run_logger, task

from mmstore import MMStoreError, Settings, Store
from mmstore.catalog import Catalog
from mmstore.backend import Entry, open_backend
from mmstore.ingest import ingest, pending, sweep_inbox

__all__ = ["pending_batches", "spread", "ingest_slots", "sweep"]

# Rows of every device a batch touches stay at hand: a device's next bundle is a delta on them.
_CACHED_SETS = 4096
# Devices go to the same ingest slot in every run, whose store keeps their newest rows and heads between runs.
_SLOTS: dict[tuple[str, int], tuple[Store, dict[str, str]]] = {}
# One catalog writer per store, which remembers the documents it wrote: the next run swaps against them unread.
_CATALOGS: dict[str, Catalog] = {}


@task(name="pending-batches", retries=2, retry_delay_seconds=1)
def pending_batches(inbox_url: str, batches: int) -> dict[int, dict[str, list[Entry]]]:
    """The waiting bundles by ingest slot (a device always in the same one), from one listing of the inbox."""
    slots: dict[int, dict[str, list[Entry]]] = {}
    for device, entries in pending(open_backend(inbox_url)).items():
        slots.setdefault(zlib.crc32(device.encode()) % batches, {})[device] = entries
    return slots


def spread(slots: dict[int, dict[str, list[Entry]]], per_task: int) -> list[dict[int, dict[str, list[Entry]]]]:
    """The slots dealt to as many tasks as there are `per_task` bundles waiting (at least one, at most one per slot)."""
    waiting = sum(len(entries) for batch in slots.values() for entries in batch.values())
    tasks = min(len(slots), max(1, -(-waiting // per_task)))
    groups: list[dict[int, dict[str, list[Entry]]]] = [{} for _ in range(tasks)]
    for i, (slot, batch) in enumerate(sorted(slots.items())):
        groups[i % tasks][slot] = batch
    return [group for group in groups if group]


@task(name="ingest-slots")
def ingest_slots(store_url: str, inbox_url: str, slots: dict[int, dict[str, list[Entry]]]) -> list[dict]:
    """Apply the given slots' devices' bundles to their lineages and index the new versions; what became of each bundle."""
    outcomes, stores = [], []
    for slot, batch in slots.items():
        if (store_url, slot) not in _SLOTS:
            _SLOTS[(store_url, slot)] = Store.open(store_url, Settings(cache_sets=_CACHED_SETS)), {}
        store, heads = _SLOTS[(store_url, slot)]
        done = ingest(store, open_backend(inbox_url), batch, heads=heads)
        stores += [(store, o.set_id) for o in done if o.status == "committed"]
        outcomes += [asdict(outcome) for outcome in done]
    if stores:
        catalog = _CATALOGS.get(store_url) or _CATALOGS.setdefault(store_url, Catalog(Store.open(store_url)))
        moved: dict[str, list[str]] = {}
        for store, set_id in stores:  # the manifests just written, from the stores that wrote them: nothing is read again
            manifest = store.manifest(set_id)
            catalog.store.documents.remember_manifest(manifest)
            moved.setdefault(manifest.lineage, [manifest.base, set_id])[1] = set_id
        try:
            catalog.record([set_id for _, set_id in stores], {name: (old, new) for name, (old, new) in moved.items()})
        except MMStoreError as exc:  # the catalog is a cache: the versions are committed, a later record or rebuild catches up
            get_run_logger().warning("the fleet catalog was not updated (%s); run `mmstore fleet rebuild`", exc)
    return outcomes


@task(name="sweep-inbox", retries=2, retry_delay_seconds=1)
def sweep(inbox_url: str, grace_hours: float, quarantine_days: float) -> dict:
    """Remove unfinished uploads past the grace period and quarantined bundles past their keeping time."""
    return asdict(sweep_inbox(open_backend(inbox_url), grace_hours * 3600, quarantine_days * 86400))
