"""Chains thousands of versions deep are walked iteratively: they recover, or are refused in one clear line."""

from __future__ import annotations

import numpy as np
import pytest

from mmstore import ArchSpec, ModelSet, Settings, Store
from mmstore.approaches.provenance import ProvenanceReplay
from mmstore.approaches.update import UpdateDelta
from mmstore.digest import digest_bytes
from mmstore.layout import Layout
from mmstore.manifest import Manifest, canonical_json
from mmstore.provenance_records import ChangeList, RecipeDocument, encode_changes
from mmstore.replay import InProcessExecutor

from .archs import Small

SETTINGS = Settings(trusted_modules=("tests",), durable=False)
LAYOUT = Layout.of(Small().state_dict())


def _first(store: Store, approach: str) -> tuple[Manifest, ModelSet]:
    data = np.random.default_rng(0).integers(0, 256, (5, LAYOUT.row_nbytes), dtype=np.uint8)
    models = ModelSet(ArchSpec(factory="tests.archs:Small"), LAYOUT, data)
    return store.manifest(store.save(models, approach=approach)), models


def _stack(store: Store, first: Manifest, versions: int, document) -> str:
    """Write `versions` manifests on top of `first`, each naming the previous as its base (no training needed)."""
    head = first.id
    for version in range(1, versions + 1):
        manifest = Manifest(approach=first.approach, arch=first.arch, n_models=first.n_models, base=head,
                            created=f"2026-01-01T00:00:00.{version:06d}", data=document(version))
        head, data = manifest.encode()
        store.backend.put(f"sets/{head}.json", data, exclusive=True)
    return head


def test_a_ten_thousand_deep_update_chain_recovers(tmp_path):
    store = Store.open(str(tmp_path / "s"), SETTINGS)
    first, models = _first(store, "update")
    head = _stack(store, first, 10_000, lambda v: UpdateDelta(depth=v, content=digest_bytes(models.data)))
    fresh = Store.open(str(tmp_path / "s"), SETTINGS)
    assert fresh.recover(head).equals(models)
    assert len(fresh.log(head)) == 10_001


def test_a_two_thousand_deep_provenance_chain_recovers(tmp_path):
    store = Store.open(str(tmp_path / "s"), SETTINGS)
    first, models = _first(store, "provenance")
    recipe = store.blobs.put(canonical_json(RecipeDocument(trainer="workloads.training:train_from_bytes",
                                                           trainer_digest="", recipes={})))
    environment = store.blobs.put(b"{}")
    changes = store.blobs.put(encode_changes(ChangeList(models=())))
    head = _stack(store, first, 2_000, lambda v: ProvenanceReplay(
        changed=0, content=digest_bytes(models.data), recipe=recipe, environment=environment, changes=changes))
    fresh = Store.open(str(tmp_path / "s"), SETTINGS)
    assert fresh.recover(head, executor=InProcessExecutor(), force=True).equals(models)


def test_a_chain_past_the_limit_is_refused_clearly(tmp_path, monkeypatch):
    from mmstore.approaches import provenance
    from mmstore.errors import FormatError

    monkeypatch.setattr(provenance, "_MAX_CHAIN", 50)  # the real limit is 100,000 replays
    store = Store.open(str(tmp_path / "s"), SETTINGS)
    first, models = _first(store, "provenance")
    recipe = store.blobs.put(canonical_json(RecipeDocument(trainer="workloads.training:train_from_bytes",
                                                           trainer_digest="", recipes={})))
    empty = store.blobs.put(encode_changes(ChangeList(models=())))
    head = _stack(store, first, 60, lambda v: ProvenanceReplay(
        changed=0, content=digest_bytes(models.data), recipe=recipe, environment=store.blobs.put(b"{}"), changes=empty))
    with pytest.raises(FormatError, match="snapshot"):
        Store.open(str(tmp_path / "s"), SETTINGS).recover(head, executor=InProcessExecutor(), force=True)


def test_provenance_lineages_snapshot_past_the_replay_depth(tmp_path):
    """With `max_replay_depth=2`, every third version of a provenance lineage is stored as a snapshot."""
    from .provenance_fleet import initial_set, retrain

    store = Store.open(str(tmp_path / "s"), SETTINGS.model_copy(update={"max_replay_depth": 2}))
    current = initial_set(6, seed=4)
    kinds = [store.manifest(store.save(current, approach="provenance", lineage="p")).data.kind]
    for cycle in range(1, 6):
        current, record = retrain(current, {cycle % 6: "partial"}, str(tmp_path / "s-datasets"), cycle, seed=4)
        set_id = store.save(current, approach="provenance", lineage="p", provenance=record)
        kinds.append(store.manifest(set_id).data.kind)
    assert kinds == ["snapshot", "replay", "replay", "snapshot", "replay", "replay"]
    assert Store.open(str(tmp_path / "s"), SETTINGS).recover("p", executor="in-process").equals(current)
