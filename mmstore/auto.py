"""`approach="auto"`: the cost model's choice among the approaches for one central save."""

from __future__ import annotations

from typing import Any

import numpy as np

from .approaches.base import StoreAccess
from .costmodel import Choice, Option, choose, delta_seconds, replay_seconds, snapshot_seconds
from .diff import DIGEST_SIZE, tensor_digests
from .manifest import Manifest, canonical_json
from .modelset import ModelSet

__all__ = ["AUTO", "choose_approach"]

AUTO = "auto"


def choose_approach(model_set: ModelSet, base: Manifest | None, store: StoreAccess, options: dict[str, Any]) -> Choice:
    """Price storing `model_set` over `base` as a snapshot, as changed tensors, and (given a record) as provenance."""
    settings, nbytes = store.settings, model_set.nbytes
    digests = tensor_digests(model_set.data, model_set.layout)
    snapshot = nbytes + digests.nbytes
    candidates = [Option("baseline", nbytes, nbytes, snapshot_seconds(nbytes, settings))]
    base_rows = _base_rows(base, model_set, store)
    if base_rows is None:
        candidates.append(Option("update", snapshot, snapshot, snapshot_seconds(snapshot, settings)))
    else:
        changed = np.any(digests != tensor_digests(base_rows, model_set.layout), axis=2)
        sizes = np.array([spec.nbytes + DIGEST_SIZE for spec in model_set.layout.tensors])
        delta = int((changed * sizes).sum()) + changed.size // 8
        depth = getattr(base.data, "depth", 0) + 1 if base.approach == "update" else 1
        candidates.append(Option("update", delta, delta, delta_seconds(snapshot, delta, depth, settings)))
    record = options.get("provenance")
    if record is not None and base_rows is not None:
        stored = len(canonical_json(record.model_copy(update={"seconds": {}})))
        base_seconds = snapshot_seconds(snapshot, settings)
        recipes = [recipe for recipe, _ in record.changes.values()]
        candidates.append(Option("provenance", stored, stored, replay_seconds(base_seconds, recipes, record.seconds, settings)))
    return choose(candidates, settings)


def _base_rows(base: Manifest | None, model_set: ModelSet, store: StoreAccess) -> np.ndarray | None:
    if base is None or base.n_models != len(model_set):
        return None
    rows = store.cached_rows(base.id)
    # Reading a provenance base could mean replaying it; an update save over one writes a snapshot anyway.
    if rows is None and base.approach != "provenance":
        rows = store.recover_rows(base.id)
    return rows
