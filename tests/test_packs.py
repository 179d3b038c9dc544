"""Group commit and packs: many lineages' versions in one pack object, committed together, read, verified, collected."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from mmstore import ModelSet, Store
from mmstore.blobs import blob_key
from mmstore.commit import LineageBatch, NewVersion
from mmstore.errors import ConflictError, FormatError, IntegrityError, MMStoreError, NotFoundError

from .conftest import TEST_SETTINGS, make_s3_bucket
from .faults import HookedBackend
from .forge import canonical, small_set

LINEAGES = ("car-0", "car-1", "car-2")


def drifted(models: ModelSet, seed: int) -> ModelSet:
    """A copy with one model's first tensor replaced (seeded)."""
    rng = np.random.default_rng(seed)
    data = models.data.copy()
    spec = models.layout.tensors[0]
    data[seed % len(models), spec.offset : spec.offset + spec.nbytes] = rng.integers(0, 256, spec.nbytes, dtype=np.uint8)
    return ModelSet(models.arch, models.layout, data)


def fleet(store: Store) -> dict[str, str]:
    """One update lineage per car; their heads."""
    return {name: store.save(small_set(4, seed=i), "update", lineage=name) for i, name in enumerate(LINEAGES)}


def batches(store: Store, heads: dict[str, str], versions: int = 2) -> tuple[list[LineageBatch], dict[str, list[ModelSet]]]:
    """`versions` new versions of every lineage, each drifting from the one before."""
    made, out = {}, []
    for i, (name, head) in enumerate(heads.items()):
        current, sets = store.recover(head), []
        for v in range(versions):
            current = drifted(current, 10 * i + v + 1)
            sets.append(current)
        made[name] = sets
        out.append(LineageBatch(name, head, [NewVersion(models, {"version": v}) for v, models in enumerate(sets)]))
    return out, made


def objects(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in (root / "blobs").rglob("*") if p.is_file()}


def test_versions_of_many_lineages_commit_as_one_pack_and_recover_bit_for_bit(tmp_path):
    store = Store.open(str(tmp_path / "s"), TEST_SETTINGS)
    heads = fleet(store)
    before_objects = objects(tmp_path / "s")
    todo, made = batches(store, heads)
    results = store.save_lineages(todo)
    assert len(objects(tmp_path / "s") - before_objects) == 1  # one pack for six versions
    reader = Store.open(str(tmp_path / "s"), TEST_SETTINGS)
    for name, ids in results.items():
        assert len(ids) == 2 and reader.resolve(name) == ids[-1]
        assert reader.manifest(ids[0]).base == heads[name] and reader.manifest(ids[1]).base == ids[0]
        for set_id, models in zip(ids, made[name]):
            manifest = reader.manifest(set_id)
            assert manifest.schema_version == 3 and manifest.data.kind == "delta"
            assert all(ref.pack is not None for ref in manifest.blobs.values())
            assert np.array_equal(reader.recover(set_id).data, models.data)
    assert sorted(reader.verify()) == sorted(info.id for info in reader.list())
    assert reader.unreferenced().freed == 0
    sizes = reader.sizes()
    assert all(0 < sizes[set_id] < 4096 for ids in results.values() for set_id in ids)


def test_threads_sharing_one_store_each_commit_their_own_pack(tmp_path):
    store = Store.open(str(tmp_path / "s"), TEST_SETTINGS)
    heads = fleet(store)
    before_objects = objects(tmp_path / "s")
    todo, made = batches(store, heads, versions=3)
    start = threading.Barrier(len(todo))

    def commit(batch: LineageBatch) -> dict:
        start.wait()  # every thread inside its own group commit at once
        return store.save_lineages([batch])

    with ThreadPoolExecutor(len(todo)) as pool:
        results = {k: v for done in pool.map(commit, todo) for k, v in done.items()}
    assert len(objects(tmp_path / "s") - before_objects) == len(todo)  # a pack per thread, none mixed
    reader = Store.open(str(tmp_path / "s"), TEST_SETTINGS)
    for name, ids in results.items():
        packs = {ref.pack for set_id in ids for ref in reader.manifest(set_id).blobs.values()}
        assert len(ids) == 3 and reader.resolve(name) == ids[-1] and len(packs) == 1
        assert all(np.array_equal(reader.recover(i).data, m.data) for i, m in zip(ids, made[name]))
    assert reader.unreferenced().freed == 0


def test_a_lineage_with_nothing_new_and_an_invalid_name_are_answered_per_lineage(tmp_path):
    store = Store.open(str(tmp_path / "s"), TEST_SETTINGS)
    heads = fleet(store)
    todo, made = batches(store, {"car-0": heads["car-0"]}, versions=1)
    results = store.save_lineages([LineageBatch("car-1", heads["car-1"]), LineageBatch("../x", heads["car-2"], todo[0].versions),
                                   *todo])
    assert results["car-1"] == [] and isinstance(results["../x"], MMStoreError) and len(results["car-0"]) == 1
    assert Store.open(str(tmp_path / "s"), TEST_SETTINGS).recover("car-0").equals(made["car-0"][0])


def test_a_set_saved_alone_keeps_the_format_and_bytes_it_always_had(tmp_path):
    store = Store.open(str(tmp_path / "s"), TEST_SETTINGS)
    set_id = store.save(small_set(4), "update", lineage="x")
    raw = json.loads((tmp_path / "s" / "sets" / f"{set_id}.json").read_text())
    assert raw["schema_version"] == 2 and "pack" not in json.dumps(raw) and "offset" not in json.dumps(raw)


def test_a_lineage_moved_meanwhile_keeps_its_head_and_the_others_commit(tmp_path):
    url = str(tmp_path / "s")
    store = Store.open(url, TEST_SETTINGS)
    heads = fleet(store)
    todo, _ = batches(store, heads)
    winner = Store.open(url, TEST_SETTINGS).save(drifted(small_set(4, seed=1), 99), "update", lineage="car-1")
    results = store.save_lineages(todo)
    assert isinstance(results["car-1"], ConflictError)
    assert Store.open(url, TEST_SETTINGS).resolve("car-1") == winner
    listed = {info.id for info in Store.open(url, TEST_SETTINGS).list()}
    assert listed == set(heads.values()) | {winner} | set(results["car-0"]) | set(results["car-2"])  # nothing left behind


def test_a_collection_between_the_pack_and_the_commit_cannot_lose_the_pack(tmp_path):
    url = str(tmp_path / "s")
    store = Store.open(url, TEST_SETTINGS)
    heads = fleet(store)
    todo, made = batches(store, heads)
    reports = []

    def write_then_collect(real, *args, **kwargs):
        written = real(*args, **kwargs)
        reports.append(Store.open(url, TEST_SETTINGS).collect_garbage(grace=0))
        return written

    # Right after the pack is written no manifest names it yet, so the collection takes it.
    writer = Store(HookedBackend(store.backend, "put", 1, write_then_collect), TEST_SETTINGS)
    writer._materialised = store._materialised
    results = writer.save_lineages(todo)
    assert reports[0].blobs == 1  # the pack was collected, and written again after the commit
    reader = Store.open(url, TEST_SETTINGS)
    for name, ids in results.items():
        assert np.array_equal(reader.recover(ids[-1]).data, made[name][-1].data)
    assert sorted(reader.verify()) == sorted(info.id for info in reader.list())


def test_a_pack_stays_while_any_set_names_it_and_goes_with_the_last(tmp_path):
    url = str(tmp_path / "s")
    store = Store.open(url, TEST_SETTINGS)
    heads = fleet(store)
    todo, _ = batches(store, heads, versions=1)
    results = store.save_lineages(todo)
    pack = store.manifest(results["car-0"][0]).data.values.pack
    for i, name in enumerate(LINEAGES):
        Store.open(url, TEST_SETTINGS).delete(results[name][0])
        Store.open(url, TEST_SETTINGS).collect_garbage(grace=0)
        present = (tmp_path / "s" / blob_key(pack)).exists()
        assert present == (i < len(LINEAGES) - 1)


def test_a_damaged_pack_is_repaired_from_a_copy(tmp_path):
    url = str(tmp_path / "s")
    store = Store.open(url, TEST_SETTINGS)
    results = store.save_lineages(batches(store, fleet(store))[0])
    subprocess.run(["cp", "-a", url, str(tmp_path / "copy")], check=True)
    pack = store.manifest(results["car-2"][1]).data.values.pack
    path = tmp_path / "s" / blob_key(pack)
    damaged = bytearray(path.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    path.write_bytes(bytes(damaged))
    with pytest.raises(IntegrityError):
        Store.open(url, TEST_SETTINGS).verify()
    repaired = Store.open(url, TEST_SETTINGS).repair(Store.open(str(tmp_path / "copy"), TEST_SETTINGS))
    assert repaired and path.read_bytes() == (tmp_path / "copy" / blob_key(pack)).read_bytes()
    Store.open(url, TEST_SETTINGS).verify()


def test_group_commit_on_s3_writes_one_pack_and_moves_each_lineage_once(s3_options):
    url = f"s3://{make_s3_bucket(s3_options)}/packs"
    store = Store.open(url, TEST_SETTINGS, **s3_options)
    heads = fleet(store)
    todo, made = batches(store, heads, versions=3)
    results = store.save_lineages(todo)
    reader = Store.open(url, TEST_SETTINGS, **s3_options)
    for name, ids in results.items():
        assert reader.resolve(name) == ids[-1] and len(ids) == 3
        assert np.array_equal(reader.recover(name).data, made[name][-1].data)


# -- forged packed references ------------------------------------------------------------------------


def _forge_values(root: Path, set_id: str, **changes) -> str:
    """Re-hash a packed manifest whose values ref has `changes`; the lineage car-0 points at it."""
    raw = json.loads((root / "sets" / f"{set_id}.json").read_text())
    raw["data"]["values"].update(changes)
    raw["data"]["values"] = {k: v for k, v in raw["data"]["values"].items() if v is not None}
    data = canonical(raw)
    from mmstore.digest import digest_bytes

    forged = digest_bytes(data)
    (root / "sets" / f"{forged}.json").write_bytes(data)
    (root / "refs" / "car-0").write_text(forged)
    return forged


@pytest.fixture
def packed(tmp_path):
    store = Store.open(str(tmp_path / "s"), TEST_SETTINGS)
    results = store.save_lineages(batches(store, fleet(store), versions=1)[0])
    return tmp_path / "s", results["car-0"][0], store.manifest(results["car-0"][0]).data.values


@pytest.mark.parametrize("change, error", [
    ({"offset": 1 << 40}, IntegrityError),            # past the end of the pack
    ({"size": 1 << 40}, MMStoreError),                # more than the limit, never allocated
    ({"offset": 0}, IntegrityError),                  # another blob's bytes of the pack
    ({"pack": "0" * 64}, NotFoundError),              # a pack that is not there
    ({"pack": None}, FormatError),                    # an offset without a pack
    ({"pack": "../../etc/passwd"}, FormatError),      # not a digest: never a path
    ({"offset": -1}, FormatError),
])
def test_a_forged_packed_reference_is_refused_in_one_line(packed, change, error):
    root, set_id, values = packed
    if change.get("offset") == 0 and values.offset == 0:
        change = {"offset": 1}
    _forge_values(root, set_id, **change)
    with pytest.raises(error) as caught:
        Store.open(str(root), TEST_SETTINGS).recover("car-0")
    assert "\n" not in str(caught.value)


def test_format_3_marks_exactly_the_manifests_with_packs(packed):
    root, set_id, _ = packed
    raw = json.loads((root / "sets" / f"{set_id}.json").read_text())
    raw["schema_version"] = 2
    forged = canonical(raw)
    from mmstore.digest import digest_bytes

    (root / "sets" / f"{digest_bytes(forged)}.json").write_bytes(forged)
    (root / "refs" / "car-0").write_text(digest_bytes(forged))
    with pytest.raises(FormatError, match="format 3"):
        Store.open(str(root), TEST_SETTINGS).recover("car-0")


def test_a_huge_packed_size_allocates_nothing_under_a_memory_limit(packed, tmp_path):
    root, set_id, _ = packed
    _forge_values(root, set_id, size=(1 << 34))
    code = f"""
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (1 << 31, 1 << 31))
from mmstore import Store
from mmstore.errors import MMStoreError
from tests.conftest import TEST_SETTINGS
try:
    Store.open({str(root)!r}, TEST_SETTINGS).recover("car-0")
except MMStoreError as exc:
    print("refused:", exc)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parent.parent)
    assert out.returncode == 0 and out.stdout.startswith("refused:"), out.stderr[-2000:]
    assert resource.getrlimit(resource.RLIMIT_AS)  # the limit applied only to the child
