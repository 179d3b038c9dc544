"""Garbage collection on a store of 10,000 small sets with a few thousand orphaned blobs (bar: under 60 s).

Run as `python -m bench.gc`. The sets are written with `durable=False` (setup only); the collections
run with the default, durable settings, as in production.
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import torch

from mmstore import ArchSpec, ModelSet, Settings, Store
from mmstore.layout import Layout

from .common import scratch_dir, timed, write_results

SETS = 10_000
MODELS = 4
ORPHANS = 3_000
RUNS = 3
BAR_SECONDS = 60.0
KWARGS = {"in_features": 16, "out_features": 8}


def fill(store: Store, rng: np.random.Generator) -> None:
    """SETS sets of MODELS small Linear models each, every one with its own weights."""
    layout = Layout.of(torch.nn.Linear(**KWARGS).state_dict())
    arch = ArchSpec(factory="torch.nn:Linear", kwargs=KWARGS)
    for _ in range(SETS):
        values = rng.standard_normal((MODELS, layout.row_nbytes // 4), dtype=np.float32)
        store.save(ModelSet(arch, layout, values.view(np.uint8)))


def add_orphans(store: Store, rng: np.random.Generator) -> int:
    """ORPHANS unreferenced blobs of 1 to 4 KiB, as killed saves leave them; their total bytes."""
    return sum(store.blobs.put(rng.integers(0, 256, int(rng.integers(1024, 4096)), dtype=np.uint8)).size
               for _ in range(ORPHANS))


def main() -> None:
    """Build the store, then time `unreferenced()` and `collect_garbage(grace=0)` over fresh orphans."""
    rng = np.random.default_rng(0)
    with scratch_dir("gc-") as root:
        url = str(root / "store")
        setup_seconds, _ = timed(lambda: fill(Store.open(url, Settings(durable=False)), rng))
        gc_times, scan_times, freed = [], [], []
        for _ in range(RUNS):
            orphan_bytes = add_orphans(Store.open(url, Settings(durable=False)), rng)
            # Each run opens the store afresh: no manifest is cached from an earlier run.
            scan_seconds, leaked = timed(lambda: Store.open(url).unreferenced())
            gc_seconds, report = timed(lambda: Store.open(url).collect_garbage(grace=0))
            assert leaked.blobs == report.blobs == ORPHANS and report.blob_bytes == orphan_bytes
            scan_times.append(scan_seconds)
            gc_times.append(gc_seconds)
            freed.append(report.freed)
        assert Store.open(url).unreferenced().freed == 0
        assert len(Store.open(url).list()) == SETS
    results = {
        "sets": SETS, "models_per_set": MODELS, "orphans": ORPHANS, "runs": RUNS, "bar_seconds": BAR_SECONDS,
        "setup_seconds": round(setup_seconds, 1),
        "collect_garbage_seconds": round(statistics.median(gc_times), 2),
        "collect_garbage_runs": [round(t, 2) for t in gc_times],
        "unreferenced_seconds": round(statistics.median(scan_times), 2),
        "unreferenced_runs": [round(t, 2) for t in scan_times],
        "freed_bytes_per_run": freed,
        "within_bar": statistics.median(gc_times) < BAR_SECONDS,
        "measured": time.strftime("%Y-%m-%d"),
    }
    for key, value in results.items():
        print(f"{key:26} {value}")
    write_results("gc", results)


if __name__ == "__main__":
    main()
