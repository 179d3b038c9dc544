"""The tasks as plain functions (`.fn`): no Prefect server involved."""

from __future__ import annotations

import numpy as np
import pytest

from flows.fleet_update import TRAINER, recipes_for
from mmstore import ModelSet, Settings, Store
from mmstore.replay import ReplayTask
from tasks.fleet import cycle_data, initial_models
from tasks.store import diff_sets, hash_set, persist, resolve_chain
from tasks.training import assemble, train_batch, training_jobs

CELLS, SEED = 12, 3


@pytest.fixture(scope="module")
def base() -> ModelSet:
    """A small seeded fleet's initial models."""
    return initial_models.fn(CELLS, SEED, "ffnn48")


def _changed(model_set: ModelSet, model: int) -> ModelSet:
    """A copy with one byte of one tensor of one model flipped."""
    data = model_set.data.copy()
    data[model, model_set.layout.tensors[0].offset] ^= 0x01
    return ModelSet(model_set.arch, model_set.layout, data)


def test_hash_and_diff_count_exactly_the_changed_tensors(base):
    derived = _changed(base, 5)
    digests = hash_set.fn(derived)
    assert digests.shape[:2] == (CELLS, len(base.layout.tensors))
    assert diff_sets.fn(digests, hash_set.fn(base)) == {"models": 1, "tensors": 1}
    assert diff_sets.fn(digests, None) == {"models": CELLS, "tensors": CELLS * len(base.layout.tensors)}


def test_persist_and_resolve_chain(base, tmp_path):
    store_url = str(tmp_path / "store")
    first = persist.fn(store_url, base, "update", None, "fleet", {"cycle": 0})
    second = persist.fn(store_url, _changed(base, 2), "update", first["id"], "fleet", {"cycle": 1})
    assert first["bytes"] > second["bytes"] > 0, "a one-byte change must store far less than the snapshot"
    chain = resolve_chain.fn(store_url, second["id"])
    assert [c["id"] for c in chain] == [second["id"], first["id"]]
    store = Store.open(store_url)
    assert store.resolve("fleet") == second["id"]
    assert store.recover(second["id"]).equals(_changed(base, 2))


def test_training_jobs_and_assemble_replace_only_the_retrained_rows(base):
    cells, cycle = [1, 4, 9], 1
    data = cycle_data.fn(SEED, CELLS, cycle, "ffnn48")
    recipe_of = {1: "full", 4: "partial", 9: "full"}
    jobs = training_jobs.fn(base, cells, recipe_of, recipes_for("ffnn48", cycle), data)
    assert [job.model for job in jobs] == cells
    spec = ReplayTask(arch=base.arch, layout=base.layout, trainer=TRAINER, trusted=Settings().allowed_prefixes())
    inline = train_batch.fn(spec, jobs, 0)
    # Worker processes (the default) and inline training (what a Dask worker runs) give the same bytes.
    np.testing.assert_array_equal(inline, train_batch.fn(spec, jobs, 2))
    new = assemble.fn(base, cells, [inline[:1], inline[1:]])
    changed = np.flatnonzero(np.any(new.data != base.data, axis=1))
    assert changed.tolist() == cells
    np.testing.assert_array_equal(new.data[cells], inline)
