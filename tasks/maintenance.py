"""Tasks that keep a store healthy: collect garbage, verify a sample of sets and every lineage."""

from __future__ import annotations

import random

from prefect import task

from mmstore import Store

__all__ = ["collect_garbage", "verify_sample"]


@task(name="collect-garbage")
def collect_garbage(store_url: str, grace_seconds: float, dry_run: bool) -> dict:
    """Remove what no set references and is older than the grace period; what was (or would be) freed."""
    report = Store.open(store_url).collect_garbage(grace_seconds, dry_run=dry_run)
    return {"blobs": report.blobs, "temp_files": report.temp_files, "uploads": report.uploads,
            "freed": report.freed, "kept_within_grace": report.young, "dry_run": report.dry_run}


@task(name="verify-sample")
def verify_sample(store_url: str, sample: int, seed: int) -> dict:
    """Check every lineage and every byte of each lineage's head plus `sample` other sets drawn at random."""
    store = Store.open(store_url)
    store.verify_lineages()
    heads = sorted(set(store.lineages().values()))
    others = sorted({info.id for info in store.list()} - set(heads))
    picked = heads + random.Random(seed).sample(others, min(sample, len(others)))
    return {"verified": [set_id for set_id in picked if store.verify(set_id)], "sets": len(heads) + len(others)}
