"""Ingest of a device's backlog, of bundles for lineages that are not a device's, and of bundles delivered again."""

from __future__ import annotations

import json

import pytest

from mmstore import Settings
from mmstore.backend import open_backend
from mmstore.device_register import read_entries, register_key
from mmstore.errors import StoreURLError
from mmstore.ingest import ingest, pending
from mmstore.retention import RetentionPolicy
from tests.conftest import TEST_SETTINGS, make_s3_bucket
from tests.test_devices import Fleet, changed

ONE_DEVICE = ("car-0",)


def push_backlog(fleet: Fleet, name: str, count: int, kind: str = "auto", first_day: int = 0) -> list:
    """`count` pushes of one device without an ingest between them; the models after each, oldest first."""
    device, held = fleet.device(name), []
    models = device.base
    for k in range(first_day, first_day + count):
        models = changed(models, k % len(models), seed=1000 + k, tensors=(k % 2,))
        device.push(models, f"2026-02-{1 + k // 24:02d}T{k % 24:02d}:00:00+00:00", kind=kind)
        held.append(models)
    return held


def assert_lineage_holds(fleet: Fleet, name: str, held: list) -> None:
    """The device's lineage is its slice and then exactly the pushed versions, in order, each bit for bit."""
    store = fleet.open()
    versions = list(reversed(fleet.versions(name)))[1:]
    assert len(versions) == len(held)
    for set_id, models in zip(versions, held):
        assert store.recover(set_id).equals(models)
    assert store.verify()


@pytest.mark.parametrize("count", [1, 15, 64, 200])
@pytest.mark.parametrize("kind", ["delta", "full"])
def test_a_backlog_commits_every_version_in_order(tmp_path, count, kind):
    fleet = Fleet(str(tmp_path / "store"), str(tmp_path / "inbox"), devices=ONE_DEVICE)
    held = push_backlog(fleet, "car-0", count, kind)
    outcomes = fleet.ingest()
    assert [o.status for o in outcomes] == ["committed"] * count
    assert_lineage_holds(fleet, "car-0", held)
    assert pending(fleet.inbox) == {}


def test_a_backlog_across_the_snapshots_the_cost_model_places(tmp_path):
    # A recovery budget that affords only a few deltas: the policy, not the depth limit, cuts the chain.
    settings = Settings(**{**TEST_SETTINGS.model_dump(), "max_chain_depth": 1000, "max_recover_seconds": 0.04,
                           "delta_step_seconds": 0.01})
    fleet = Fleet(str(tmp_path / "store"), str(tmp_path / "inbox"), devices=ONE_DEVICE, settings=settings)
    held = push_backlog(fleet, "car-0", 40)
    assert [o.status for o in fleet.ingest()] == ["committed"] * 40
    store = fleet.open()
    kinds = [store.manifest(set_id).data.kind for set_id in reversed(fleet.versions("car-0"))][1:]
    # Snapshots inside the batch, each followed by deltas read from it before the batch's pack was written.
    assert kinds.count("snapshot") >= 3 and any(a == "snapshot" and b == "delta" for a, b in zip(kinds, kinds[1:]))
    assert_lineage_holds(fleet, "car-0", held)


def test_backlogs_of_several_devices_on_s3_commit_in_one_run(s3_options):
    bucket = make_s3_bucket(s3_options)
    fleet = Fleet(f"s3://{bucket}/store", f"s3://{bucket}/store-inbox", **s3_options)
    held = {name: push_backlog(fleet, name, 15) for name in ("car-0", "car-2")}
    assert [o.status for o in fleet.ingest()] == ["committed"] * 30
    for name, versions in held.items():
        assert_lineage_holds(fleet, name, versions)


def _bundle_for(fleet: Fleet, lineage: str) -> str:
    """A well-formed bundle whose base is `lineage`'s head, placed under `pending/<lineage>/`; its key."""
    device = fleet.device("car-1")
    device.name, device.base_set = lineage, fleet.open().resolve(lineage)
    device.base = fleet.open().recover(device.base_set)
    return device.push(changed(device.base, 0, seed=77), "2026-03-01T00:00:00+00:00").key


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_only_a_device_lineage_takes_bundles(tmp_path, backend, request):
    if backend == "s3":
        options = request.getfixturevalue("s3_options")
        bucket = make_s3_bucket(options)
        fleet = Fleet(f"s3://{bucket}/store", f"s3://{bucket}/store-inbox", **options)
    else:
        fleet = Fleet(str(tmp_path / "store"), str(tmp_path / "inbox"))
    store = fleet.open()
    store.save(fleet.fleet.select(range(4)), "update", lineage="prod")  # a lineage no device was deployed to
    before = store.lineages()
    keys = [_bundle_for(fleet, name) for name in ("fleet", "prod")]
    outcomes = fleet.ingest()
    assert [o.status for o in outcomes] == ["quarantined", "quarantined"]
    assert all("is not a device's" in o.reason for o in outcomes)
    assert fleet.open().lineages() == before
    for key in keys:
        note = json.loads(fleet.inbox.get(key.replace("pending/", "quarantine/").replace(".mmb", ".json")))
        assert "deploy" in note["reason"]


def test_a_forged_register_entry_stops_only_its_device(fleet_with_pushes):
    fleet = fleet_with_pushes
    store = fleet.open()
    store.backend.put(register_key("car-1"), json.dumps({"schema_version": 1, "device": "car-2", "fleet": "0" * 64,
                                                         "first_model": 0}).encode(), exclusive=False)
    store.backend.put(register_key("car-2"), json.dumps({"schema_version": 9, "device": "car-2"}).encode(), exclusive=False)
    outcomes = {o.device: o for o in fleet.ingest()}
    assert outcomes["car-0"].status == "committed"
    assert outcomes["car-1"].status == "quarantined" and "names device 'car-2'" in outcomes["car-1"].reason
    assert outcomes["car-2"].status == "quarantined" and "upgrade mmstore" in outcomes["car-2"].reason


@pytest.fixture
def fleet_with_pushes(tmp_path) -> Fleet:
    fleet = Fleet(str(tmp_path / "store"), str(tmp_path / "inbox"))
    for name in ("car-0", "car-1", "car-2"):
        push_backlog(fleet, name, 1)
    return fleet


def test_a_bundle_delivered_again_after_a_revert_and_a_prune_is_never_committed_again(tmp_path):
    fleet = Fleet(str(tmp_path / "store"), str(tmp_path / "inbox"), devices=ONE_DEVICE)
    device = fleet.device("car-0")
    original = device.base
    first = device.push(changed(original, 0, seed=1), "2026-02-01T00:00:00+00:00")
    old_bytes = fleet.inbox.get(first.key)
    fleet.ingest()
    device.push(original, "2026-02-02T00:00:00+00:00")  # the device reverted to the models it was deployed with
    fleet.ingest()
    store = fleet.open()
    store.prune("car-0", RetentionPolicy(keep_last=1), grace=None)  # the version that recorded the old bundle is gone
    digest = first.key.rsplit("/", 1)[1].removesuffix(".mmb")
    assert not any(store.manifest(v).meta.get("bundle") == digest for v in fleet.versions("car-0"))
    head = fleet.versions("car-0")[0]
    fleet.inbox.put(first.key, old_bytes, exclusive=True)
    outcome, = fleet.ingest()
    assert outcome.status == "quarantined" and "no newer" in outcome.reason
    assert fleet.versions("car-0")[0] == head and fleet.open().recover("car-0").equals(original)
    entry = read_entries(fleet.open().backend, ["car-0"])["car-0"].entry
    assert entry.newest is not None and entry.newest.time.startswith("2026-02-02")


def test_the_head_covers_a_register_entry_a_crash_left_behind(tmp_path):
    fleet = Fleet(str(tmp_path / "store"), str(tmp_path / "inbox"), devices=ONE_DEVICE)
    store = fleet.open()
    deployed = store.backend.get(register_key("car-0"))
    held = push_backlog(fleet, "car-0", 2)
    old_key = pending(fleet.inbox)["car-0"][0].key
    old = fleet.inbox.get(old_key)
    fleet.ingest()
    store.backend.put(register_key("car-0"), deployed, exclusive=False)  # as if the commit's register update was cut off
    fleet.inbox.put(old_key, old, exclusive=True)
    statuses = {o.status for o in fleet.ingest()}
    assert statuses <= {"duplicate", "quarantined"} and "committed" not in statuses
    assert_lineage_holds(fleet, "car-0", held)


@pytest.mark.parametrize("layout", ["same", "inbox inside", "store inside"])
def test_an_inbox_that_overlaps_the_store_is_refused(tmp_path, layout):
    root = tmp_path / "store"
    fleet = Fleet(str(root), str(tmp_path / "inbox"))
    push_backlog(fleet, "car-0", 1)
    inbox_url = {"same": str(root), "inbox inside": str(root / "inbox"), "store inside": str(tmp_path)}[layout]
    store = fleet.open()
    listing = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*"))
    with pytest.raises(StoreURLError, match="overlap"):
        ingest(store, open_backend(inbox_url), pending(open_backend(inbox_url)))
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == listing


def test_a_device_deployed_again_keeps_its_newest_bundle(tmp_path):
    from mmstore.device import deploy

    fleet = Fleet(str(tmp_path / "store"), str(tmp_path / "inbox"), devices=ONE_DEVICE)
    push_backlog(fleet, "car-0", 3)
    fleet.ingest()
    store = fleet.open()
    newest = read_entries(store.backend, ["car-0"])["car-0"].entry.newest
    deploy(store, fleet.fleet_id, ["car-0"], 4, "2026-05-01T00:00:00+00:00")
    assert newest is not None and read_entries(store.backend, ["car-0"])["car-0"].entry.newest == newest


def test_lineages_deployed_before_the_register_are_enrolled_from_the_command_line(tmp_path):
    from tests.test_device_cli import mmstore

    fleet = Fleet(str(tmp_path / "store"), str(tmp_path / "inbox"))
    store = fleet.open()
    for name in ("car-0", "car-1"):  # as a store deployed by an older mmstore: no register entries
        store.backend.delete(register_key(name))
    store.save(fleet.fleet.select(range(4)), "update", lineage="prod")
    held = push_backlog(fleet, "car-0", 2)
    done = mmstore(fleet.store_url, "device", "enrol", "car-0", "car-1")
    assert done.returncode == 0 and done.stdout.startswith("enrolled 2 device lineages")
    refused = mmstore(fleet.store_url, "device", "enrol", "prod")
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1 and "does not start as a slice" in refused.stderr
    assert [o.status for o in fleet.ingest()] == ["committed"] * 2
    assert_lineage_holds(fleet, "car-0", held)
    assert read_entries(fleet.open().backend, ["prod"])["prod"].entry is None
