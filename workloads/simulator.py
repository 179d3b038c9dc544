"""Second-order RC equivalent-circuit model of an 18650 cell with a lumped thermal model.

Every random quantity comes from a numpy Generator seeded by (fleet seed, cell id, cycle), so a
cell's data for a cycle is the same whether it is simulated alone or with 5,000 others. The time
loop runs over samples with arrays over cells, and uses only arithmetic and `np.interp` (no
transcendental functions), so results are bit-identical for any batch of cells.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "DT",
    "SAMPLES",
    "DRIVE_KINDS",
    "FEATURES",
    "CellParams",
    "cell_params",
    "cycle_inputs",
    "drive_current",
    "ocv",
    "simulate",
    "measure",
    "simulate_cycle",
    "normalise_voltage",
    "denormalise_voltage",
]

DT = 1.0
SAMPLES = 1200
FEATURES = ("current", "current_fast", "current_slow", "temperature", "charge")
DRIVE_KINDS = ("urban", "highway", "mixed")
_URBAN_SHARE = np.array([0.85, 0.15, 0.5])
_KNOT_SPACING = 10
_REST_KNOTS = 8
_OCV_SOC = np.array([0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0])
_OCV_VOLT = np.array([3.00, 3.30, 3.45, 3.55, 3.62, 3.68, 3.75, 3.85, 3.95, 4.05, 4.12, 4.20])
# Fixed constants rather than fitted statistics, so a model's input scale never moves between cycles.
_FEATURE_OFFSET = np.array([0.0, 0.0, 0.0, 25.0, 0.0])
_FEATURE_SCALE = np.array([5.0, 5.0, 5.0, 10.0, 3.0])
_VOLT_OFFSET, _VOLT_SCALE = 3.7, 0.4
_FILTER_TAUS = (10.0, 100.0)
_NOISE = np.array([0.02, 0.1, 0.002])  # current [A], temperature [K], voltage [V]
_CELL_STREAM, _CYCLE_STREAM = 0, 1


@dataclass(frozen=True)
class CellParams:
    """Equivalent-circuit parameters of a batch of cells, one array entry per cell."""

    capacity_ah: np.ndarray
    soh: np.ndarray
    r0: np.ndarray
    r1: np.ndarray
    tau1: np.ndarray
    r2: np.ndarray
    tau2: np.ndarray
    heat_capacity: np.ndarray
    cooling: np.ndarray
    r0_temp_coeff: np.ndarray
    ambient: np.ndarray


def _rng(fleet_seed: int, cell: int, cycle: int, stream: int) -> np.random.Generator:
    seq = np.random.SeedSequence([fleet_seed, cell, cycle], spawn_key=(stream,))
    return np.random.default_rng(seq)


def _span(u: np.ndarray, low: float, high: float) -> np.ndarray:
    return low + (high - low) * u


def cell_params(fleet_seed: int, cells: np.ndarray, cycle: int) -> CellParams:
    """Parameters of `cells` at update cycle `cycle`: manufacturing spread plus linear ageing."""
    u = np.stack([_rng(fleet_seed, int(c), 0, _CELL_STREAM).random(11) for c in cells])
    soh = np.clip(_span(u[:, 0], 0.97, 1.0) - _span(u[:, 1], 0.002, 0.015) * cycle, 0.6, 1.0)
    growth = 1.0 + _span(u[:, 2], 1.5, 3.0) * (1.0 - soh)
    return CellParams(
        capacity_ah=_span(u[:, 3], 2.9, 3.1) * soh,
        soh=soh,
        r0=_span(u[:, 4], 0.027, 0.033) * growth,
        r1=_span(u[:, 5], 0.012, 0.018) * growth,
        tau1=_span(u[:, 6], 8.0, 14.0),
        r2=_span(u[:, 7], 0.016, 0.024) * growth,
        tau2=_span(u[:, 8], 150.0, 250.0),
        heat_capacity=np.full(len(cells), 45.0),
        cooling=_span(u[:, 9], 0.12, 0.18),
        r0_temp_coeff=np.full(len(cells), 0.01),
        ambient=_span(u[:, 10], 20.0, 30.0),
    )


def cycle_inputs(
    fleet_seed: int, cells: np.ndarray, cycle: int, samples: int, variant: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Per-cell random draws of one cycle: (uniforms (n, 3 + 3K), normals (n, 4, samples))."""
    knots = samples // _KNOT_SPACING + 1
    uniforms, normals = [], []
    for c in cells:
        rng = _rng(fleet_seed, int(c), cycle, _CYCLE_STREAM + variant)
        uniforms.append(rng.random(3 + 3 * knots))
        normals.append(rng.standard_normal((4, samples)))
    return np.stack(uniforms), np.stack(normals)


def drive_current(kind: np.ndarray, knot_u: np.ndarray, jitter: np.ndarray) -> np.ndarray:
    """Cell current [A, discharge positive] of synthetic urban/highway/mixed drives, shape (n, T)."""
    n, knots, _ = knot_u.shape
    u0, u1 = knot_u[..., 0], knot_u[..., 1]
    urban = np.where(u0 < 0.35, 0.0, np.where(u0 < 0.5, -2.0 * u1, _span(u1, 0.5, 4.0)))
    highway = np.where(u0 < 0.05, _span(u1, -1.5, 1.0), _span(u1, 3.0, 6.0))
    # Every drive mixes stretches of both regimes, in a proportion set by its kind.
    is_urban = knot_u[..., 2] < _URBAN_SHARE[kind][:, None]
    level = np.where(is_urban, urban, highway)
    level[:, 0] = 0.0
    level[:, -_REST_KNOTS:] = 0.0  # a rest at the end shows the relaxation of the RC pairs
    t = np.arange(jitter.shape[1])
    idx, frac = t // _KNOT_SPACING, (t % _KNOT_SPACING) / _KNOT_SPACING
    current = level[:, idx] * (1.0 - frac) + level[:, idx + 1] * frac
    return current + 0.1 * jitter * (current != 0.0)


def ocv(soc: np.ndarray) -> np.ndarray:
    """Open-circuit voltage [V] of an NMC 18650 cell at state of charge `soc` (0..1)."""
    return np.interp(soc, _OCV_SOC, _OCV_VOLT)


def simulate(current: np.ndarray, p: CellParams, soc0: np.ndarray, ambient: np.ndarray) -> dict:
    """True terminal voltage, temperature, SoC and removed charge [Ah] for currents (n, T)."""
    # Time-major buffers make each step's row contiguous, which is several times faster.
    cur = np.ascontiguousarray(current.T)
    out = {k: np.empty_like(cur) for k in ("voltage", "temperature", "soc", "charge")}
    # Backward-Euler RC update: stable, and free of exp() whose SIMD paths may round differently.
    a1, b1 = p.tau1 / (p.tau1 + DT), DT * p.r1 / (p.tau1 + DT)
    a2, b2 = p.tau2 / (p.tau2 + DT), DT * p.r2 / (p.tau2 + DT)
    v1, v2, temp = np.zeros(len(soc0)), np.zeros(len(soc0)), ambient.astype(float)
    removed = (1.0 - soc0) * p.capacity_ah
    for k, i in enumerate(cur):
        soc = 1.0 - removed / p.capacity_ah
        r0t = p.r0 * (1.0 + p.r0_temp_coeff * (25.0 - temp))
        out["voltage"][k] = ocv(soc) - i * r0t - v1 - v2
        out["temperature"][k], out["soc"][k], out["charge"][k] = temp, soc, removed
        heat = i * i * r0t + v1 * v1 / p.r1 + v2 * v2 / p.r2
        temp = temp + DT * (heat - p.cooling * (temp - ambient)) / p.heat_capacity
        v1, v2 = a1 * v1 + b1 * i, a2 * v2 + b2 * i
        removed = removed + i * (DT / 3600.0)
    return {k: np.ascontiguousarray(v.T) for k, v in out.items()}


def measure(true: dict, current: np.ndarray, noise: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Noisy sensor readings turned into normalised features x (n, T, 5) and target y (n, T, 1)."""
    i_m = current + _NOISE[0] * noise[:, 0]
    t_m = true["temperature"] + _NOISE[1] * noise[:, 1]
    v_m = true["voltage"] + _NOISE[2] * noise[:, 2]
    fast, slow, charge = _history(np.ascontiguousarray(i_m.T), true["charge"][:, 0])
    x = np.empty(i_m.shape + (len(FEATURES),), dtype=np.float32)
    for j, column in enumerate((i_m, fast, slow, t_m, charge)):
        x[..., j] = (column - _FEATURE_OFFSET[j]) / _FEATURE_SCALE[j]
    return x, normalise_voltage(v_m)[..., None].astype(np.float32)


def _history(i_m: np.ndarray, charge0: np.ndarray) -> list[np.ndarray]:
    """Fast and slow low-passed current and coulomb-counted charge from time-major current (T, n)."""
    out = [np.empty_like(i_m) for _ in range(3)]
    fast, slow, counted = np.zeros_like(charge0), np.zeros_like(charge0), charge0.copy()
    (ka, kb) = (DT / (tau + DT) for tau in _FILTER_TAUS)
    for k, i in enumerate(i_m):
        fast, slow = fast + (i - fast) * ka, slow + (i - slow) * kb
        out[0][k], out[1][k], out[2][k] = fast, slow, counted
        counted = counted + i * (DT / 3600.0)
    return [a.T for a in out]


def normalise_voltage(volts: np.ndarray) -> np.ndarray:
    """Voltage [V] on the models' output scale."""
    return (volts - _VOLT_OFFSET) / _VOLT_SCALE


def denormalise_voltage(y: np.ndarray) -> np.ndarray:
    """Model output back to volts."""
    return y * _VOLT_SCALE + _VOLT_OFFSET


def simulate_cycle(
    fleet_seed: int, cells: np.ndarray, cycle: int, samples: int = SAMPLES, variant: int = 0
) -> dict[str, np.ndarray]:
    """One drive cycle of `cells`: true signals (n, T), features `x` and target `y` (float32)."""
    cells = np.asarray(cells, dtype=np.int64)
    params = cell_params(fleet_seed, cells, cycle)
    uniforms, normals = cycle_inputs(fleet_seed, cells, cycle, samples, variant)
    kind = np.minimum((uniforms[:, 0] * len(DRIVE_KINDS)).astype(np.int64), len(DRIVE_KINDS) - 1)
    soc0, ambient = _span(uniforms[:, 1], 0.9, 1.0), params.ambient + _span(uniforms[:, 2], -3.0, 3.0)
    current = drive_current(kind, uniforms[:, 3:].reshape(len(cells), -1, 3), normals[:, 3])
    true = simulate(current, params, soc0, ambient)
    x, y = measure(true, current, normals)
    return {"current": current, **true, "kind": kind, "soh": params.soh, "x": x, "y": y}
