"""One suite every approach and every backend must pass: bit-exact, verified, chain-aware.

An approach joins by adding its scenario to `tests/scenarios.py`.
"""

from __future__ import annotations

import pytest

from mmstore import IntegrityError, NotFoundError, Store
from mmstore.blobs import blob_key

from .factories import bits_equal
from .scenarios import SCENARIOS


@pytest.fixture(params=sorted(SCENARIOS))
def approach(request):
    return request.param


def save_chain(store: Store, approach: str, n: int = 24, versions: int = 3, seed: int = 7):
    """Save `versions` sets of `approach`'s scenario; returns ids and the expected sets."""
    return SCENARIOS[approach](store, n, versions, seed)


def test_round_trip_is_bit_exact(store, approach):
    ids, sets = save_chain(store, approach)
    for set_id, expected in zip(ids, sets):
        got = store.recover(set_id)
        assert got.equals(expected)
        first = got.state_dict(0)
        for name, t in expected.state_dict(0).items():
            assert bits_equal(first[name], t), name


def test_recover_after_reopen(store, approach):
    ids, sets = save_chain(store, approach)
    reopened = Store(store.backend, store.settings)
    assert reopened.recover(ids[-1]).equals(sets[-1])
    assert reopened.resolve("fleet") == ids[-1]


def test_single_and_subset_recovery(store, approach):
    ids, sets = save_chain(store, approach)
    picked = [5, 0, 23, 5]
    got = store.recover(ids[-1], models=picked)
    assert len(got) == 4
    assert got.equals(sets[-1].select(picked))


def test_log_walks_to_root(store, approach):
    ids, _ = save_chain(store, approach)
    assert [info.id for info in store.log("fleet")] == ids[::-1]
    assert store.log(ids[0])[-1].base is None


def _corrupt(store: Store, key: str, edit) -> None:
    store.backend.put(key, edit(bytearray(store.backend.get(key))), exclusive=False)


def _blob_keys(store: Store, set_id: str) -> list[str]:
    manifest = store.manifest(set_id)
    return [blob_key(ref.id) for ref in [manifest.arch, *manifest.blobs.values()]]


@pytest.mark.parametrize("where", [0, 0.5, -1])
def test_flipped_byte_is_detected(store, approach, where):
    ids, _ = save_chain(store, approach)
    for key in _blob_keys(store, ids[-1]):
        fresh = Store(store.backend, store.settings)

        def flip(b: bytearray) -> bytearray:
            i = int(where * (len(b) - 1)) if where != -1 else len(b) - 1
            b[i] ^= 0x01
            return b

        original = store.backend.get(key)
        _corrupt(store, key, flip)
        with pytest.raises(IntegrityError):
            fresh.verify(ids[-1])
        store.backend.put(key, original, exclusive=False)


def test_truncated_blob_is_detected(store, approach):
    ids, _ = save_chain(store, approach)
    key = _blob_keys(store, ids[-1])[-1]
    _corrupt(store, key, lambda b: b[: len(b) // 2])
    with pytest.raises(IntegrityError, match="truncated|corrupt"):
        Store(store.backend, store.settings).recover(ids[-1])


def test_appended_bytes_are_detected(store, approach):
    ids, _ = save_chain(store, approach)
    key = _blob_keys(store, ids[-1])[-1]
    _corrupt(store, key, lambda b: b + b"x")
    with pytest.raises(IntegrityError):
        Store(store.backend, store.settings).recover(ids[-1])


def test_tampered_manifest_is_detected(store, approach):
    ids, _ = save_chain(store, approach)
    key = f"sets/{ids[-1]}.json"
    _corrupt(store, key, lambda b: bytearray(bytes(b).replace(b'"n_models":24', b'"n_models":23')))
    with pytest.raises(IntegrityError, match="altered"):
        Store(store.backend, store.settings).recover(ids[-1])


def test_missing_base_is_reported(store, approach):
    ids, _ = save_chain(store, approach)
    store.backend.delete(f"sets/{ids[0]}.json")
    with pytest.raises(NotFoundError, match=ids[0][:12]):
        Store(store.backend, store.settings).log(ids[-1])


def test_missing_blob_is_reported(store, approach):
    ids, _ = save_chain(store, approach, versions=1)
    for key in _blob_keys(store, ids[0]):
        original = store.backend.get(key)
        store.backend.delete(key)
        with pytest.raises(NotFoundError, match="missing"):
            Store(store.backend, store.settings).verify(ids[0])
        store.backend.put(key, original, exclusive=False)
