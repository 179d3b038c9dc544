"""Tasks that bring device bundles into the store: list them by slot, ingest and index some slots, publish the
catalog heads once, sweep the inbox."""

from __future__ import annotations

import zlib
from dataclasses import asdict

from prefect import get_run_logger, task

from mmstore import MMStoreError, Settings, Store
from mmstore.catalog import Catalog, Head
from mmstore.catalog_writes import HeadsSnapshot
from mmstore.backend import Entry, open_backend
from mmstore.ingest import ingest, pending, sweep_inbox

__all__ = ["catalog_heads", "pending_batches", "spread", "ingest_slots", "publish_heads", "sweep"]

# Rows of every device a batch touches stay at hand: a device's next bundle is a delta on them.
_CACHED_SETS = 4096
# One store per store URL, shared by a run's ingest tasks (each thread's save has its own pack): it keeps
# every device's newest rows, and the heads ingest moved, between runs.
_STORES: dict[str, tuple[Store, dict[str, str]]] = {}
# One catalog writer per store, which remembers the documents it wrote: the next run swaps against them unread.
_CATALOGS: dict[str, Catalog] = {}


def _ingest_store(store_url: str) -> tuple[Store, dict[str, str]]:
    if store_url not in _STORES:
        _STORES.setdefault(store_url, (Store.open(store_url, Settings(cache_sets=_CACHED_SETS)), {}))
    return _STORES[store_url]


def _catalog(store_url: str) -> Catalog:
    if store_url not in _CATALOGS:
        _CATALOGS.setdefault(store_url, Catalog(_ingest_store(store_url)[0]))
    return _CATALOGS[store_url]


@task(name="catalog-heads", retries=2, retry_delay_seconds=1)
def catalog_heads(store_url: str) -> HeadsSnapshot | None:
    """The fleet catalog's heads before this run indexes anything (None: no catalog yet)."""
    return _catalog(store_url).before()


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
def ingest_slots(store_url: str, inbox_url: str, slots: dict[int, dict[str, list[Entry]]]) -> tuple[list[dict], dict[str, Head | None]]:
    """Apply the given slots' devices' bundles to their lineages, as one group commit, and extend their catalog
    documents; what became of each bundle, and the catalog heads entries to publish."""
    store, heads = _ingest_store(store_url)
    devices = {device: entries for batch in slots.values() for device, entries in batch.items()}
    done = ingest(store, open_backend(inbox_url), devices, heads=heads)
    committed = [o for o in done if o.status == "committed"]
    entries: dict[str, Head | None] = {}
    if committed:
        moved: dict[str, list[str]] = {}
        for outcome in committed:  # the manifests just written, at hand in the shared store: nothing is read again
            manifest = store.manifest(outcome.set_id)
            moved.setdefault(manifest.lineage, [manifest.base, outcome.set_id])[1] = outcome.set_id
        try:
            entries = _catalog(store_url).index([o.set_id for o in committed], {name: (old, new) for name, (old, new) in moved.items()})
        except MMStoreError as exc:  # the catalog is a cache: the versions are committed, a later record or rebuild catches up
            get_run_logger().warning("the fleet catalog was not updated (%s); run `mmstore fleet rebuild`", exc)
    return [asdict(outcome) for outcome in done], entries


@task(name="publish-heads", retries=2, retry_delay_seconds=1)
def publish_heads(store_url: str, before: HeadsSnapshot | None, entries: dict[str, Head | None]) -> None:
    """Publish the run's catalog heads in one swap over the heads read before its documents were written."""
    try:
        _catalog(store_url).publish(before, entries)
    except MMStoreError as exc:
        get_run_logger().warning("the fleet catalog's heads were not updated (%s); run `mmstore fleet rebuild`", exc)


@task(name="sweep-inbox", retries=2, retry_delay_seconds=1)
def sweep(inbox_url: str, grace_hours: float, quarantine_days: float) -> dict:
    """Remove unfinished uploads past the grace period and quarantined bundles past their keeping time."""
    return asdict(sweep_inbox(open_backend(inbox_url), grace_hours * 3600, quarantine_days * 86400))
