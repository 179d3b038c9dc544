"""Golden bytes: pin the on-disk format (v2) of every approach so a change to it is never accidental."""

from __future__ import annotations

import numpy as np

from mmstore import ArchSpec, ModelSet, Store
from mmstore.blobs import blob_key
from mmstore.layout import Layout

from .archs import Small
from .conftest import TEST_SETTINGS

CLOCK = "2026-01-01T00:00:00.000+00:00"


def golden_set() -> ModelSet:
    layout = Layout.of(Small().state_dict())
    data = (np.arange(3 * layout.row_nbytes, dtype=np.int64) % 251).astype(np.uint8).reshape(3, -1)
    return ModelSet(ArchSpec(factory="tests.archs:Small"), layout, data)


GOLDEN_MANIFEST = (
    b'{"approach":"baseline","arch":{"chunks":[],"id":"50e1d8a9e185678042af3a7f3196663da8c156343e15d49d028ef8b11583fb00",'
    b'"size":406},"base":null,"created":"2026-01-01T00:00:00.000+00:00","data":{"params":{"chunks":[],"id":"745261764ad'
    b'2994ef2bbd21f4240c4081b0b21ec5b322509cd48bd40150347c8","size":684}},"lineage":null,"meta":{"note":"golden"},'
    b'"n_models":3,"schema_version":2}'
)
GOLDEN_ARCH_DOC = (
    b'{"arch":{"factory":"tests.archs:Small","kwargs":{},"source_digest":""},"layout":{"row_nbytes":228,"tensors":['
    b'{"dtype":"float32","name":"net.0.weight","offset":0,"shape":[8,5]},{"dtype":"float32","name":"net.0.bias",'
    b'"offset":160,"shape":[8]},{"dtype":"float32","name":"net.2.weight","offset":192,"shape":[1,8]},'
    b'{"dtype":"float32","name":"net.2.bias","offset":224,"shape":[1]}],"ties":{}},"schema_version":2}'
)
GOLDEN_SET_ID = "6268aa1deacb35a266445cf561f7c4f0c2caf5f2ec309a72496abda72ed3604f"
GOLDEN_UPDATE_IDS = (
    "6d2faaa4c6b8b3cd4d63867b2ebaf691684c2abaf46a2ac57b5c43a8cfef1085",  # snapshot
    "60faea992f81a7b83a741b042a997a7125ebf84892ad9cdc485099e51fc035ea",  # raw delta: model 1's first bytes flipped
)
GOLDEN_DELTA_DATA = (
    b'"data":{"changes":{"chunks":[],"id":"c121d0b1c16404f677bb6bace1e2e80dcdf3a27837ccbd105df03962c292393c","size":27},'
    b'"codec":"raw","content":"d366d7fd824de15fc585398a7c870f7a96322d1d14b4750b815d91e8ba7e1765","depth":1,"kind":"delta",'
    b'"segments":[160,0,0,0],"values":{"chunks":[],"id":"8dbb874a0ab809f1bb7bd6aa80702def5981065c9943fe282fdcbdb67d655662",'
    b'"size":160}}'
)


def golden_store(tmp_path) -> Store:
    return Store(Store.open(str(tmp_path / "s"), TEST_SETTINGS).backend, TEST_SETTINGS, clock=lambda: CLOCK)


def test_baseline_format_is_pinned(tmp_path):
    store = golden_store(tmp_path)
    set_id = store.save(golden_set(), meta={"note": "golden"})
    manifest = store.backend.get(f"sets/{set_id}.json")
    arch_doc = store.backend.get(blob_key(store.manifest(set_id).arch.id))
    params = store.backend.get(blob_key(store.manifest(set_id).blobs["params"].id))
    assert params == golden_set().data.tobytes()
    assert arch_doc == GOLDEN_ARCH_DOC
    assert manifest == GOLDEN_MANIFEST
    assert set_id == GOLDEN_SET_ID
    files = sorted(p.relative_to(tmp_path / "s").as_posix() for p in (tmp_path / "s").rglob("*") if p.is_file())
    assert files == sorted([
        "blobs/74/5261764ad2994ef2bbd21f4240c4081b0b21ec5b322509cd48bd40150347c8",
        "blobs/50/e1d8a9e185678042af3a7f3196663da8c156343e15d49d028ef8b11583fb00",
        f"sets/{GOLDEN_SET_ID}.json",
        "mmstore.json",
    ])
    assert store.backend.get("mmstore.json") == b'{"format_version": 2}'


def test_update_format_is_pinned(tmp_path):
    store = golden_store(tmp_path)
    first = golden_set()
    data = first.data.copy()
    data[1, :8] ^= 0xFF
    ids = (store.save(first, approach="update", lineage="u"),
           store.save(ModelSet(first.arch, first.layout, data), approach="update", lineage="u"))
    assert ids == GOLDEN_UPDATE_IDS
    assert GOLDEN_DELTA_DATA in store.backend.get(f"sets/{ids[1]}.json")
    snapshot = store.manifest(ids[0]).data
    assert snapshot.kind == "snapshot" and snapshot.content == snapshot.params.id
    assert store.backend.get(blob_key(snapshot.params.id)) == first.data.tobytes()


def test_provenance_format_is_pinned(tmp_path):
    """A first provenance set is a snapshot document; a derived one names recipe, environment and change list."""
    store = golden_store(tmp_path)
    first = store.save(golden_set(), approach="provenance", lineage="p")
    assert store.backend.get(f"sets/{first}.json").startswith(
        b'{"approach":"provenance","arch":{"chunks":[],"id":"50e1d8a9e185678042af3a7f3196663da8c156343e15d49d028ef8b11583fb00",'
        b'"size":406},"base":null,"created":"2026-01-01T00:00:00.000+00:00","data":{"kind":"snapshot","params":{"chunks":[],'
        b'"id":"745261764ad2994ef2bbd21f4240c4081b0b21ec5b322509cd48bd40150347c8","size":684}}'
    )
    fields = set(type(store.manifest(first).data).model_fields)
    assert fields == {"kind", "params"}
    from mmstore.approaches.provenance import ProvenanceReplay

    assert set(ProvenanceReplay.model_fields) == {"kind", "changed", "content", "recipe", "environment", "changes"}
