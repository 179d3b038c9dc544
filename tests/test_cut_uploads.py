"""A device's bundle cut off at any byte and left under its own name is quarantined by ingest, never committed."""

from __future__ import annotations

import json

import pytest

from mmstore.bundle import BUNDLE_SUFFIX
from mmstore.ingest import ingest, pending, quarantine_key
from tests.forge import small_set
from tests.test_devices import Fleet, changed

DEVICE = "car-0"
MODELS = 3


@pytest.mark.parametrize("kind", ["delta", "full"])
def test_every_cut_of_a_real_bundle_is_quarantined_by_ingest_and_the_whole_bundle_then_commits(tmp_path, kind):
    fleet = Fleet(str(tmp_path / "store"), str(tmp_path / "inbox"), fleet=small_set(MODELS, seed=17), devices=(DEVICE,))
    device = fleet.device(DEVICE)
    models = changed(device.base, 1, seed=18, tensors=(0, 3))
    push = device.push(models, "2026-01-02T00:00:00+00:00", kind=kind)
    data = fleet.inbox.get(push.key)
    fleet.inbox.delete(push.key)
    assert push.kind == kind and len(data) == push.nbytes < 2048  # small enough to cut at every byte quickly
    digest = push.key.rsplit("/", 1)[1].removesuffix(BUNDLE_SUFFIX)
    held, note_key = quarantine_key(DEVICE, digest), quarantine_key(DEVICE, digest).removesuffix(BUNDLE_SUFFIX) + ".json"
    head, sets = fleet.store.documents.ref(DEVICE), fleet.store.documents.set_ids()
    stored = set(fleet.store.backend.scan(""))
    store = fleet.open()  # one store across runs, as the ingest flow keeps one: the head's rows stay at hand
    for cut in range(len(data)):
        fleet.inbox.put(push.key, data[:cut], exclusive=False)
        outcomes = ingest(store, fleet.inbox, pending(fleet.inbox))
        assert [(o.key, o.status, o.set_id) for o in outcomes] == [(push.key, "quarantined", None)], cut
        assert "cut off or altered" in outcomes[0].reason, cut
        assert json.loads(fleet.inbox.get(note_key))["reason"] == outcomes[0].reason, cut
        assert fleet.inbox.get(held) == data[:cut], cut  # the cut just uploaded is the one judged
        assert pending(fleet.inbox) == {}, cut
        assert fleet.store.documents.ref(DEVICE) == head and fleet.store.documents.set_ids() == sets, cut
        assert set(fleet.store.backend.scan("")) == stored, cut  # not a byte written to the store: no blob, pack or ref
        # Quarantine never replaces what it holds: clear it so the next cut is kept (and checked) in turn.
        fleet.inbox.delete_many([held, note_key])

    fleet.inbox.put(push.key, data, exclusive=False)
    outcome, = ingest(store, fleet.inbox, pending(fleet.inbox))
    assert outcome.status == "committed" and fleet.store.documents.ref(DEVICE) == outcome.set_id != head
    assert fleet.open().recover(DEVICE).data.tobytes() == models.data.tobytes()
    assert fleet.open().manifest(outcome.set_id).meta["bundle"] == digest
    assert fleet.store.documents.set_ids() == sorted([*sets, outcome.set_id])
    assert pending(fleet.inbox) == {}
