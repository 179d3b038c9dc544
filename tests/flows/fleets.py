"""Small seeded fleets shared by the flow tests."""

from __future__ import annotations

from mmstore import ModelSet, Store
from tasks.fleet import initial_models

CELLS, CYCLES, SEED = 40, 2, 7
APPROACHES = ("baseline", "update", "provenance")


def initial_store(path: str, cells: int = CELLS, seed: int = SEED, **storage_options) -> tuple[str, ModelSet]:
    """A store holding a fleet's initial set under lineage "fleet-0", with the metadata fleet_update reads."""
    models = initial_models.fn(cells, seed, "ffnn48")
    meta = {"cycle": 0, "seed": seed, "arch": "ffnn48", "cells": cells}
    return Store.open(path, **storage_options).save(models, lineage="fleet-0", meta=meta), models
