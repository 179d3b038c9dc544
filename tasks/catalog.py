"""Tasks over the fleet catalog: each device's version at a time, batched recoveries, one joined set."""

from __future__ import annotations

import numpy as np
from prefect import task

from mmstore import ArchitectureError, ModelSet, NotFoundError, Store
from mmstore.catalog import Catalog

__all__ = ["versions_at", "recover_joined", "join_sets"]


@task(name="versions-at", retries=2, retry_delay_seconds=1)
def versions_at(store_url: str, match: str, when: str) -> tuple[list[dict], list[str]]:
    """Every matching lineage's version at `when` in name order, and the lineages that held none yet."""
    catalog = Catalog(Store.open(store_url))
    found, absent = [], []
    for name in catalog.heads(match):
        try:
            version = catalog.at(name, when)
        except NotFoundError:
            absent.append(name)
            continue
        found.append({"lineage": name, "id": version.id, "time": version.time})
    return found, absent


@task(name="recover-joined", retries=1)
def recover_joined(store_url: str, set_ids: list[str]) -> ModelSet:
    """The sets recovered (each verified on the way) and joined in the order given."""
    store = Store.open(store_url)
    return join_sets.fn([store.recover(set_id) for set_id in set_ids])


@task(name="join-sets")
def join_sets(parts: list[ModelSet]) -> ModelSet:
    """One set holding every part's models in order; the parts must share architecture and layout."""
    first = parts[0]
    if any((p.arch, p.layout) != (first.arch, first.layout) for p in parts):
        raise ArchitectureError("the devices' sets differ in architecture or layout; recover them separately")
    return ModelSet(first.arch, first.layout, np.concatenate([p.data for p in parts]), trusted=first.trusted)
