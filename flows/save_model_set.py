"""Flow: hash -> diff -> persist one model set, for every approach."""

from __future__ import annotations

from prefect import flow
from prefect.artifacts import create_table_artifact

from mmstore import ModelSet, ProvenanceRecord
from tasks.store import diff_sets, hash_set, persist

__all__ = ["save_model_set"]


@flow(name="save-model-set", validate_parameters=False)
def save_model_set(
    model_set: ModelSet, store: str, approach: str, base: str | None = None, lineage: str | None = None,
    meta: dict | None = None, provenance: ProvenanceRecord | None = None, base_set: ModelSet | None = None,
) -> dict:
    """Save a set against its base; the manifest write is the commit."""
    digests = hash_set(model_set)
    changed = diff_sets(digests, hash_set(base_set) if base_set is not None else None)
    saved = persist(store, model_set, approach, base, lineage, meta or {}, provenance, base_set)
    create_table_artifact(
        [{"set": saved["id"][:12], "approach": approach, "kind": saved["kind"], "bytes": saved["bytes"],
          "changed models": changed["models"], "changed tensors": changed["tensors"]}],
        key="saved-set", description=f"Saved into {store}",
    )
    return {**saved, "changed": changed}
