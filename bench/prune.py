"""`prune --keep-last 3` on a 50-set update lineage of 5,000 FFNN-48 models: what it frees, what the kept sets need.

Run as `python -m bench.prune [--models N] [--versions K]`. Each version changes 5% of the models
fully and another 5% in their output layer (the byte pattern of a U3 cycle, without the training).
The lineage is written with `durable=False` (setup only); prune runs with the default, durable
settings. "Needed" is what the three kept sets cost in a store holding only them (a snapshot and two
deltas), saved the same way.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from mmstore import ModelSet, Settings, Store
from mmstore.retention import RetentionPolicy
from workloads.models import FFNN48

from .common import dir_bytes, random_fleet, scratch_dir, timed, write_results

KEEP = 3


def next_version(current: ModelSet, rng: np.random.Generator) -> ModelSet:
    """5% of the models with all new weights, another 5% with a new output layer."""
    n, data = len(current), current.data.copy()
    picked = rng.choice(n, size=2 * max(1, n // 20), replace=False)
    full, partial = picked[: len(picked) // 2], picked[len(picked) // 2 :]
    data[full] = (rng.standard_normal((len(full), data.shape[1] // 4), dtype=np.float32) * 0.1).view(np.uint8)
    for spec in (t for t in current.layout.tensors if t.name.startswith(FFNN48.last_layers)):
        values = rng.standard_normal((len(partial), spec.nbytes // 4), dtype=np.float32) * 0.1
        data[partial, spec.offset : spec.offset + spec.nbytes] = values.view(np.uint8)
    return ModelSet(current.arch, current.layout, data)


def main() -> None:
    """Build the lineage, prune it to its newest three sets, check them and measure the store before and after."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", type=int, default=5000)
    parser.add_argument("--versions", type=int, default=50)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    sets = [random_fleet(args.models, FFNN48, seed=0)]
    for _ in range(args.versions - 1):
        sets.append(next_version(sets[-1], rng))
    with scratch_dir("prune-") as root:
        url, alone = str(root / "store"), str(root / "kept-only")
        setup = Store.open(url, Settings(durable=False))
        start = time.perf_counter()
        ids = [setup.save(s, approach="update", lineage="fleet") for s in sets]
        setup_seconds = time.perf_counter() - start
        for s in sets[-KEEP:]:
            Store.open(alone, Settings(durable=False)).save(s, approach="update", lineage="fleet")
        before, needed = dir_bytes(root / "store"), dir_bytes(root / "kept-only")
        prune_seconds, report = timed(lambda: Store.open(url).prune("fleet", RetentionPolicy(keep_last=KEEP), grace=0))
        after = dir_bytes(root / "store")
        store = Store.open(url)
        assert len(store.list()) == KEEP and store.unreferenced().freed == 0
        recover_seconds, _ = timed(lambda: [store.recover(i) for i in ids[-KEEP:]])
        for set_id, expected in zip(ids[-KEEP:], sets[-KEEP:]):
            assert store.recover(set_id).equals(expected), set_id
        store.verify()
        live = sum(store.sizes().values())
    results = {
        "models": args.models, "versions": args.versions, "keep_last": KEEP,
        "setup_seconds": round(setup_seconds, 1), "prune_seconds": round(prune_seconds, 2),
        "recover_kept_seconds": round(recover_seconds, 2),
        "removed": len(report.removed), "rebased": len(report.rebased), "freed_bytes": report.freed,
        "bytes_before": before, "bytes_after": after, "bytes_kept_sets_alone": needed, "bytes_live_sets_after": live,
        "overhead_after": after - live, "kept_recover_bit_exact": True,
        "measured": time.strftime("%Y-%m-%d"),
    }
    for key, value in results.items():
        print(f"{key:24} {value}")
    write_results("prune", results)


if __name__ == "__main__":
    main()
