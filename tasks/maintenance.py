"""Tasks that keep a store healthy: prune lineages, collect garbage, verify a sample of sets and every lineage."""

from __future__ import annotations

import fnmatch
import random

from prefect import task

from mmstore import Store
from mmstore.retention import RetentionPolicy

__all__ = ["prune_lineages", "collect_garbage", "verify_sample"]


@task(name="prune-lineages")
def prune_lineages(store_url: str, pattern: str, policy: RetentionPolicy, dry_run: bool) -> list[dict]:
    """Apply the retention policy to every lineage whose name matches `pattern`; what each lost (none if it is empty)."""
    if policy.empty:
        return []
    store = Store.open(store_url)
    names = sorted(name for name in store.lineages() if fnmatch.fnmatchcase(name, pattern))
    # One collection afterwards serves every lineage.
    reports = [store.prune(name, policy, dry_run=dry_run, grace=None) for name in names]
    return [{"lineage": r.lineage, "kept": len(r.kept), "removed": len(r.removed) - len(r.in_use),
             "rebased": len(r.rebased), "manifest_bytes": r.manifest_bytes} for r in reports]


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
    store.verify_aliases()
    heads = sorted(set(store.lineages().values()))
    others = sorted({info.id for info in store.list()} - set(heads))
    picked = heads + random.Random(seed).sample(others, min(sample, len(others)))
    return {"verified": [set_id for set_id in picked if store.verify(set_id)], "sets": len(heads) + len(others)}
