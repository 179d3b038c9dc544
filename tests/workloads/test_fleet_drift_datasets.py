import numpy as np
import pytest
import torch

from workloads import FFNN48, Fleet, initial_fleet, model_errors, select_updates, stack_params
from workloads.datasets import (
    DatasetDigestError,
    DatasetError,
    DatasetMissingError,
    encode_arrays,
    read_dataset,
    write_dataset,
    write_datasets,
)


@pytest.fixture(scope="module")
def models():
    return initial_fleet(12, seed=3, samples=400)


def test_initial_fleet_is_deterministic_and_cell_specific(models):
    again = initial_fleet(12, seed=3, samples=400)
    for a, b in zip(models, again, strict=True):
        assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    stacked = stack_params(models)
    assert all(not torch.equal(v[0], v[1]) for v in stacked.values())


def test_drift_errors_grow_with_ageing_and_updates_pick_the_worst(models):
    fleet = Fleet(seed=3, n_cells=12, samples=400)
    fresh, aged = fleet.cycle_data(0, variant=1), fleet.cycle_data(10)
    before = model_errors(FFNN48, models, fresh["x"], fresh["y"])
    after = model_errors(FFNN48, models, aged["x"], aged["y"])
    assert after.shape == (12,) and np.mean(after) > 1.5 * np.mean(before)
    full, partial = select_updates(after, 0.25, 0.25)
    assert len(full) == len(partial) == 3 and not set(full) & set(partial)
    assert after[full].min() >= after[partial].max() >= np.delete(after, np.r_[full, partial]).max()


def test_select_updates_defaults_and_validation():
    errors = np.random.default_rng(0).random(5_000)
    full, partial = select_updates(errors)
    assert len(full) == len(partial) == 250
    with pytest.raises(ValueError):
        select_updates(errors, 0.8, 0.3)


def test_batched_errors_match_single_models(models):
    data = Fleet(seed=3, n_cells=12, samples=400).cycle_data(1)
    batched = model_errors(FFNN48, models, data["x"], data["y"], stride=1)
    with torch.no_grad():
        single = [(m(torch.from_numpy(x)) - torch.from_numpy(y)).double().pow(2).mean().sqrt().item()
                  for m, x, y in zip(models, data["x"], data["y"], strict=True)]
    np.testing.assert_allclose(batched, single, rtol=1e-4)


@pytest.mark.parametrize("root", ["memory://ds-test", "local"])
def test_datasets_round_trip_and_detect_corruption(root, tmp_path):
    root = str(tmp_path / "ds") if root == "local" else root
    fleet = Fleet(seed=3, n_cells=4, samples=200)
    arrays = fleet.dataset_for(2, 3)
    ref = write_dataset(root, 3, 2, arrays)
    assert ref.uri.endswith("/cycle-0003/cell-00002.npz") and ref.size == len(encode_arrays(arrays))
    loaded = read_dataset(ref)
    assert all(loaded[k].tobytes() == arrays[k].tobytes() for k in arrays)
    bad = ref.model_copy(update={"digest": "0" * 64})
    with pytest.raises(DatasetDigestError, match="cell-00002.npz"):
        read_dataset(bad)
    missing = ref.model_copy(update={"uri": ref.uri.replace("cell-00002", "cell-00009")})
    with pytest.raises(DatasetMissingError, match="cell-00009.npz"):
        read_dataset(missing)
    assert issubclass(DatasetMissingError, DatasetError) and issubclass(DatasetError, ValueError)


def test_batch_write_is_byte_identical_to_single_writes():
    fleet = Fleet(seed=3, n_cells=6, samples=200)
    refs = write_datasets("memory://batch-test", 1, fleet.datasets(1, np.arange(6)))
    single = write_dataset("memory://single-test", 1, 4, fleet.dataset_for(4, 1))
    assert refs[4].digest == single.digest and len({r.digest for r in refs.values()}) == 6


def test_dataset_bytes_are_reproducible():
    first = encode_arrays(Fleet(seed=9, n_cells=3, samples=200).dataset_for(1, 2))
    second = encode_arrays(Fleet(seed=9, n_cells=3, samples=200).dataset_for(1, 2))
    assert first == second
    assert first != encode_arrays(Fleet(seed=9, n_cells=3, samples=200).dataset_for(1, 3))
