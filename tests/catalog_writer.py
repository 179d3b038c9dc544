"""A writer for the catalog's concurrency tests: saves versions of its own lineages and records each one.

Its own small module, so that a spawned writer process imports only what it needs.
"""

from __future__ import annotations

from typing import Any

from bench.catalog import device_set, device_time
from mmstore import Catalog, Settings, Store

__all__ = ["record_versions"]


def record_versions(url: str, worker: int, versions: int, start: Any = None, **options) -> None:
    """Save `versions` versions on lineages car-<worker>-0 and car-<worker>-1, recording each after its commit.

    `start`, a barrier shared by the writers, lines them up once they are ready, so their records overlap.
    """
    store = Store.open(url, Settings(durable=False), **options)
    catalog = Catalog(store)
    if start is not None:
        start.wait(60)
    for version in range(versions):
        for lineage in range(2):
            set_id = store.save(device_set(2, worker * 100 + version), lineage=f"car-{worker}-{lineage}",
                                meta={"device_time": device_time(worker, version)})
            catalog.record([set_id])
