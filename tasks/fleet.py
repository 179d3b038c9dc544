"""Tasks over the battery-cell fleet: initial models, new cycle data, drift, datasets."""

from __future__ import annotations

import numpy as np
from prefect import task

from mmstore import ArchSpec, ModelSet
from mmstore.layout import Layout
from workloads.datasets import DatasetRef, write_datasets
from workloads.drift import model_errors, select_updates
from workloads.fleet import Fleet, initial_fleet_params
from workloads.models import ARCHITECTURES

__all__ = ["initial_models", "cycle_data", "detect_drift", "write_cycle_datasets"]


@task(name="initial-models")
def initial_models(cells: int, seed: int, arch: str = "ffnn48") -> ModelSet:
    """Use case U1: every cell's initial model, trained on its first cycle."""
    cls = ARCHITECTURES[arch]
    layout = Layout.of(cls().state_dict())
    return ModelSet.from_stacked(initial_fleet_params(cells, seed, cls), ArchSpec.of(cls), layout)


@task(name="cycle-data")
def cycle_data(seed: int, cells: int, cycle: int, arch: str = "ffnn48") -> dict[str, np.ndarray]:
    """Every cell's newest drive cycle, simulated for the whole fleet at once."""
    return Fleet(seed, cells, ARCHITECTURES[arch]).cycle_data(cycle)


@task(name="detect-drift")
def detect_drift(model_set: ModelSet, data: dict, full: float, partial: float, arch: str = "ffnn48") -> tuple[list[int], list[int]]:
    """The worst models (full retrain) and the next worst (last layer only)."""
    errors = model_errors(ARCHITECTURES[arch], model_set.tensors(), data["x"], data["y"])
    full_idx, partial_idx = select_updates(errors, full, partial)
    return sorted(int(i) for i in full_idx), sorted(int(i) for i in partial_idx)


@task(name="write-datasets", retries=2, retry_delay_seconds=1)
def write_cycle_datasets(root: str, cycle: int, cells: list[int], data: dict) -> dict[int, DatasetRef]:
    """Each retrained cell's newest cycle as a digest-checked file outside the store (one batched write)."""
    arrays = {cell: {"x": data["x"][cell], "y": data["y"][cell]} for cell in cells}
    return write_datasets(root, cycle, arrays)
