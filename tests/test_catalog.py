"""The fleet catalog: incremental equals rebuilt, lost races, request counts, forged documents, concurrency, staleness."""

from __future__ import annotations

import json
import multiprocessing
import random
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from bench.catalog import CountingBackend, build_fleet, device_set, device_time
from mmstore import Store
from mmstore.retention import RetentionPolicy
from mmstore.catalog import HEADS_KEY, Catalog, to_time, version_time
from mmstore.cli import main
from mmstore.errors import ConflictError, FormatError, MMStoreError, NewerFormatError, NotFoundError

from .catalog_writer import record_versions
from .conftest import TEST_SETTINGS, make_s3_bucket
from .faults import HookedBackend, before

FAST = TEST_SETTINGS.model_copy(update={"durable": False})


def catalog_bytes(store: Store) -> dict[str, bytes]:
    """Every catalog document, by key."""
    keys = [e.key for e in store.backend.scan("catalog") if e.key.endswith(".json")]
    return {key: store.backend.get(key) for key in sorted(keys)}


def truth(store: Store) -> dict[str, list[tuple[str, str]]]:
    """Every lineage's versions, oldest first, from `Store.log` (independent of the catalog's own walk)."""
    chains = {}
    for name, head in store.lineages().items():
        chain = []
        for info in store.log(head):
            if info.lineage != name:
                break
            chain.append((version_time(store.manifest(info.id)), info.id))
        chains[name] = chain[::-1]
    return chains


def fresh(store: Store, **options) -> tuple[Catalog, CountingBackend]:
    """A catalog over a newly opened store (nothing cached) that counts its requests."""
    counting = CountingBackend(Store.open(store.url, FAST, **options).backend)
    return Catalog(Store(counting, FAST)), counting


def lose_race(store: Store, lineage: str, seed: int) -> tuple[str, str]:
    """Save a set into `lineage` while another writer moves it first: (the lost set's id, the winner's id)."""
    won = []
    hooked = Store(HookedBackend(store.backend, "swap", 1, before(
        lambda: won.append(store.save(device_set(2, seed + 1), lineage=lineage)))), FAST)
    with pytest.raises(ConflictError):
        hooked.save(device_set(2, seed), lineage=lineage, meta={"device_time": "2026-03-01T00:00:00Z", "race": seed})
    return next(i.id for i in hooked.list() if i.meta.get("race") == seed), won[0]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_incremental_catalog_equals_rebuilt_after_random_interleavings(seed):
    rng = random.Random(seed)
    store = Store.open(f"memory://{uuid.uuid4().hex}", FAST)
    fleet = store.save(device_set(2, 99), lineage="fleet")
    store.save(device_set(2, 98), lineage="old-device")  # saved before any catalog: the first record covers it
    catalog, pending, clock = Catalog(store), [], 0
    for step in range(160):
        name = f"car-{rng.randrange(12):02d}"
        clock += rng.randrange(1, 90)
        zone = timezone(timedelta(hours=rng.choice([0, 1, -5])))
        stamp = (datetime(2026, 1, 1, tzinfo=zone) + timedelta(minutes=clock)).isoformat()
        meta = rng.choice([{"device_time": stamp}] * 6 + [{}, {"device_time": "not a time"}, {"device_time": stamp[:19]}])
        if rng.random() < 0.05 and store.lineages().get(name):
            pending.extend(lose_race(store, name, seed * 1000 + step))
            continue
        base = fleet if name not in store.lineages() and rng.random() < 0.5 else None
        pending.append(store.save(device_set(2, seed * 1000 + step), base=base, lineage=name, meta=meta))
        if rng.random() < 0.4:
            catalog.record(pending)
            pending = []
    catalog.record(pending)
    incremental = catalog_bytes(store)
    catalog.rebuild()
    assert catalog_bytes(store) == incremental
    expected = truth(store)
    assert set(catalog.heads()) == set(expected) and "old-device" in expected
    for name, versions in expected.items():
        assert [(v.time, v.id) for v in catalog.versions(name)] == versions
        assert catalog.heads()[name].head == versions[-1][1] and catalog.heads()[name].versions == len(versions)


def test_lost_race_sets_are_not_versions():
    store = Store.open(f"memory://{uuid.uuid4().hex}", FAST)
    first = store.save(device_set(2, 1), lineage="car-1", meta={"device_time": "2026-01-01T00:00:00Z"})
    catalog = Catalog(store)
    catalog.record([first])
    lost, won = lose_race(store, "car-1", 10)
    assert store.manifest(lost).lineage == "car-1"
    catalog.record([lost, won])
    assert [v.id for v in catalog.versions("car-1")] == [first, won]
    assert catalog.at("car-1", "2026-03-02T00:00:00Z").id in (first, won) and lost not in catalog_bytes(store)[
        "catalog/lineages/car-1.json"].decode()


def test_heads_and_at_take_at_most_five_requests_with_2000_sets(tmp_path):
    store = Store.open(str(tmp_path / "store"), FAST)
    devices, versions = 100, 20
    saved = build_fleet(store, devices, versions)
    Catalog(store).rebuild()
    catalog, counting = fresh(store)
    start = time.perf_counter()
    heads = catalog.heads()
    assert counting.total <= 5 and time.perf_counter() - start < 1.0
    assert len(heads) == devices and all(h.versions == versions for h in heads.values())
    rng = np.random.default_rng(0)
    for _ in range(10):
        device, version = int(rng.integers(devices)), int(rng.integers(versions))
        catalog, counting = fresh(store)
        start = time.perf_counter()
        found = catalog.at(f"car-{device:04d}", device_time(device, version))
        assert counting.total <= 5 and time.perf_counter() - start < 1.0, counting.calls
        assert found.time == to_time(saved[f"car-{device:04d}"][version][0])
        assert store.manifest(found.id).meta["device_time"] == device_time(device, version)
    catalog, counting = fresh(store)
    assert set(catalog.changed_since(device_time(50, versions - 1))) == {f"car-{d:04d}" for d in range(51, devices)}
    assert counting.total <= 5


def test_catalog_on_s3_with_concurrent_writers(s3_options):
    url = f"s3://{make_s3_bucket(s3_options)}/store"
    store = Store.open(url, FAST, **s3_options)
    store.save(device_set(2, 0), lineage="car-0-0", meta={"device_time": device_time(0, 0)})
    Catalog(store).rebuild()
    start = threading.Barrier(3)
    writers = [threading.Thread(target=record_versions, args=(url, w, 3, start), kwargs=s3_options) for w in range(3)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(120)
    heads = Catalog(store).heads()
    assert len(heads) == 6 and all(h.versions == 3 for name, h in heads.items() if name != "car-0-0")
    assert heads["car-0-0"].versions == 4  # its first version was saved before the writers started
    incremental = catalog_bytes(store)
    Catalog(store).rebuild()
    assert catalog_bytes(store) == incremental
    reader, counting = fresh(store, **s3_options)
    assert set(reader.heads()) == set(heads) and counting.total <= 5
    reader, counting = fresh(store, **s3_options)
    assert reader.at("car-1-1", device_time(1, 1)).time == to_time(device_time(1, 1)) and counting.total <= 5


@pytest.fixture
def small_fleet(tmp_path):
    """3 devices x 4 versions, catalogued; the store and its lineages' true versions."""
    store = Store.open(str(tmp_path / "store"), FAST)
    build_fleet(store, 3, 4)
    Catalog(store).rebuild()
    return store, truth(store)


def _forge(store: Store, key: str, data: bytes) -> None:
    store.backend.put(key, data, exclusive=False)


def _doc(store: Store, name: str) -> dict:
    return json.loads(store.backend.get(f"catalog/lineages/{name}.json"))


def _shifted(doc: dict) -> dict:
    return {**doc, "versions": [[to_time(f"{t[:4]}-12{t[7:]}"), i] for t, i in doc["versions"]]}


FORGERIES = {
    "heads not JSON": lambda s: _forge(s, HEADS_KEY, b"{not json"),
    "heads huge": lambda s: _forge(s, HEADS_KEY, b" " * (5 << 20)),
    "heads bad id": lambda s: _forge(s, HEADS_KEY, json.dumps({"schema_version": 1, "lineages": {"car-0000": {
        "head": "../../etc", "time": to_time("2026-01-01"), "latest": to_time("2026-01-01"), "versions": 1}}}).encode()),
    "heads bad name": lambda s: _forge(s, HEADS_KEY, json.dumps({"schema_version": 1, "lineages": {"../x": {}}}).encode()),
    "heads newer": lambda s: _forge(s, HEADS_KEY, b'{"schema_version": 9}'),
    "doc of another lineage": lambda s: _forge(s, "catalog/lineages/car-0001.json", json.dumps(_doc(s, "car-0002")).encode()),
    "doc with another lineage's versions": lambda s: _forge(s, "catalog/lineages/car-0001.json", json.dumps(
        {**_doc(s, "car-0002"), "lineage": "car-0001"}).encode()),
    "doc with wrong times": lambda s: _forge(s, "catalog/lineages/car-0001.json", json.dumps(_shifted(_doc(s, "car-0001"))).encode()),
    "doc with bad time": lambda s: _forge(s, "catalog/lineages/car-0001.json", json.dumps(
        {**_doc(s, "car-0001"), "versions": [["yesterday", "0" * 64]]}).encode()),
    "doc that loops": lambda s: _forge(s, "catalog/lineages/car-0001.json", json.dumps(
        {**_doc(s, "car-0001"), "versions": _doc(s, "car-0001")["versions"] * 2}).encode()),
    "doc naming missing sets": lambda s: _forge(s, "catalog/lineages/car-0001.json", json.dumps(
        {**_doc(s, "car-0001"), "versions": [[t, "f" * 64] for t, _ in _doc(s, "car-0001")["versions"]]}).encode()),
    "doc huge": lambda s: _forge(s, "catalog/lineages/car-0001.json", b"[" * (5 << 20)),
    "doc nested deep": lambda s: _forge(s, "catalog/lineages/car-0001.json", b"[" * 100_000 + b"]" * 100_000),
    "ref huge": lambda s: _forge(s, "refs/car-0001", b"a" * 100_000),
}


@pytest.mark.parametrize("forgery", sorted(FORGERIES))
def test_forged_catalog_gives_a_clear_error_or_the_true_answer(small_fleet, forgery):
    store, expected = small_fleet
    FORGERIES[forgery](store)
    catalog = Catalog(Store.open(store.url, FAST))
    for name, versions in expected.items():
        for when, set_id in versions:
            try:
                assert catalog.at(name, when).id == set_id
            except MMStoreError as exc:
                assert isinstance(exc, (FormatError, NewerFormatError)) and "\n" not in str(exc)
    try:
        heads = catalog.heads(verify=True)
    except MMStoreError as exc:
        assert isinstance(exc, (FormatError, NewerFormatError))
    else:
        assert {name: h.head for name, h in heads.items()} == {name: v[-1][1] for name, v in expected.items()}
    if forgery in ("ref huge", "heads newer"):  # a damaged ref is not the catalog's to mend; a newer one not to lose
        with pytest.raises((FormatError, NewerFormatError)):
            catalog.rebuild()
        return
    catalog.rebuild()  # a writer replaces what it cannot read with what the manifests say
    assert {n: [(v.time, v.id) for v in catalog.versions(n)] for n in expected} == expected
    assert {n: h.head for n, h in catalog.heads().items()} == {n: v[-1][1] for n, v in expected.items()}


def test_heads_verify_answers_a_forged_head_from_the_manifests(small_fleet):
    store, expected = small_fleet
    heads = json.loads(store.backend.get(HEADS_KEY))
    heads["lineages"]["car-0000"]["head"] = expected["car-0001"][-1][1]
    _forge(store, HEADS_KEY, json.dumps(heads).encode())
    catalog = Catalog(store)
    assert catalog.heads()["car-0000"].head == expected["car-0001"][-1][1]  # the cheap listing trusts the catalog
    assert catalog.heads(verify=True)["car-0000"].head == expected["car-0000"][-1][1]


def test_concurrent_record_from_several_processes_loses_nothing(tmp_path):
    url = str(tmp_path / "store")
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: nothing inherited from other tests' servers
    start = context.Barrier(3)
    workers = [context.Process(target=record_versions, args=(url, w, 4, start)) for w in range(3)]
    for process in workers:
        process.start()
    for process in workers:
        process.join(60)
    assert [p.exitcode for p in workers] == [0] * 3
    store = Store.open(url, FAST)
    catalog = Catalog(store)
    heads = catalog.heads()
    assert len(heads) == 6 and all(h.versions == 4 for h in heads.values())
    incremental = catalog_bytes(store)
    catalog.rebuild()
    assert catalog_bytes(store) == incremental


def test_stale_catalog_answers_at_from_the_ref(small_fleet):
    store, expected = small_fleet
    later = [store.save(device_set(1, 500 + v), lineage="car-0001", meta={"device_time": device_time(1, 10 + v)})
             for v in range(2)]  # a writer that crashed before recording these
    catalog, counting = fresh(store)
    assert catalog.at("car-0001", device_time(1, 20)).id == later[-1]
    assert counting.total <= 5 + 2 * len(later)
    assert catalog.at("car-0001", device_time(1, 10)).id == later[0]
    assert catalog.at("car-0001", device_time(1, 3)).id == expected["car-0001"][3][1]
    assert [v.id for v in catalog.versions("car-0001")][-2:] == later
    assert catalog.heads()["car-0001"].head == expected["car-0001"][-1][1]  # heads stays stale until refreshed
    catalog.refresh("car-0001")
    assert catalog.heads()["car-0001"].head == later[-1]


def test_deleted_head_moves_the_answer_back_and_refresh_drops_it(small_fleet):
    store, expected = small_fleet
    store.delete(expected["car-0002"][-1][1])
    catalog = Catalog(Store.open(store.url, FAST))
    assert catalog.at("car-0002", device_time(2, 30)).id == expected["car-0002"][-2][1]
    assert catalog.refresh("car-0002").head == expected["car-0002"][-2][1]
    before_rebuild = catalog_bytes(store)
    catalog.rebuild()
    assert catalog_bytes(store) == before_rebuild


def test_version_times():
    store = Store(Store.open(f"memory://{uuid.uuid4().hex}", FAST).backend, FAST, clock=lambda: "2026-05-05T05:05:05.000+00:00")
    ids = {meta: store.save(device_set(1, i), lineage="car", meta={"device_time": meta} if meta else {})
           for i, meta in enumerate(["", "2026-01-01T10:00:00", "garbage", "2026-01-02T12:00:00+02:00"])}
    times = {meta: version_time(store.manifest(set_id)) for meta, set_id in ids.items()}
    assert times == {"": "2026-05-05T05:05:05.000000+00:00", "2026-01-01T10:00:00": "2026-05-05T05:05:05.000000+00:00",
                     "garbage": "2026-05-05T05:05:05.000000+00:00",
                     "2026-01-02T12:00:00+02:00": "2026-01-02T10:00:00.000000+00:00"}
    catalog = Catalog(store)
    catalog.rebuild()
    assert catalog.at("car", "2026-01-02T10:30Z").id == ids["2026-01-02T12:00:00+02:00"]
    with pytest.raises(NotFoundError, match="first version is from 2026-05-05"):
        catalog.at("car", "2026-01-01")
    with pytest.raises(MMStoreError, match="not ISO-8601"):
        catalog.at("car", "tomorrow")
    with pytest.raises(NotFoundError, match="no versions"):
        catalog.at("truck", "2026-01-01")


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_fleet_commands(small_fleet, capsys):
    store, expected = small_fleet
    code, out, _ = run(capsys, "--store", store.url, "fleet", "ls", "--json", "--match", "car-000[12]")
    assert code == 0 and [r["lineage"] for r in json.loads(out)["lineages"]] == ["car-0001", "car-0002"]
    code, out, _ = run(capsys, "--store", store.url, "fleet", "ls")
    assert code == 0 and expected["car-0000"][-1][1][:12] in out
    code, out, _ = run(capsys, "--store", store.url, "fleet", "changed", "--since", device_time(1, 3), "--json")
    assert code == 0 and [r["lineage"] for r in json.loads(out)["lineages"]] == ["car-0002"]
    code, out, _ = run(capsys, "--store", store.url, "fleet", "at", "car-0002", "--time", device_time(2, 1))
    assert code == 0 and out.split()[0] == expected["car-0002"][1][1]
    code, out, _ = run(capsys, "--store", store.url, "fleet", "rebuild", "--json")
    assert code == 0 and json.loads(out)["lineages"] == sorted(expected)
    code, _, err = run(capsys, "--store", store.url, "fleet", "at", "car-0002", "--time", "2020-01-01")
    assert code == 1 and err.count("\n") == 1 and "give a later time" in err
    _forge(store, HEADS_KEY, b"{")
    code, _, err = run(capsys, "--store", store.url, "fleet", "ls")
    assert code == 1 and "mmstore fleet rebuild" in " ".join(err.split())


def test_prune_rebases_sets_and_refresh_follows_them(small_fleet):
    store, expected = small_fleet
    store.prune("car-0001", RetentionPolicy(keep_last=2), grace=None)
    catalog = Catalog(Store.open(store.url, FAST))
    kept = truth(store)["car-0001"]
    assert len(kept) == 2 and kept[-1][0] == expected["car-0001"][-1][0]
    assert catalog.at("car-0001", kept[0][0]).id == kept[0][1]  # the catalog's old ids are stale: answered anew
    catalog.refresh("car-0001")
    assert [(v.time, v.id) for v in catalog.versions("car-0001")] == kept
    incremental = catalog_bytes(store)
    catalog.rebuild()
    assert catalog_bytes(store) == incremental


def test_a_writer_that_moved_a_lineage_extends_its_document_without_reading_ref_or_document(tmp_path):
    store = Store.open(str(tmp_path / "s"), FAST)
    first = store.save(device_set(2, 1), lineage="car-0", meta={"device_time": device_time(0, 0)})
    catalog, counting = fresh(store)
    catalog.record([first])
    counting.calls.clear()
    writer = Store.open(str(tmp_path / "s"), FAST)
    second = writer.save(device_set(2, 2), lineage="car-0", meta={"device_time": device_time(0, 1)})
    third = writer.save(device_set(2, 3), lineage="car-0", meta={"device_time": device_time(0, 2)})
    catalog.record([second, third], {"car-0": (first, third)})
    assert counting.calls["get"] == 3 and counting.calls["swap"] == 2  # heads, the two new manifests; the document and heads swaps
    assert [(v.time, v.id) for v in catalog.versions("car-0")] == truth(store)["car-0"]
    assert catalog_bytes(store) == catalog_bytes(_rebuilt(store))


def test_a_remembered_document_another_writer_changed_costs_a_retry_never_an_entry(tmp_path):
    store = Store.open(str(tmp_path / "s"), FAST)
    first = store.save(device_set(2, 1), lineage="car-0", meta={"device_time": device_time(0, 0)})
    ours = Catalog(Store.open(str(tmp_path / "s"), FAST))
    ours.record([first])
    second = store.save(device_set(2, 2), lineage="car-0", meta={"device_time": device_time(0, 1)})
    Catalog(Store.open(str(tmp_path / "s"), FAST)).record([second])  # another writer: our remembered document is stale
    third = store.save(device_set(2, 3), lineage="car-0", meta={"device_time": device_time(0, 2)})
    ours.record([third], {"car-0": (first, third)})  # a wrong claim of where it moved from is only a hint
    assert [(v.time, v.id) for v in ours.versions("car-0")] == truth(store)["car-0"] and len(truth(store)["car-0"]) == 3
    assert catalog_bytes(store) == catalog_bytes(_rebuilt(store))


def _rebuilt(store: Store) -> Store:
    """A copy of the store's sets and refs with a catalog made by `rebuild` alone."""
    import shutil

    copy = store.url + "-rebuilt"
    shutil.copytree(store.url, copy, ignore=shutil.ignore_patterns("catalog"))
    fresh_store = Store.open(copy, FAST)
    Catalog(fresh_store).rebuild()
    return fresh_store


def test_indexing_split_over_threads_publishes_the_heads_once_and_equals_a_rebuild(tmp_path):
    store = Store.open(str(tmp_path / "s"), FAST)
    firsts = {f"car-{i}": store.save(device_set(2, i), lineage=f"car-{i}", meta={"device_time": device_time(i, 0)}) for i in range(4)}
    Catalog(store).rebuild()
    newer = {name: store.save(device_set(2, 10 + i), lineage=name, meta={"device_time": device_time(i, 1)})
             for i, name in enumerate(firsts)}
    catalog, counting = fresh(store)
    before = catalog.before()
    names = list(newer)
    with ThreadPoolExecutor(2) as pool:  # as ingest tasks do: each indexes its own lineages
        parts = list(pool.map(lambda part: catalog.index([newer[n] for n in part], {n: (firsts[n], newer[n]) for n in part}),
                              [names[:2], names[2:]]))
    counting.calls.clear()
    catalog.publish(before, {name: head for part in parts for name, head in part.items()})
    assert counting.calls["swap"] == 1 and counting.calls["get"] == 0  # one swap, nothing read again
    assert {name: head.head for name, head in catalog.heads().items()} == newer
    assert catalog_bytes(store) == catalog_bytes(_rebuilt(store))


def test_a_publish_over_heads_another_writer_moved_reads_them_again_and_loses_no_entry(tmp_path):
    store = Store.open(str(tmp_path / "s"), FAST)
    first = {name: store.save(device_set(2, i), lineage=name, meta={"device_time": device_time(i, 0)})
             for i, name in enumerate(["car-0", "car-1"])}
    Catalog(store).rebuild()
    ours = Catalog(Store.open(str(tmp_path / "s"), FAST))
    before = ours.before()
    mine = store.save(device_set(2, 20), lineage="car-0", meta={"device_time": device_time(0, 1)})
    entries = ours.index([mine], {"car-0": (first["car-0"], mine)})
    theirs = store.save(device_set(2, 21), lineage="car-1", meta={"device_time": device_time(1, 1)})
    Catalog(Store.open(str(tmp_path / "s"), FAST)).record([theirs])  # another writer publishes between our read and swap
    ours.publish(before, entries)
    assert {name: head.head for name, head in ours.heads().items()} == {"car-0": mine, "car-1": theirs}
    assert catalog_bytes(store) == catalog_bytes(_rebuilt(store))


def test_a_publish_without_a_catalog_rebuilds_it(tmp_path):
    store = Store.open(str(tmp_path / "s"), FAST)
    set_id = store.save(device_set(2, 1), lineage="car-0", meta={"device_time": device_time(0, 0)})
    catalog = Catalog(store)
    assert catalog.before() is None
    catalog.publish(None, catalog.index([set_id]))
    assert catalog.heads()["car-0"].head == set_id
