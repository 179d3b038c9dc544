"""Update approach: lossless deltas, digest-only change detection, chain policy, refusals."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mmstore import ArchitectureError, IntegrityError, ModelSet, NotFoundError, Settings, Store
from mmstore.blobs import blob_key
from mmstore.codecs import CODECS, decode, encode
from mmstore.diff import apply, diff, restrict, tensor_digests
from mmstore.errors import InUseError

from .archs import Small
from .factories import adversarial_set, random_rows

SETTINGS = Settings(trusted_modules=("tests",))


def _changed(model_set: ModelSet, rows: list[int], tensor: int, seed: int) -> ModelSet:
    data = model_set.data.copy()
    spec = model_set.layout.tensors[tensor]
    rng = np.random.default_rng(seed)
    data[rows, spec.offset : spec.offset + spec.nbytes] = rng.integers(0, 256, (len(rows), spec.nbytes), dtype=np.uint8)
    return ModelSet(model_set.arch, model_set.layout, data)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 12), fraction=st.floats(0, 1))
def test_diff_apply_round_trip_every_dtype(seed, n, fraction):
    base = adversarial_set(n, seed)
    rng = np.random.default_rng(seed)
    new = random_rows(base, seed + 1)
    keep = rng.random(new.data.shape) >= fraction  # some bytes keep their old value, others change
    data = np.where(keep, base.data, new.data)
    delta = diff(data, tensor_digests(data, base.layout), tensor_digests(base.data, base.layout), base.layout)
    rebuilt = base.data.copy()
    apply(rebuilt, base.layout, delta.mask, delta.values)
    assert np.array_equal(rebuilt, data)
    models = np.unique(rng.integers(0, n, size=3))
    sub = base.data[models].copy()
    apply(sub, base.layout, *restrict(delta.mask, delta.values, models))
    assert np.array_equal(sub, data[models])


@settings(max_examples=60, deadline=None)
@given(data=st.binary(max_size=4096), seed=st.integers(0, 2**32 - 1),
       itemsize=st.sampled_from([1, 2, 4, 8]), codec=st.sampled_from(CODECS.names()))
def test_codecs_round_trip(data, seed, itemsize, codec):
    payload = np.frombuffer(data[: len(data) // itemsize * itemsize], dtype=np.uint8)
    reference = np.random.default_rng(seed).integers(0, 256, payload.size, dtype=np.uint8)
    encoded = encode(payload, itemsize, codec, reference)
    decoded = decode(encoded, payload.size, itemsize, codec)
    if CODECS.get(codec).xor:
        decoded = np.bitwise_xor(decoded, reference)
    assert np.array_equal(decoded, payload)


def test_codec_rejects_wrong_size():
    encoded = encode(np.arange(16, dtype=np.uint8), 4, "group-zstd")
    with pytest.raises(IntegrityError):
        decode(encoded, 20, 4, "group-zstd")


@pytest.fixture
def small_fleet():
    return random_rows(ModelSet.from_modules([Small() for _ in range(200)]), seed=3)


def test_delta_stores_only_changed_tensors(local_store, small_fleet):
    base_id = local_store.save(small_fleet, approach="update", lineage="f")
    changed = _changed(small_fleet, [3, 50, 199], tensor=2, seed=1)
    delta_id = local_store.save(changed, approach="update", lineage="f")
    manifest = local_store.manifest(delta_id)
    assert manifest.data.kind == "delta" and manifest.base == base_id
    spec = small_fleet.layout.tensors[2]
    assert local_store.size(delta_id) < 3 * spec.nbytes + 2_000
    assert Store.open(local_store.url, SETTINGS).recover(delta_id).equals(changed)


def test_unchanged_set_costs_only_a_small_manifest(local_store):
    fleet = random_rows(ModelSet.from_modules([Small() for _ in range(5000)]), seed=4)
    local_store.save(fleet, approach="update", lineage="f")
    same_id = local_store.save(fleet, approach="update", lineage="f")
    assert local_store.manifest(same_id).blobs == {}
    assert local_store.size(same_id) <= 16 * 1024


def test_save_reads_no_base_parameters(local_store, small_fleet):
    base_id = local_store.save(small_fleet, approach="update", lineage="f")
    params_key = blob_key(local_store.manifest(base_id).blobs["params"].id)
    opened: list[str] = []
    backend = local_store.backend
    real_open, real_get = backend.open, backend.get
    backend.open = lambda key: opened.append(key) or real_open(key)
    backend.get = lambda key, **options: opened.append(key) or real_get(key, **options)
    fresh = Store(backend, SETTINGS)
    fresh.save(_changed(small_fleet, [1], 0, seed=2), approach="update", lineage="f")
    assert params_key not in opened
    assert any(key.startswith("blobs/") for key in opened)  # the digest table was read


def test_chain_depth_policy_starts_a_new_snapshot(tmp_path, small_fleet):
    store = Store.open(str(tmp_path / "s"), Settings(trusted_modules=("tests",), max_chain_depth=2))
    current, kinds = small_fleet, []
    for v in range(5):
        current = _changed(current, [v], 0, seed=v)
        kinds.append(store.manifest(store.save(current, approach="update", lineage="f")).data.kind)
    assert kinds == ["snapshot", "delta", "delta", "snapshot", "delta"]
    assert store.recover("f").equals(current)


def test_large_delta_becomes_a_snapshot(local_store, small_fleet):
    local_store.save(small_fleet, approach="update", lineage="f")
    everything = random_rows(small_fleet, seed=9)
    assert local_store.manifest(local_store.save(everything, approach="update", lineage="f")).data.kind == "snapshot"


def test_xor_codec_when_base_is_at_hand(local_store, small_fleet):
    local_store.save(small_fleet, approach="update", lineage="f")
    base = local_store.recover("f")  # materialised: this store now holds the base's values
    changed = _changed(base, list(range(0, 200, 7)), 1, seed=5)
    set_id = local_store.save(changed, approach="update", lineage="f")
    assert local_store.manifest(set_id).data.codec == "xor-group-zstd"
    fresh = Store.open(local_store.url, SETTINGS)
    assert fresh.recover(set_id).equals(changed)
    assert fresh.recover(set_id, models=[7, 8, 7]).equals(changed.select([7, 8, 7]))


def test_other_architecture_than_base_is_refused(local_store, small_fleet):
    base_id = local_store.save(small_fleet, approach="update")
    with pytest.raises(ArchitectureError, match="another architecture"):
        local_store.save(adversarial_set(3, 1), approach="update", base=base_id)


def test_missing_and_corrupt_base_are_clear_errors(local_store, small_fleet):
    base_id = local_store.save(small_fleet, approach="update", lineage="f")
    delta_id = local_store.save(_changed(small_fleet, [2], 0, seed=1), approach="update", lineage="f")
    params_key = blob_key(local_store.manifest(base_id).blobs["params"].id)
    damaged = bytearray(local_store.backend.get(params_key))
    damaged[-1] ^= 0x10
    local_store.backend.put(params_key, bytes(damaged), exclusive=False)
    with pytest.raises(IntegrityError):
        Store.open(local_store.url, SETTINGS).recover(delta_id)
    local_store.backend.delete(f"sets/{base_id}.json")
    with pytest.raises(NotFoundError, match=base_id):
        Store.open(local_store.url, SETTINGS).recover(delta_id)


def test_deleting_a_base_is_refused(local_store, small_fleet):
    base_id = local_store.save(small_fleet, approach="update", lineage="f")
    delta_id = local_store.save(_changed(small_fleet, [2], 0, seed=1), approach="update", lineage="f")
    with pytest.raises(InUseError, match=delta_id[:12]):
        local_store.delete(base_id)
    freed = local_store.delete(delta_id)
    assert freed > 0
    assert local_store.resolve("f") == base_id
    assert [i.id for i in local_store.list()] == [base_id]
    assert local_store.recover(base_id).equals(small_fleet)


def test_changed_factory_source_is_not_another_architecture(local_store, small_fleet):
    base_id = local_store.save(small_fleet, approach="update", lineage="f")
    edited = ModelSet(small_fleet.arch.model_copy(update={"source_digest": "0" * 64}), small_fleet.layout, small_fleet.data)
    derived = local_store.save(_changed(edited, [1], 0, seed=3), approach="update", lineage="f")
    assert local_store.manifest(derived).base == base_id
    assert local_store.manifest(derived).data.kind == "delta"


def test_keep_checks_the_models_then_enables_xor_deltas(local_store, small_fleet):
    base_id = local_store.save(small_fleet, approach="update", lineage="f")
    fresh = Store.open(local_store.url, SETTINGS)
    with pytest.raises(IntegrityError, match="not the content"):
        fresh.keep(base_id, random_rows(small_fleet, seed=11))
    fresh.keep(base_id, small_fleet)
    changed = _changed(small_fleet, [4, 9], 1, seed=6)
    set_id = fresh.save(changed, approach="update", lineage="f")
    assert fresh.manifest(set_id).data.codec == "xor-group-zstd"
    assert Store.open(local_store.url, SETTINGS).recover(set_id).equals(changed)


def test_remember_copies_writable_rows_and_keeps_read_only_rows_it_can_own(tmp_path):
    store = Store.open(str(tmp_path / "s"), Settings(cache_sets=8))
    writable = np.arange(12, dtype=np.uint8).reshape(3, 4)
    store.remember("a" * 64, writable)
    writable[0, 0] = 99  # the caller's later writes do not reach the kept copy
    assert store.cached_rows("a" * 64)[0, 0] == 0
    owned = writable.copy()
    owned.setflags(write=False)
    store.remember("b" * 64, owned)
    assert store.cached_rows("b" * 64) is owned  # nobody can modify it: kept without a copy
    view = writable[1:]
    view.setflags(write=False)  # read-only, but its memory is another array's, which may still change
    store.remember("c" * 64, view)
    assert store.cached_rows("c" * 64) is not view
