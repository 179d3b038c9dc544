"""Golden bytes: pin the on-disk format (schema 1) so a change to it is never accidental."""

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
    b'{"approach":"baseline","arch":{"chunks":[],"id":"9b5e3c4e8fad1a6c263d6d8f439d0ea1ebff97c13f344b00598ed9b0d80347bc",'
    b'"size":396},"base":null,"blobs":{"params":{"chunks":[],"id":"745261764ad2994ef2bbd21f4240c4081b0b21ec5b322509cd48bd4'
    b'0150347c8","size":684}},"created":"2026-01-01T00:00:00.000+00:00","extra":{},"lineage":null,"meta":{"note":"golden"},'
    b'"n_models":3,"schema_version":1}'
)
GOLDEN_ARCH_DOC = (
    b'{"arch":{"factory":"tests.archs:Small","kwargs":{},"source_digest":""},"layout":{"row_nbytes":228,"tensors":['
    b'{"dtype":"float32","name":"net.0.weight","offset":0,"shape":[8,5]},{"dtype":"float32","name":"net.0.bias",'
    b'"offset":160,"shape":[8]},{"dtype":"float32","name":"net.2.weight","offset":192,"shape":[1,8]},'
    b'{"dtype":"float32","name":"net.2.bias","offset":224,"shape":[1]}]},"schema_version":1}'
)
GOLDEN_SET_ID = "703aafcada6259721a805f953fc9093835411086c06ecfa072924f59929c32cc"


def test_format_is_pinned(tmp_path):
    store = Store(Store.open(str(tmp_path / "s"), TEST_SETTINGS).backend, TEST_SETTINGS, clock=lambda: CLOCK)
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
        "blobs/9b/5e3c4e8fad1a6c263d6d8f439d0ea1ebff97c13f344b00598ed9b0d80347bc",
        f"sets/{GOLDEN_SET_ID}.json",
    ])
