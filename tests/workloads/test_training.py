import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from workloads import FFNN48, CifarConv, Fleet, TrainRecipe, evaluate, seeded_model, synthetic_images, train
from workloads.datasets import encode_arrays
from workloads.training import train_group, train_stacked

SAMPLES = 400
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def fleet():
    return Fleet(seed=11, n_cells=8, samples=SAMPLES)


def _bytes(model):
    return b"".join(p.detach().numpy().tobytes() for p in model.parameters())


def test_training_is_byte_identical_twice_and_in_a_fresh_process(fleet):
    data = fleet.dataset_for(3, 1)
    recipe = TrainRecipe(epochs=2, seed=5)
    first, second = train(seeded_model(FFNN48, 0), data, recipe), train(seeded_model(FFNN48, 0), data, recipe)
    assert _bytes(first) == _bytes(second)
    assert _bytes(first) != _bytes(seeded_model(FFNN48, 0))
    script = textwrap.dedent(f"""
        import sys, torch
        from workloads import FFNN48, Fleet, TrainRecipe, seeded_model, train
        from workloads.datasets import encode_arrays
        torch.manual_seed(999)  # global RNG state must not matter
        data = Fleet(seed=11, n_cells=8, samples={SAMPLES}).dataset_for(3, 1)
        model = train(seeded_model(FFNN48, 0), data, TrainRecipe(epochs=2, seed=5))
        weights = b"".join(p.detach().numpy().tobytes() for p in model.parameters())
        sys.stdout.buffer.write(encode_arrays(data) + weights)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, check=True, cwd=ROOT).stdout
    assert out == encode_arrays(data) + _bytes(first)


def test_training_restores_torch_settings(fleet):
    torch.set_num_threads(2)
    train(seeded_model(FFNN48, 0), fleet.dataset_for(0, 0), TrainRecipe(epochs=1, threads=1))
    assert torch.get_num_threads() == 2
    assert not torch.are_deterministic_algorithms_enabled()


def test_partial_training_changes_only_trainable_layers(fleet):
    start = seeded_model(FFNN48, 0)
    recipe = TrainRecipe(epochs=1, trainable=FFNN48.last_layers)
    trained = dict(train(start, fleet.dataset_for(2, 0), recipe).named_parameters())
    for name, before in start.named_parameters():
        same = before.detach().numpy().tobytes() == trained[name].detach().numpy().tobytes()
        assert same != name.startswith(FFNN48.last_layers), name


def test_unknown_trainable_prefix_is_rejected(fleet):
    with pytest.raises(ValueError, match="no parameter"):
        train(seeded_model(FFNN48, 0), fleet.dataset_for(2, 0), TrainRecipe(trainable=("head.",)))


def test_update_after_ageing_lowers_validation_error():
    fleet = Fleet(seed=7, n_cells=16)
    pooled = fleet.cycle_data(0, np.arange(16))
    recipe = TrainRecipe(epochs=4, batch_size=256)
    flat = {"x": pooled["x"].reshape(-1, 5), "y": pooled["y"].reshape(-1, 1)}
    reference = train(seeded_model(FFNN48, 0), flat, recipe)
    model = train(reference, fleet.dataset_for(5, 0), TrainRecipe())
    aged_validation = fleet.dataset_for(5, 10, variant=1)
    before = evaluate(model, aged_validation)
    assert before > 1.5 * evaluate(model, fleet.dataset_for(5, 0, variant=1))  # the cell drifted
    updated = train(model, fleet.dataset_for(5, 10), TrainRecipe())
    assert evaluate(updated, aged_validation) < 0.7 * before


def test_stacked_training_is_deterministic_and_moves_parameters(fleet):
    data = fleet.cycle_data(0, np.arange(4))
    start = seeded_model(FFNN48, 0).named_parameters()
    stacked = {k: v.detach().expand(4, *v.shape).clone() for k, v in start}
    recipe = TrainRecipe(epochs=1, batch_size=100)
    a, b = (train_stacked(FFNN48, stacked, data["x"], data["y"], recipe) for _ in range(2))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["net.0.weight"][0], a["net.0.weight"][1])


def test_conv_net_learns_synthetic_images():
    model = train(seeded_model(CifarConv, 0), synthetic_images(512, 1), TrainRecipe(epochs=3, batch_size=32))
    assert evaluate(model, synthetic_images(256, 2)) < 0.7  # chance is 0.9


def _group(fleet, cells, recipe, samples=SAMPLES):
    from workloads.batched import stack_params

    with torch.device("meta"):
        template = FFNN48()
    stacked = stack_params([seeded_model(FFNN48, c) for c in cells])
    datasets = [encode_arrays({k: v[:samples] for k, v in fleet.dataset_for(c, 1).items()}) for c in cells]
    return train_group(template, stacked, datasets, recipe.model_dump(mode="json")), stacked


def test_group_training_trains_each_model_on_its_own(fleet):
    """A model's result does not depend on its group's other members; frozen layers keep their bits."""
    recipe = TrainRecipe(epochs=1, seed=5, trainable=FFNN48.last_layers)
    (a, start), (b, _) = _group(fleet, [0, 1, 2], recipe), _group(fleet, [0, 4, 5, 6], recipe)
    for name in a:
        assert torch.equal(a[name][0], b[name][0])
        changed = not torch.equal(a[name], start[name])
        assert changed == name.startswith(FFNN48.last_layers)


def test_group_training_needs_datasets_of_one_shape(fleet):
    from workloads.batched import stack_params

    with torch.device("meta"):
        template = FFNN48()
    datasets = [encode_arrays({k: v[:n] for k, v in fleet.dataset_for(c, 1).items()}) for c, n in ((0, 40), (1, 50))]
    with pytest.raises(ValueError, match="datasets of one shape"):
        train_group(template, stack_params([seeded_model(FFNN48, c) for c in (0, 1)]), datasets,
                    TrainRecipe(epochs=1).model_dump(mode="json"))
