"""Tasks over a model store: load, hash, diff, persist, resolve, recover, verify, export."""

from __future__ import annotations

import numpy as np
from prefect import task

from mmstore import ModelSet, ProvenanceRecord, RecoveryContext, Store
from mmstore.diff import tensor_digests
from mmstore.export import export_safetensors

__all__ = ["resolve_set", "load_set", "hash_set", "diff_sets", "persist", "resolve_chain", "recover_set", "export_set"]


@task(name="resolve-set", retries=2, retry_delay_seconds=1)
def resolve_set(store_url: str, ref: str) -> str:
    """The full id of the set a ref names (id, unique prefix or lineage)."""
    return Store.open(store_url).resolve(ref)


@task(name="load-set", retries=2, retry_delay_seconds=1)
def load_set(store_url: str, ref: str) -> tuple[str, dict, ModelSet]:
    """The set a ref names (id, prefix or lineage): its id, its metadata and its models."""
    store = Store.open(store_url)
    set_id = store.resolve(ref)
    return set_id, dict(store.manifest(set_id).meta), store.recover(set_id)


@task(name="hash")
def hash_set(model_set: ModelSet) -> np.ndarray:
    """Per-model, per-tensor digests of a set (what change detection compares)."""
    return tensor_digests(model_set.data, model_set.layout)


@task(name="diff")
def diff_sets(digests: np.ndarray, base_digests: np.ndarray | None) -> dict[str, int]:
    """How many models and tensors differ from the base."""
    if base_digests is None:
        return {"models": len(digests), "tensors": int(digests.shape[0] * digests.shape[1])}
    changed = np.any(digests != base_digests, axis=2)
    return {"models": int(changed.any(axis=1).sum()), "tensors": int(changed.sum())}


@task(name="persist")
def persist(store_url: str, model_set: ModelSet, approach: str, base: str | None, lineage: str | None,
            meta: dict, provenance: ProvenanceRecord | None = None, base_set: ModelSet | None = None) -> dict:
    """Save the set (the manifest write is the commit) and report its id and size."""
    store = Store.open(store_url)
    if base and base_set is not None:
        store.keep(base, base_set)  # the base's values at hand: deltas are XOR-coded
    options = {"provenance": provenance} if approach == "provenance" else {}
    set_id = store.save(model_set, approach=approach, base=base, lineage=lineage, meta=meta, **options)
    return {"id": set_id, "bytes": store.size(set_id), "kind": getattr(store.manifest(set_id).data, "kind", approach)}


def _chain_key(context, parameters: dict) -> str:
    # Sets are immutable and named by digest, so a set id is a complete cache key for its chain.
    return f"chain-{parameters['set_id']}"


@task(name="resolve-chain", retries=2, retry_delay_seconds=1, cache_key_fn=_chain_key, result_serializer="json")
def resolve_chain(store_url: str, set_id: str) -> list[dict]:
    """The set and its bases down to the root, newest first."""
    return [info.model_dump() for info in Store.open(store_url).log(set_id)]


@task(name="recover", retries=1)
def recover_set(store_url: str, set_id: str, models: list[int] | None, executor: str) -> tuple[ModelSet, list[str]]:
    """Recover a set (replaying provenance with the executor named) and verify it with the same options."""
    store = Store.open(store_url)
    context = RecoveryContext(models=models, executor=executor)
    model_set = store.recover(set_id, context=context)
    # The same store object: what the recovery replayed is at hand, so verifying does not replay it again.
    return model_set, store.verify(set_id, context=context)


@task(name="export")
def export_set(model_set: ModelSet, out_dir: str, set_id: str, models: list[int] | None) -> list[str]:
    """One `.safetensors` file per model in `out_dir`."""
    return export_safetensors(model_set, out_dir, set_id, models)
