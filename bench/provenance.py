"""Provenance approach: 5,000 FFNN-48 models, one U3 cycle (5% retrained fully, 5% in the last layer).

Run: `python -m bench.provenance [--models N]`. Datasets are written beside the store and reported
separately; the derived set's storage is `Store.size` (manifest and its own blobs).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from envs.executors import LocalExecutor, shutdown
from envs.fingerprint import capture
from mmstore import ArchSpec, ModelSet, ProvenanceRecord, Settings, Store
from mmstore.layout import Layout
from mmstore.replay import ReplayJob, ReplayTask
from workloads.datasets import encode_arrays, write_datasets
from workloads.fleet import Fleet, initial_fleet_params
from workloads.models import FFNN48
from workloads.training import TrainRecipe

from .common import dir_bytes, median_time, scratch_dir, write_results

TRAINER = "workloads.training:train_from_bytes"
RECIPES = {
    "full": TrainRecipe(seed=1).model_dump(mode="json"),
    "partial": TrainRecipe(seed=1, trainable=FFNN48.last_layers).model_dump(mode="json"),
}


def initial_set(n: int, seed: int) -> ModelSet:
    """The fleet's U1 models, written straight from stacked parameters into one set (no modules built)."""
    stacked = initial_fleet_params(n, seed)
    layout = Layout.of(FFNN48().state_dict())
    model_set = ModelSet(ArchSpec.of(FFNN48), layout, np.zeros((n, layout.row_nbytes), dtype=np.uint8))
    for name, view in model_set.tensors().items():
        view.copy_(stacked[name])
    return model_set


def u3_cycle(fleet: Fleet, base: ModelSet, root: str, seed: int) -> tuple[ModelSet, ProvenanceRecord]:
    """5% of the cells retrained fully, 5% in the last layer, on their cycle-1 data written under `root`."""
    cells = np.random.default_rng(seed).choice(len(base), size=len(base) // 10, replace=False)
    plan = {int(c): ("full" if k % 2 == 0 else "partial") for k, c in enumerate(sorted(cells))}
    arrays = fleet.datasets(1, np.array(sorted(plan)))
    refs = write_datasets(root, 1, arrays)
    jobs = [ReplayJob(c, base.data[c], encode_arrays(arrays[c]), RECIPES[plan[c]]) for c in sorted(plan)]
    task = ReplayTask(base.arch, base.layout, TRAINER, Settings().allowed_prefixes())
    # The workload trains through the same entry point a replay uses, on both cores.
    data = base.data.copy()
    data[sorted(plan)] = LocalExecutor(workers=2).replay(task, jobs)
    record = ProvenanceRecord(
        trainer=TRAINER, recipes=RECIPES, changes={c: (plan[c], refs[c]) for c in plan}, environment=capture().to_json()
    )
    return ModelSet(base.arch, base.layout, data), record


def timed_recovery(url: str, set_id: str, workers: int) -> tuple[float, ModelSet]:
    """One cold recovery (fresh store, fresh worker processes) with `workers` replay workers."""
    shutdown()
    start = time.perf_counter()
    recovered = Store.open(url).recover(set_id, executor=LocalExecutor(workers=workers))
    return time.perf_counter() - start, recovered


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    fleet = Fleet(args.seed, args.models)
    base = initial_set(args.models, args.seed)
    with scratch_dir("mmstore-bench-provenance-") as root:
        # The store's own dataset location, "<store>-datasets": what a recovery may read by default.
        derived, record = u3_cycle(fleet, base, str(root / "store-datasets"), args.seed)
        url = str(root / "store")
        store = Store.open(url)
        base_id = store.save(base, approach="provenance", lineage="fleet")
        ids = []
        save_s = median_time(lambda: ids.append(Store.open(url).save(derived, approach="provenance", base=base_id, provenance=record)), repeats=3)
        set_id = ids[-1]
        one_s, one = timed_recovery(url, set_id, 1)
        two_s, two = timed_recovery(url, set_id, 2)
        result = {
            "models": args.models, "retrained_full": sum(v == "full" for v, _ in record.changes.values()),
            "retrained_partial": sum(v == "partial" for v, _ in record.changes.values()),
            "derived_set_bytes": Store.open(url).size(set_id), "base_set_bytes": Store.open(url).size(base_id),
            "datasets_bytes": dir_bytes(root / "store-datasets"), "save_s": save_s,
            "recover_1_worker_s": one_s, "recover_2_workers_s": two_s, "speedup_2_vs_1": one_s / two_s,
            "bit_exact_1_worker": one.equals(derived), "bit_exact_2_workers": two.equals(derived),
        }
    shutdown()
    path = write_results("provenance", result)
    print(f"{args.models} FFNN-48 models, U3: {result['retrained_full']} full + {result['retrained_partial']} partial retrains (results in {path})")
    print(f"  derived set {result['derived_set_bytes']:,} bytes (datasets outside the store: {result['datasets_bytes']:,} bytes)")
    print(f"  save {save_s:.3f} s (median of 3)")
    print(f"  recover: 1 worker {one_s:.1f} s, 2 workers {two_s:.1f} s, speedup {result['speedup_2_vs_1']:.2f}x")
    print(f"  bit-exact: 1 worker {result['bit_exact_1_worker']}, 2 workers {result['bit_exact_2_workers']}")


if __name__ == "__main__":
    main()
