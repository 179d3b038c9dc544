"""Provenance approach: bit-exact replay, and a clear error instead of a model whenever replay cannot be trusted."""

from __future__ import annotations

import os
import sys
import textwrap
import time
from pathlib import Path

import pytest

from mmstore import DatasetRef, MMStoreError, ReproductionError, Settings, Store
from mmstore.errors import DatasetError, EnvironmentMismatchError, IntegrityError, TrainerChangedError
from mmstore.provenance_records import decode_changes
from mmstore.replay import InProcessExecutor

from . import forge
from .conftest import TEST_SETTINGS
from .provenance_fleet import SpyExecutor, initial_set, retrain

# The default dataset roots: only the store's own dataset location, beside it.
SETTINGS = TEST_SETTINGS.model_copy(update={"dataset_roots": ()})

N = 40
# One U3 cycle at 5% + 5%: two models retrained fully, two in their last layer only.
PLAN = {3: "full", 17: "full", 8: "partial", 31: "partial"}



@pytest.fixture
def cycle(tmp_path):
    """A store holding an initial set and one U3 cycle derived from it; datasets under tmp_path."""
    store = Store.open(str(tmp_path / "store"), SETTINGS)
    base = initial_set(N, seed=1)
    derived, record = retrain(base, PLAN, datasets(tmp_path), cycle=1, seed=1)
    store.save(base, approach="provenance", lineage="fleet")
    set_id = store.save(derived, approach="provenance", lineage="fleet", provenance=record)
    return store, set_id, derived, record


def datasets(tmp_path) -> str:
    """The dataset location of the store at tmp_path/store, by convention."""
    return str(tmp_path / "store-datasets")


def fresh(store: Store, settings: Settings = SETTINGS) -> Store:
    """The same store through a new object: no manifests or rows cached."""
    return Store(store.backend, settings)


def test_u3_cycle_replays_bit_exactly_in_process_and_in_workers(cycle):
    store, set_id, derived, _ = cycle
    spy = SpyExecutor()
    assert fresh(store).recover(set_id, executor=spy).equals(derived)
    assert sorted(spy.trained) == sorted(PLAN)
    assert fresh(store).recover(set_id).equals(derived)  # the default: worker processes
    assert fresh(store).recover(set_id, models=[8, 0, 8]).equals(derived.select([8, 0, 8]))


def test_derived_set_stores_only_records_and_partial_updates_only_last_layer_digests(cycle):
    store, set_id, _, record = cycle
    manifest = store.manifest(set_id)
    assert sorted(manifest.blobs) == ["changes", "environment", "recipe"]
    changes = decode_changes(store.blobs.get(manifest.blobs["changes"]).tobytes(), set_id, 1 << 20)
    by_model = {entry.model: entry for entry in changes.models}
    assert sorted(by_model) == sorted(PLAN)
    assert sorted(by_model[8].tensors) == ["net.6.bias", "net.6.weight"]
    assert len(by_model[3].tensors) == len(store.arch_document(manifest).layout.tensors)
    assert by_model[3].dataset == DatasetRef.model_validate(record.changes[3][1])
    # Datasets stay outside: blobs and datasets are named by the same digest, and none was stored.
    assert not any(store.blobs.exists(ref.digest) for _, ref in record.changes.values())
    assert store.size(set_id) < len(PLAN) * store.arch_document(manifest).layout.row_nbytes


def test_recipe_and_environment_are_shared_across_sets(cycle, tmp_path):
    store, set_id, derived, _ = cycle
    again, record = retrain(derived, {5: "full", 6: "partial"}, datasets(tmp_path), cycle=2, seed=1)
    second = store.save(again, approach="provenance", lineage="fleet", provenance=record)
    first, latest = store.manifest(set_id), store.manifest(second)
    assert first.blobs["recipe"] == latest.blobs["recipe"]
    assert first.blobs["environment"] == latest.blobs["environment"]
    assert store.size(second) < store.size(set_id)
    assert fresh(store).recover(second, executor=InProcessExecutor()).equals(again)


def test_tampered_dataset_is_named_before_any_training(cycle, tmp_path):
    store, set_id, derived, record = cycle
    later, next_record = retrain(derived, {5: "full"}, datasets(tmp_path), cycle=2, seed=1)
    latest = store.save(later, approach="provenance", lineage="fleet", provenance=next_record)
    # Tamper with a dataset of the older set: even the newer set's replay must not start.
    uri = record.changes[17][1].uri
    with open(uri, "r+b") as f:
        f.seek(-1, 2)
        f.write(b"\x00" if f.read(1) != b"\x00" else b"\x01")
    spy = SpyExecutor()
    with pytest.raises(DatasetError, match="cell-00017.npz.*changed"):
        fresh(store).recover(latest, executor=spy)
    assert spy.trained == []


def test_missing_dataset_is_named(cycle):
    store, set_id, _, record = cycle
    uri = record.changes[8][1].uri
    os.remove(uri)
    spy = SpyExecutor()
    with pytest.raises(DatasetError, match="cell-00008.npz is missing"):
        fresh(store).recover(set_id, executor=spy)
    assert spy.trained == []
    # Models whose datasets are intact are still recoverable.
    assert fresh(store).recover(set_id, models=[3], executor=spy).equals(cycle[2].select([3]))


@pytest.fixture
def own_trainer(tmp_path, monkeypatch):
    """A trusted training module in tmp_path whose source a test can change."""
    (tmp_path / "mytrainer.py").write_text(textwrap.dedent("""
        from mmstore import register_trainer
        from workloads.training import train_from_bytes

        @register_trainer
        def train(model, dataset, recipe):
            return train_from_bytes(model, dataset, recipe)
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path / "mytrainer.py"
    sys.modules.pop("mytrainer", None)


def test_changed_training_function_is_refused_unless_forced(tmp_path, own_trainer):
    settings = SETTINGS.model_copy(update={"trusted_modules": ("tests", "mytrainer")})
    store = Store.open(str(tmp_path / "store"), settings)
    base = initial_set(N, seed=2)
    derived, record = retrain(base, PLAN, datasets(tmp_path), 1, 2, trainer="mytrainer:train")
    store.save(base, approach="provenance", lineage="fleet")
    set_id = store.save(derived, approach="provenance", lineage="fleet", provenance=record)
    own_trainer.write_text(own_trainer.read_text() + "\n# edited after the set was saved\n")
    spy = SpyExecutor()
    with pytest.raises(TrainerChangedError, match="mytrainer:train"):
        fresh(store, settings).recover(set_id, executor=spy)
    assert spy.trained == []
    assert fresh(store, settings).recover(set_id, executor=spy, force=True).equals(derived)


def test_non_reproducible_training_names_model_and_tensor(tmp_path):
    store = Store.open(str(tmp_path / "store"), SETTINGS)
    base = initial_set(N, seed=3)
    derived, record = retrain(base, {17: "full"}, datasets(tmp_path), 1, 3, trainer="tests.provenance_fleet:drifting_train")
    store.save(base, approach="provenance", lineage="fleet")
    set_id = store.save(derived, approach="provenance", lineage="fleet", provenance=record)
    with pytest.raises(ReproductionError, match=r"model 17 .*'net\.4\.bias'"):
        fresh(store).recover(set_id, executor=InProcessExecutor())


def test_partial_update_that_touches_frozen_layers_is_caught(tmp_path):
    store = Store.open(str(tmp_path / "store"), SETTINGS)
    base = initial_set(N, seed=4)
    derived, record = retrain(base, {8: "partial"}, datasets(tmp_path), 1, 4)
    store.save(base, approach="provenance", lineage="fleet")
    set_id = store.save(derived, approach="provenance", lineage="fleet", provenance=record)
    with pytest.raises(ReproductionError, match=r"model 8 .*'net\.0\.weight'"):
        fresh(store).recover(set_id, executor=FirstLayerFlipper())


class FirstLayerFlipper(InProcessExecutor):
    """Trains, then flips one bit of a layer a partial update must leave alone."""

    def replay(self, task, jobs):
        """The trained rows with the lowest bit of net.0.weight's first byte flipped."""
        rows = super().replay(task, jobs).copy()
        rows[:, task.layout.spec("net.0.weight").offset] ^= 1
        return rows


def test_model_changed_without_record_is_refused_at_save(cycle):
    store, set_id, derived, record = cycle
    tampered = derived.select(range(N))
    tampered.tensors()["net.2.bias"][11] += 1.0
    with pytest.raises(MMStoreError, match=r"changed without a record \[11\]"):
        store.save(tampered, approach="provenance", base=set_id, provenance=record.model_copy(update={"changes": {}}))


def test_record_for_unchanged_model_is_refused_at_save(cycle):
    store, set_id, derived, record = cycle
    with pytest.raises(MMStoreError, match=r"records for unchanged models \[3, 8, 17, 31\]"):
        store.save(derived, approach="provenance", base=set_id, provenance=record)


def test_derived_set_without_record_is_refused(cycle):
    store, set_id, derived, _ = cycle
    with pytest.raises(MMStoreError, match="provenance=ProvenanceRecord"):
        store.save(derived, approach="provenance", base=set_id)



def test_incompatible_environment_is_refused_before_training(tmp_path):
    from envs.executors import LocalExecutor
    from envs.fingerprint import capture

    fp = capture()
    other = fp.model_copy(update={"torch": fp.torch.model_copy(update={"version": "1.7.1"})}).to_json().decode()
    store = Store.open(str(tmp_path / "store"), SETTINGS)
    base = initial_set(N, seed=5)
    derived, record = retrain(base, {3: "full"}, datasets(tmp_path), 1, 5)
    store.save(base, approach="provenance", lineage="fleet")
    set_id = store.save(derived, approach="provenance", lineage="fleet", provenance=record.model_copy(update={"environment": other}))
    with pytest.raises(EnvironmentMismatchError, match=r"torch\.version"):
        fresh(store).recover(set_id)
    assert fresh(store).recover(set_id, executor=LocalExecutor(force=True)).equals(derived)


def test_dataset_outside_the_store_location_is_refused_at_save(tmp_path):
    store = Store.open(str(tmp_path / "store"), SETTINGS)
    base = initial_set(N, seed=6)
    derived, record = retrain(base, {3: "full"}, str(tmp_path / "elsewhere"), 1, 6)
    store.save(base, approach="provenance", lineage="fleet")
    with pytest.raises(DatasetError, match="outside the dataset roots.*MMSTORE_DATASET_ROOTS"):
        store.save(derived, approach="provenance", lineage="fleet", provenance=record)
    assert len(store.list()) == 1


def test_a_change_list_bomb_is_refused_before_it_is_decoded(cycle):
    """A re-hashed replay set whose change list inflates to 1 GiB is refused at its bound, quickly."""
    store, set_id, _, _ = cycle
    forged = forge.forge_blob(Path(store.url), "fleet", "changes", forge.zstd_bomb())
    start = time.perf_counter()
    with pytest.raises(IntegrityError, match="change list"):
        fresh(store).recover(forged, executor="in-process")
    assert time.perf_counter() - start < 5
