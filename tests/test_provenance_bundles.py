"""Provenance bundles: a device sends how it retrained and the data; ingest re-trains, checks the bits, stores a provenance set."""

from __future__ import annotations

import json

import numpy as np
import pytest

from envs.fingerprint import capture
from mmstore import ModelSet, Settings, Store
from mmstore.arch import import_trusted
from mmstore.bundle_provenance import DatasetClaim, DeviceRecord, encode_provenance_bundle
from mmstore.device import Device, Training, pending_key
from mmstore.digest import digest_bytes
from workloads.datasets import encode_arrays

from . import forge
from .provenance_fleet import RECIPES, TRAINER, _arrays, initial_set
from .test_devices import Fleet

CELLS = 4
SETTINGS = Settings(trusted_modules=("tests",))  # datasets under the store's own `-datasets` root only


def device_fleet(root) -> Fleet:
    """Two FFNN-48 devices of four cells, deployed from one fleet set, with an inbox beside the store."""
    return Fleet(str(root / "store"), str(root / "inbox"), initial_set(2 * CELLS, seed=3), ("car-0", "car-1"), SETTINGS)


def retrain(models: ModelSet, plan: dict[int, str], seed: int) -> tuple[ModelSet, Training]:
    """Retrain the planned cells on fresh seeded data, as a device would; the models and how they were made."""
    train = import_trusted(TRAINER, None, "training function")
    rng = np.random.default_rng(seed)
    data, changes = models.data.copy(), {}
    for cell, recipe in sorted(plan.items()):
        dataset = encode_arrays(_arrays(rng, 48))
        data[cell] = ModelSet.from_modules([train(models.model(cell), dataset, RECIPES[recipe])]).data[0]
        changes[cell] = (recipe, dataset)
    return ModelSet(models.arch, models.layout, data), Training(TRAINER, RECIPES, changes, capture().to_json())


@pytest.fixture
def fleet(tmp_path) -> Fleet:
    return device_fleet(tmp_path)


def test_a_provenance_bundle_is_replayed_and_stored_as_a_provenance_set(fleet, tmp_path):
    device = fleet.device("car-0")
    models, training = retrain(device.base, {1: "full", 2: "partial"}, seed=1)
    push = device.push(models, kind="provenance", training=training)
    assert push.kind == "provenance" and set(push.choice.model_dump()["options"][0]) >= {"name"}
    outcome, = fleet.ingest()
    assert outcome.status == "committed", outcome
    store = fleet.open()
    manifest = store.manifest(outcome.set_id)
    assert manifest.approach == "provenance" and manifest.data.changed == 2
    stored = sorted(p.name for p in (tmp_path / "store-datasets" / "devices" / "car-0").iterdir())
    assert stored == sorted(digest_bytes(data) for _, data in training.changes.values())
    assert Store.open(fleet.store_url, SETTINGS).recover("car-0").equals(models)  # re-trained again, bit for bit
    # The next delta bundle builds on it as on any version.
    nxt = models.data.copy()
    nxt[3, :8] ^= 0x55
    later = ModelSet(models.arch, models.layout, nxt)
    device.push(later)
    assert [o.status for o in fleet.ingest()] == ["committed"]
    assert fleet.open().recover("car-0").equals(later) and fleet.open().verify()


def test_the_device_prices_the_record_against_the_tensors(fleet):
    device = fleet.device("car-1")
    models, training = retrain(device.base, {0: "partial"}, seed=2)
    push = device.push(models, training=training, dry_run=True)
    names = [option["name"] for option in push.choice.model_dump()["options"]]
    assert names == ["delta", "full", "provenance"] and push.kind in names


def _provenance_push(fleet: Fleet, record_changes=None, send=None, datasets=None, **record_fields) -> tuple[str, bytes]:
    """A provenance bundle of car-0 retraining cell 1, its record (and data) altered as given; the inbox key and bytes."""
    device = fleet.device("car-0")
    models, training = retrain(device.base, {1: "full"}, seed=5)
    record, sent = training.record()
    datasets = datasets or sent
    record = record.model_copy(update={**record_fields, **({"changes": record_changes(record)} if record_changes else {})})
    data = encode_provenance_bundle(_header(device, models), record, send(datasets) if send else datasets)
    key = pending_key("car-0", digest_bytes(data))
    fleet.inbox.put(key, data, exclusive=True)
    return key, data


def _header(device: Device, models: ModelSet):
    from datetime import datetime, timezone

    from mmstore.bundle import BundleHeader

    return BundleHeader(device=device.name, kind="provenance", base_content=digest_bytes(device.base.data),
                        content=digest_bytes(models.data), arch=device._arch_id(), n_models=len(models),
                        row_nbytes=models.layout.row_nbytes, device_time=datetime.now(timezone.utc), codec="raw")


def _claim(record, **fields):
    recipe, claim = record.changes[1]
    return {1: (recipe, claim.model_copy(update=fields))}


FORGERIES = {
    "dataset-outside-roots": dict(record_changes=lambda r: _claim(r, uri="/etc/passwd"), send=lambda d: {}),
    "dataset-path-in-root": dict(record_changes=lambda r: _claim(r, uri="../../etc/passwd"), send=lambda d: {}),
    "dataset-other-bytes": dict(send=lambda d: {k: b"x" * len(v) for k, v in d.items()}),
    "dataset-garbage": dict(send=lambda d: d, record_changes=lambda r: _claim(r, digest=digest_bytes(b"\x00" * 7), size=7),
                            datasets={digest_bytes(b"\x00" * 7): b"\x00" * 7}),
    "recipe-garbage": dict(recipes={"full": {"epochs": "many"}}),
    "untrusted-trainer": dict(trainer="os:system"),
    "attribute-chain-trainer": dict(trainer="workloads.training:os.system"),
    "does-not-reproduce": dict(record_changes=lambda r: {1: ("partial", r.changes[1][1])}),
    "model-past-the-device": dict(record_changes=lambda r: {99: r.changes[1]}),
    "undefined-recipe": dict(record_changes=lambda r: {1: ("nope", r.changes[1][1])}),
}


REASONS = {
    "dataset-outside-roots": "outside the dataset roots",
    "dataset-path-in-root": "'..'",
    "dataset-other-bytes": "does not match its digest",
    "dataset-garbage": "failed on the data or recipes",
    "recipe-garbage": "failed on the data or recipes",
    "untrusted-trainer": "outside the trusted modules",
    "attribute-chain-trainer": "is not of the form",
    "does-not-reproduce": "not reproducible",
    "model-past-the-device": "names models past",
    "undefined-recipe": "recipes it does not define",
}


@pytest.mark.parametrize("name", sorted(FORGERIES))
def test_a_forged_provenance_bundle_is_quarantined_and_changes_nothing(fleet, tmp_path, name):
    key, _ = _provenance_push(fleet, **FORGERIES[name])
    before = forge.files(tmp_path / "store")
    outcome, = fleet.ingest()
    assert outcome.status == "quarantined", outcome
    assert REASONS[name] in outcome.reason, outcome.reason
    assert "\n" not in outcome.reason and len(outcome.reason) < 400
    assert forge.files(tmp_path / "store") == before
    assert not (tmp_path / "store-datasets").exists()  # no data kept for a bundle that was refused
    note = json.loads(fleet.inbox.get(key.replace("pending/", "quarantine/").replace(".mmb", ".json")))
    assert note["reason"] == outcome.reason


def test_a_record_claiming_more_data_than_it_carries_is_refused(fleet):
    device = fleet.device("car-0")
    models, training = retrain(device.base, {1: "full"}, seed=6)
    record, datasets = training.record()
    data = encode_provenance_bundle(_header(device, models), record, datasets)
    cut = data[:-10]  # re-hashed: only the framing can tell
    fleet.inbox.put(pending_key("car-0", digest_bytes(cut)), cut, exclusive=True)
    outcome, = fleet.ingest()
    assert outcome.status == "quarantined" and "add up" in outcome.reason
    assert DeviceRecord.model_validate(record.model_dump()) == record and isinstance(record.changes[1][1], DatasetClaim)
