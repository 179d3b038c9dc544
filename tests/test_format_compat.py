"""Stores written by format v1 stay readable: every version of every approach recovers bit for bit (a replayed
one on the CPU its training ran on)."""

from __future__ import annotations

import json
from pathlib import Path

import fsspec
import pytest

from mmstore import Settings, Store
from mmstore.digest import digest_bytes
from envs.fingerprint import Fingerprint, capture
from mmstore.errors import NewerFormatError, ReproductionError

FIXTURES = Path(__file__).parent / "fixtures" / "v1"
CONTENTS = json.loads((FIXTURES / "contents.json").read_text())
DATASETS = "memory://mmstore-v1-fixture/datasets"


@pytest.fixture(scope="module")
def v1_datasets():
    """The provenance fixture's datasets where its records name them."""
    fs = fsspec.filesystem("memory")
    for path in (FIXTURES / "datasets").rglob("*.npz"):
        fs.pipe_file(f"/mmstore-v1-fixture/datasets/{path.relative_to(FIXTURES / 'datasets').as_posix()}", path.read_bytes())
    return DATASETS


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("approach", ["baseline", "update"])
def test_v1_store_recovers_every_version_bit_for_bit(approach):
    root = FIXTURES / approach
    before = _files(root)
    store = Store.open(str(root), Settings(durable=False))
    chain = [info.id for info in reversed(store.log("fleet"))]
    assert len(chain) == len(CONTENTS[approach])
    for set_id, content in zip(chain, CONTENTS[approach]):
        recovered = Store(store.backend, store.settings).recover(set_id)
        assert digest_bytes(recovered.data) == content
        assert len(recovered.to_modules()) == recovered.data.shape[0]
    assert store.verify() == [info.id for info in store.list()]
    assert _files(root) == before  # reading never writes


def _recorded_cpu(store: Store, set_id: str) -> str | None:
    """The CPU model in the environment fingerprint a provenance set was saved with."""
    recorded = store.blobs.get(store.manifest(set_id).blobs["environment"]).tobytes()
    return Fingerprint.model_validate_json(recorded).cpu.model


def test_v1_provenance_store_replays_bit_for_bit_on_the_cpu_it_was_recorded_on(v1_datasets):
    root = FIXTURES / "provenance"
    before = _files(root)
    store = Store.open(str(root), Settings(dataset_roots=(v1_datasets,), durable=False))
    chain = [info.id for info in reversed(store.log("fleet"))]
    assert len(chain) == len(CONTENTS["provenance"]) == 2
    snapshot, replayed = chain
    recovered = Store(store.backend, store.settings).recover(snapshot)
    assert digest_bytes(recovered.data) == CONTENTS["provenance"][0]
    options = {"executor": "in-process", "force": True}  # the trainer's source has changed since v1
    if _recorded_cpu(store, replayed) == capture().cpu.model:
        recovered = Store(store.backend, store.settings).recover(replayed, **options)
        assert digest_bytes(recovered.data) == CONTENTS["provenance"][1]
        assert store.verify(**options) == [info.id for info in store.list()]
    else:
        # Float training is bit-reproducible on the CPU it ran on, not across vendors (an AMD EPYC recorded
        # this fixture, and the numeric libraries pick their kernels by CPU): replay must refuse, never return other bits.
        with pytest.raises(ReproductionError, match="not reproducible here; replay in the recorded environment"):
            Store(store.backend, store.settings).recover(replayed, **options)
    assert _files(root) == before  # reading never writes


def test_a_newer_format_asks_for_an_upgrade(tmp_path):
    store = Store.open(str(tmp_path / "s"), Settings(durable=False))
    from tests.test_golden import golden_set

    store.save(golden_set(), lineage="g")
    (tmp_path / "s" / "mmstore.json").write_text('{"format_version": 3}')
    with pytest.raises(NewerFormatError, match="upgrade"):
        Store.open(str(tmp_path / "s")).list()
