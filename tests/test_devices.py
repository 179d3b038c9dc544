"""Device fleets: slices of a deployed set, bundles pushed to an inbox, ingest into each device's lineage."""

from __future__ import annotations

import json
import multiprocessing

import numpy as np
import torch
import pytest

from mmstore import ModelSet, Store
from mmstore.backend import open_backend
from mmstore.bundle import parse_bundle
from mmstore.device import Device, deploy, pending_key
from mmstore.digest import digest_bytes
from mmstore.ingest import ingest, pending, sweep_inbox
from tests.conftest import TEST_SETTINGS, make_s3_bucket
from tests.forge import small_set

DEVICES, PER_DEVICE = ("car-0", "car-1", "car-2"), 4
WHEN = "2026-01-01T00:00:00+00:00"


def changed(models: ModelSet, model: int, seed: int, tensors=(0,)) -> ModelSet:
    """A copy of `models` whose model `model` has new values in the given tensors (seeded)."""
    data, rng = models.data.copy(), np.random.default_rng(seed)
    for t in tensors:
        spec = models.layout.tensors[t]
        values = rng.standard_normal(spec.nbytes // 4).astype(np.float32)
        data[model, spec.offset : spec.offset + spec.nbytes] = values.view(np.uint8)
    return ModelSet(models.arch, models.layout, data)


class Fleet:
    """A store with a deployed fleet set, one lineage per device, and an inbox beside it."""

    def __init__(self, store_url: str, inbox_url: str, fleet: ModelSet | None = None, devices=DEVICES, settings=TEST_SETTINGS,
                 **options):
        self.store_url, self.inbox_url, self.settings, self.options = store_url, inbox_url, settings, options
        self.store = self.open()
        self.inbox = open_backend(inbox_url, **options)
        self.fleet = fleet or small_set(len(devices) * PER_DEVICE, seed=5)
        self.fleet_id = self.store.save(self.fleet, "update", lineage="fleet")
        self.heads = deploy(self.store, self.fleet_id, devices, len(self.fleet) // len(devices), WHEN)

    def open(self) -> Store:
        return Store.open(self.store_url, self.settings, **self.options)

    def device(self, name: str) -> Device:
        device = Device(name, self.open(), self.inbox)
        device.pull()
        return device

    def ingest(self) -> list:
        return ingest(self.open(), self.inbox, pending(self.inbox))

    def versions(self, name: str) -> list[str]:
        return [info.id for info in self.open().log(name) if info.lineage == name]


@pytest.fixture
def fleet(tmp_path) -> Fleet:
    return Fleet(str(tmp_path / "store"), str(tmp_path / "inbox"))


def test_devices_start_as_slices_that_store_nothing_but_a_manifest(fleet):
    store = fleet.open()
    for i, name in enumerate(DEVICES):
        assert store.recover(name).equals(fleet.fleet.select(range(i * PER_DEVICE, (i + 1) * PER_DEVICE)))
        assert store.size(fleet.heads[name]) == store.backend.size(f"sets/{fleet.heads[name]}.json")
    assert store.recover(DEVICES[1], models=[2]).equals(fleet.fleet.select([PER_DEVICE + 2]))
    assert store.verify() and len(store.list()) == 1 + len(DEVICES)


def test_pushed_versions_are_ingested_in_order_and_recover_bit_for_bit(fleet):
    device = fleet.device("car-1")
    first = changed(device.base, 0, seed=1)
    second = changed(first, 3, seed=2, tensors=(2, 3))
    pushes = [device.push(first, "2026-01-02T00:00:00+00:00"), device.push(second, "2026-01-03T00:00:00+00:00")]
    assert [p.kind for p in pushes] == ["delta", "delta"] and all(p.nbytes < p.full_nbytes for p in pushes)
    outcomes = fleet.ingest()
    assert [o.status for o in outcomes] == ["committed", "committed"]
    store = fleet.open()
    versions = fleet.versions("car-1")
    assert len(versions) == 3 and store.recover(versions[0]).equals(second) and store.recover(versions[1]).equals(first)
    assert store.manifest(versions[0]).meta["device_time"].startswith("2026-01-03")
    assert pending(fleet.inbox) == {} and store.verify()


def test_a_bundle_delivered_again_and_a_push_of_unchanged_models_commit_nothing(fleet):
    device = fleet.device("car-0")
    push = device.push(changed(device.base, 1, seed=3))
    data = fleet.inbox.get(push.key)
    fleet.ingest()
    before = fleet.versions("car-0")
    fleet.inbox.put(push.key, data, exclusive=True)  # delivered a second time
    device.push(device.base)  # nothing changed since the last push
    outcomes = fleet.ingest()
    assert sorted(o.status for o in outcomes) == ["duplicate", "duplicate"]
    assert fleet.versions("car-0") == before and pending(fleet.inbox) == {}


def test_a_stale_bundle_is_rebased_when_nothing_it_changed_changed_since(fleet):
    device = fleet.device("car-2")
    store = fleet.open()
    central = changed(device.base, 3, seed=4)
    store.save(central, "update", lineage="car-2")  # the centre retrained model 3 meanwhile
    device.push(changed(device.base, 0, seed=5))
    assert [o.status for o in fleet.ingest()] == ["committed"]
    merged = fleet.open().recover("car-2")
    expected = changed(central, 0, seed=5)
    assert merged.equals(expected)


def test_a_stale_bundle_that_conflicts_is_quarantined_with_its_reason(fleet):
    device = fleet.device("car-2")
    fleet.open().save(changed(device.base, 0, seed=4), "update", lineage="car-2")
    head = fleet.versions("car-2")[0]
    push = device.push(changed(device.base, 0, seed=6))
    outcome, = fleet.ingest()
    assert outcome.status == "quarantined" and "changes models [0]" in outcome.reason
    note = json.loads(fleet.inbox.get(push.key.replace("pending/", "quarantine/").replace(".mmb", ".json")))
    assert note["reason"] == outcome.reason and fleet.versions("car-2")[0] == head


def test_heads_remembered_from_an_earlier_run_that_went_stale_cost_a_retry_never_a_wrong_commit(fleet):
    heads: dict[str, str] = {}
    device = fleet.device("car-0")
    first = changed(device.base, 0, seed=21)
    device.push(first)
    assert [o.status for o in ingest(fleet.open(), fleet.inbox, pending(fleet.inbox), heads=heads)] == ["committed"]
    assert heads["car-0"] == fleet.versions("car-0")[0]
    # Another writer moves the lineage on; the remembered head is now stale.
    central = changed(first, 2, seed=22)
    fleet.open().save(central, "update", lineage="car-0")
    device.pull()
    device.push(changed(central, 1, seed=23))  # builds on the head the remembered one does not know
    device_two = fleet.device("car-1")
    device_two.push(changed(device_two.base, 3, seed=24))
    outcomes = ingest(fleet.open(), fleet.inbox, pending(fleet.inbox), heads={**heads, "car-1": fleet.fleet_id})
    assert sorted(o.status for o in outcomes) == ["committed", "committed"]
    assert fleet.open().recover("car-0").equals(changed(central, 1, seed=23))
    assert fleet.open().recover("car-1").equals(changed(device_two.base, 3, seed=24))
    assert pending(fleet.inbox) == {} and fleet.open().verify()


def test_a_group_of_devices_commits_as_one_pack_and_one_inbox_deletion(tmp_path):
    fleet = Fleet(str(tmp_path / "store"), str(tmp_path / "inbox"))
    for name in DEVICES:
        device = fleet.device(name)
        device.push(changed(device.base, 1, seed=len(name) + 30))
    calls = []
    inbox = fleet.inbox
    counting = type("Counting", (), {"__getattr__": lambda self, n: (calls.append(n), getattr(inbox, n))[1]})()
    outcomes = ingest(fleet.open(), counting, pending(fleet.inbox))
    assert [o.status for o in outcomes] == ["committed"] * len(DEVICES)
    assert calls.count("delete_many") == 1 and "delete" not in calls
    packs = {fleet.open().manifest(fleet.versions(name)[0]).data.values.pack for name in DEVICES}
    assert len(packs) == 1 and None not in packs


def test_two_ingests_at_once_commit_every_bundle_exactly_once(tmp_path):
    fleet = Fleet(str(tmp_path / "store"), str(tmp_path / "inbox"))
    expected = {}
    for name in DEVICES:
        device = fleet.device(name)
        models = device.base
        for day in range(3):
            models = changed(models, day, seed=10 * day + len(name))
            device.push(models, f"2026-01-0{day + 2}T00:00:00+00:00")
        expected[name] = digest_bytes(models.data)
    context = multiprocessing.get_context("spawn")
    start, results = context.Barrier(2), context.Queue()
    runs = [context.Process(target=_ingest_once, args=(fleet.store_url, fleet.inbox_url, start, results)) for _ in range(2)]
    for run in runs:
        run.start()
    statuses = [status for _ in runs for status in results.get(timeout=120)]
    for run in runs:
        run.join(timeout=30)
    statuses += [o.status for o in fleet.ingest()]  # whatever a lost compare-and-swap deferred
    assert statuses.count("committed") == 9 and "quarantined" not in statuses
    for name in DEVICES:
        assert len(fleet.versions(name)) == 4  # the slice and three pushed versions, none twice
        assert digest_bytes(fleet.open().recover(name).data) == expected[name]
    assert pending(fleet.inbox) == {}


def _ingest_once(store_url: str, inbox_url: str, start, results) -> None:
    inbox = open_backend(inbox_url)
    store = Store.open(store_url, TEST_SETTINGS)
    start.wait(timeout=60)  # both runs list the inbox at the same moment
    results.put([o.status for o in ingest(store, inbox, pending(inbox))])


def test_devices_pushing_concurrently_while_ingest_runs_commit_each_version_exactly_once(tmp_path):
    fleet = Fleet(str(tmp_path / "store"), str(tmp_path / "inbox"))
    context = multiprocessing.get_context("spawn")
    start, results = context.Barrier(len(DEVICES)), context.Queue()
    pushers = [context.Process(target=_push_days, args=(fleet.store_url, fleet.inbox_url, name, start, results)) for name in DEVICES]
    for pusher in pushers:
        pusher.start()
    statuses = []
    while any(p.is_alive() for p in pushers):  # ingest keeps running while the devices push
        statuses += [o.status for o in fleet.ingest()]
    held = dict(results.get(timeout=60) for _ in pushers)
    for pusher in pushers:
        pusher.join(timeout=30)
    statuses += [o.status for o in fleet.ingest()]
    assert statuses.count("committed") == 3 * len(DEVICES) and "quarantined" not in statuses
    for name in DEVICES:
        assert len(fleet.versions(name)) == 4  # the slice and three days, none twice, the repeated push included
        assert digest_bytes(fleet.open().recover(name).data) == held[name]
    assert pending(fleet.inbox) == {}


class _Recording:
    """An inbox that keeps the last bundle put into it, so that a device can deliver it again as a retried upload does."""

    def __init__(self, backend):
        self.backend, self.last = backend, None

    def put(self, key: str, data, *, exclusive: bool) -> bool:
        self.last = (key, bytes(data))
        return self.backend.put(key, data, exclusive=exclusive)


def _push_days(store_url: str, inbox_url: str, name: str, start, results) -> None:
    """One device: three days of pushes (the second delivered twice), started with the other devices at once."""
    inbox = _Recording(open_backend(inbox_url))
    device = Device(name, Store.open(store_url, TEST_SETTINGS), inbox)
    models = device.pull()
    start.wait(timeout=60)
    for day in range(3):
        models = changed(models, day, seed=100 * day + int(name[-1]))
        device.push(models, f"2026-01-0{day + 2}T00:00:00+00:00")
        if day == 1:  # before or after ingest took the first delivery: either way it must commit once
            inbox.backend.put(*inbox.last, exclusive=False)
    results.put((name, digest_bytes(models.data)))


def test_an_upload_cut_off_at_any_byte_is_never_accepted(fleet):
    device = fleet.device("car-0")
    push = device.push(changed(device.base, 2, seed=7))
    data = fleet.inbox.get(push.key)
    fleet.inbox.delete(push.key)
    head = fleet.versions("car-0")[0]
    layout = fleet.open().recover("car-0").layout
    for cut in range(len(data)):
        with pytest.raises(Exception) as caught:
            parse_bundle(data[:cut], push.key.rsplit("/", 1)[1][:-4], "car-0", layout, "bundle")
        assert "cut off or altered" in str(caught.value)
    # Stored under its name, a cut-off bundle is quarantined; the whole one is then accepted.
    for cut in (0, 1, len(data) // 2, len(data) - 1):
        fleet.inbox.put(push.key, data[:cut], exclusive=False)
        outcome, = fleet.ingest()
        assert outcome.status == "quarantined" and fleet.versions("car-0")[0] == head
    fleet.inbox.put(push.key, data, exclusive=False)
    assert [o.status for o in fleet.ingest()] == ["committed"]


def test_an_interrupted_local_upload_leaves_only_a_temporary_file_ingest_ignores(fleet, tmp_path):
    (tmp_path / "inbox" / "pending" / "car-0").mkdir(parents=True)
    (tmp_path / "inbox" / "pending" / "car-0" / ".tmp-upload").write_bytes(b"MMSTORE-BUNDLE\n partial")
    assert pending(fleet.inbox) == {} and fleet.ingest() == []


def test_the_device_follows_the_cost_model(fleet):
    device = fleet.device("car-1")
    everything = ModelSet(device.base.arch, device.base.layout, small_set(PER_DEVICE, seed=99).data)
    push = device.push(everything)
    delta, full = (next(o for o in push.choice.options if o.name == n) for n in ("delta", "full"))
    assert push.kind == ("delta" if delta.cost <= full.cost else "full")
    assert push.choice.chosen == push.kind and "cheapest" in push.choice.reason
    assert [o.status for o in fleet.ingest()] == ["committed"]
    assert fleet.open().recover("car-1").equals(everything)


def test_a_fleet_on_s3_round_trips(s3_options):
    bucket = make_s3_bucket(s3_options)
    fleet = Fleet(f"s3://{bucket}/store", f"s3://{bucket}/inbox", **s3_options)
    device = fleet.device("car-0")
    models = changed(device.base, 1, seed=8)
    push = device.push(models)
    assert {d: [e.key for e in entries] for d, entries in pending(fleet.inbox).items()} == {"car-0": [push.key]}
    assert [o.status for o in fleet.ingest()] == ["committed"]
    assert fleet.open().recover("car-0").equals(models) and pending(fleet.inbox) == {}
    assert pending_key("car-0", push.key.rsplit("/", 1)[1][:-4]) == push.key



def test_an_s3_multipart_upload_cut_off_before_completion_is_no_bundle_and_is_swept(s3_options):
    import s3fs

    bucket = make_s3_bucket(s3_options)
    fleet = Fleet(f"s3://{bucket}/store", f"s3://{bucket}/inbox", **s3_options)
    device = fleet.device("car-0")
    models = changed(device.base, 1, seed=12)
    push = device.push(models, WHEN, dry_run=True)
    head = fleet.versions("car-0")
    fs = s3fs.S3FileSystem(**s3_options)
    key = f"inbox/{push.key}"
    upload = fs.call_s3("create_multipart_upload", Bucket=bucket, Key=key)
    fs.call_s3("upload_part", Bucket=bucket, Key=key, UploadId=upload["UploadId"], PartNumber=1, Body=b"\0" * push.nbytes)
    # The device lost its connection here: every part but the completion was sent.
    assert pending(fleet.inbox) == {} and fleet.ingest() == [] and fleet.versions("car-0") == head
    assert sweep_inbox(fleet.inbox, grace=30 * 365 * 86400, keep_quarantined=86400).unfinished == 0  # moto dates uploads 2010
    assert sweep_inbox(fleet.inbox, grace=0, keep_quarantined=86400).unfinished == 1
    assert fs.list_multipart_uploads(bucket) == []
    assert device.push(models, WHEN).key == push.key  # the retry, whole, under the name the cut upload had
    assert [o.status for o in fleet.ingest()] == ["committed"] and fleet.open().recover("car-0").equals(models)


def test_a_reader_sees_what_another_writer_committed_after_it_listed(s3_options):
    bucket = make_s3_bucket(s3_options)
    # Two filesystem objects, as two processes have: neither sees the other's writes in its own caches.
    reader, writer = (Store.open(f"s3://{bucket}/store", TEST_SETTINGS, **s3_options, skip_instance_cache=True) for _ in range(2))
    writer.save(small_set(2, seed=1), lineage="a")
    assert len(reader.list()) == 1  # the reader has listed sets/ once
    new = writer.save(small_set(2, seed=2), lineage="a")
    assert reader.resolve("a") == new and reader.recover("a").equals(small_set(2, seed=2))


SLICE_FORGERIES = {
    "past-the-base": (lambda m, other: m["data"].update(start=1 << 40), "does not fit"),
    "overlapping-end": (lambda m, other: m["data"].update(start=len(DEVICES) * PER_DEVICE - 1), "does not fit"),
    "other-content": (lambda m, other: m["data"].update(content=digest_bytes(b"other")), "not the slice's content"),
    "base-of-other-layout": (lambda m, other: m.update(base=other), "does not fit"),
    "negative-start": (lambda m, other: m["data"].update(start=-1), "invalid"),
}


@pytest.mark.parametrize("name", sorted(SLICE_FORGERIES))
def test_a_forged_slice_is_refused_in_one_line(tmp_path, name):
    from mmstore.errors import MMStoreError
    from tests import forge

    fleet = Fleet(str(tmp_path / "store"), str(tmp_path / "inbox"))
    other = fleet.open().save(ModelSet.from_modules([torch.nn.Linear(3, 2) for _ in range(20)]))
    mutate, message = SLICE_FORGERIES[name]
    forge.forge_manifest(tmp_path / "store", "car-1", lambda m: mutate(m, other))
    with pytest.raises(MMStoreError, match=message) as caught:
        fleet.open().recover("car-1")
    assert "\n" not in str(caught.value)
