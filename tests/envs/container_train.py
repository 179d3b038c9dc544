"""Run in the replay image: train a small FFNN-48 fleet twice and save it as provenance sets.

`python -m tests.envs.container_train STORE DATASETS OUT` saves a snapshot and two derived sets
(lineage "fleet") into STORE, their datasets under DATASETS, and the newest set's rows as
OUT/expected.npy, so the host can check a recovery against what was trained here.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from mmstore import Settings, Store

from ..provenance_fleet import initial_set, retrain

PLANS = ({1: "full", 4: "partial"}, {2: "full", 4: "full", 5: "partial"})


def main(store_url: str, datasets: str, out: str) -> None:
    """Train and save the fleet, then write the newest rows."""
    store = Store.open(store_url, Settings(trusted_modules=("tests",)))
    models = initial_set(6, seed=3)
    store.save(models, approach="provenance", lineage="fleet")
    for cycle, plan in enumerate(PLANS, start=1):
        models, record = retrain(models, plan, datasets, cycle, seed=3)
        store.save(models, approach="provenance", lineage="fleet", provenance=record)
    np.save(Path(out) / "expected.npy", models.data, allow_pickle=False)


if __name__ == "__main__":
    main(*sys.argv[1:4])
