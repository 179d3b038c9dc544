from dataclasses import replace

import numpy as np

from workloads.simulator import cell_params, simulate, simulate_cycle

CELLS = np.array([0, 1, 2])


def _run(params, current):
    n = len(params.r0)
    return simulate(np.tile(current, (n, 1)), params, np.full(n, 0.9), np.full(n, 25.0))


def test_voltage_falls_under_load_and_recovers_at_rest():
    current = np.r_[np.zeros(10), np.full(300, 4.0), np.zeros(300)]
    v = _run(cell_params(1, CELLS, 0), current)["voltage"]
    assert np.all(v[:, 12] < v[:, 9] - 0.05)  # instant ohmic drop
    assert np.all(v[:, 309] < v[:, 12])  # RC pairs charge up under load
    assert np.all(v[:, -1] > v[:, 311] + 0.005)  # relaxation at rest


def _usable_charge(params, cutoff=3.3):
    out = _run(params, np.full(6000, 3.0))
    below = np.argmax(out["voltage"] < cutoff, axis=1)
    assert np.all(below > 0)
    return out["charge"][np.arange(len(below)), below] - out["charge"][:, 0]


def test_capacity_fade_lowers_usable_charge():
    fresh, aged = cell_params(1, CELLS, 0), cell_params(1, CELLS, 12)
    assert np.all(aged.capacity_ah < fresh.capacity_ah)
    assert np.all(_usable_charge(aged) < _usable_charge(fresh) - 0.05)


def test_resistance_growth_increases_voltage_drop():
    base = cell_params(1, CELLS, 0)
    grown = replace(base, r0=1.5 * base.r0, r1=1.5 * base.r1, r2=1.5 * base.r2)
    current = np.r_[np.zeros(5), np.full(60, 5.0)]
    drop = [v["voltage"][:, 4] - v["voltage"][:, -1] for v in (_run(base, current), _run(grown, current))]
    assert np.all(drop[1] > drop[0] + 0.02)


def test_ageing_raises_resistance():
    assert np.all(cell_params(1, CELLS, 10).r0 > cell_params(1, CELLS, 0).r0)


def test_cell_data_is_independent_of_the_batch_it_is_simulated_in():
    alone = simulate_cycle(4, np.array([7]), 2, samples=300)
    batch = simulate_cycle(4, np.arange(10), 2, samples=300)
    assert alone["x"][0].tobytes() == batch["x"][7].tobytes()
    assert alone["y"][0].tobytes() == batch["y"][7].tobytes()


def test_shapes_and_normalisation():
    data = simulate_cycle(4, np.arange(20), 0, samples=600)
    assert data["x"].shape == (20, 600, 5) and data["x"].dtype == np.float32
    assert data["y"].shape == (20, 600, 1)
    assert np.all(np.abs(data["x"]) < 5) and np.all(np.abs(data["y"]) < 5)
    assert not np.array_equal(data["x"][0], data["x"][1])
