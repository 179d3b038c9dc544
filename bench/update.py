"""Update approach on the paper's U3 sequence: 5,000 FFNN-48 models, 5% full + 5% last-layer retrains.

Run: `python -m bench.update [--models N] [--cycles K]`. Every save goes through a freshly opened
store (as a new flow run would: nothing of the base in memory).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from mmstore import ArchSpec, ModelSet, Settings, Store
from mmstore.codecs import CODECS, encode
from mmstore.layout import Layout
from workloads.fleet import Fleet, initial_fleet_params
from workloads.models import FFNN48
from workloads.training import TrainRecipe, train_stacked

from .common import median_time, print_saves_from_modules, saves_from_modules, scratch_dir, write_results

RECIPE = TrainRecipe(epochs=1, batch_size=60, learning_rate=1e-3)


def retrain(fleet: Fleet, current: ModelSet, cycle: int, rng: np.random.Generator) -> tuple[ModelSet, np.ndarray]:
    """One U3 cycle: 5% of models retrained fully, another 5% in the output layer, on new cell data."""
    n = len(current)
    picked = rng.choice(n, size=2 * (n // 20), replace=False)
    stacked = {k: v.clone() for k, v in current.tensors().items()}
    data = fleet.cycle_data(cycle, picked)
    x, y = data["x"][:, ::4], data["y"][:, ::4]
    for group, trainable in ((picked[: n // 20], None), (picked[n // 20 :], FFNN48.last_layers)):
        index = np.searchsorted(np.sort(picked), group)
        order = np.argsort(picked)
        sub = {k: v[group] for k, v in stacked.items()}
        trained = train_stacked(FFNN48, sub, x[order][index], y[order][index], RECIPE.model_copy(update={"trainable": trainable}))
        for k in stacked:
            stacked[k][group] = trained[k]
    return ModelSet.from_stacked(stacked, current.arch, current.layout), picked


def codec_sizes(base: ModelSet, new: ModelSet) -> dict[str, int]:
    """Bytes of one cycle's changed tensors under each codec (XOR against the base's values)."""
    from mmstore.diff import diff, tensor_digests

    delta = diff(new.data, tensor_digests(new.data, new.layout), tensor_digests(base.data, base.layout), new.layout)
    sizes = {}
    for codec in CODECS.names():
        start = time.perf_counter()
        total = 0
        for t, spec in enumerate(new.layout.tensors):
            reference = base.data[delta.mask[:, t], spec.offset : spec.offset + spec.nbytes].reshape(-1)
            total += len(encode(delta.values[t].reshape(-1), spec.itemsize, codec, reference))
        sizes[codec] = {"bytes": total, "encode_s": time.perf_counter() - start}
    return sizes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", type=int, default=5000)
    parser.add_argument("--cycles", type=int, default=10)
    args = parser.parse_args()
    fleet = Fleet(seed=1, n_cells=args.models)
    layout = Layout.of(FFNN48().state_dict())
    sets = [ModelSet.from_stacked(initial_fleet_params(args.models, 1), ArchSpec.of(FFNN48), layout)]
    rng = np.random.default_rng(1)
    for cycle in range(1, args.cycles + 1):
        sets.append(retrain(fleet, sets[-1], cycle, rng)[0])
    settings = Settings()
    rows = []
    with scratch_dir("mmstore-bench-update-") as root:
        url, snap_url = str(root / "update"), str(root / "snapshots")
        ids = []
        for cycle, model_set in enumerate(sets):
            start = time.perf_counter()
            ids.append(Store.open(url, settings).save(model_set, approach="update", lineage="fleet"))
            save_update = time.perf_counter() - start
            start = time.perf_counter()
            Store.open(snap_url, settings).save(model_set, approach="baseline", lineage="fleet")
            save_snapshot = time.perf_counter() - start
            size = Store.open(url, settings).size(ids[-1])
            rows.append({"cycle": cycle, "bytes": size, "save_update_s": save_update, "save_snapshot_s": save_snapshot})
            print(f"  cycle {cycle:2d}: {size:>11,} B  save update {save_update:.3f} s  snapshot {save_snapshot:.3f} s")
        first, last = ids[0], ids[-1]
        recover_snapshot = median_time(lambda: Store.open(url, settings).recover(first))
        recover_chain = median_time(lambda: Store.open(url, settings).recover(last))
        assert Store.open(url, settings).recover(last).equals(sets[-1])
        # The last cycle again, as a training job holds it: modules, saved as an update of the cycle before.
        from_modules = saves_from_modules(sets[-1].to_modules(), root, approach="update", base=sets[-2])
    cycles = rows[1:]
    result = {
        "models": args.models, "cycles": args.cycles, "per_cycle": rows,
        "codecs_cycle1": codec_sizes(sets[0], sets[1]),
        "max_cycle_bytes": max(r["bytes"] for r in cycles),
        "save_ratio_max": max(r["save_update_s"] / r["save_snapshot_s"] for r in cycles),
        "save_ratio_median": float(np.median([r["save_update_s"] / r["save_snapshot_s"] for r in cycles])),
        "recover_snapshot_s": recover_snapshot, "recover_after_chain_s": recover_chain,
        "recover_ratio": recover_chain / recover_snapshot,
        "save_from_modules": from_modules,
    }
    path = write_results("update", result)
    print(f"storage per cycle <= {result['max_cycle_bytes']:,} B; save update/snapshot median "
          f"{result['save_ratio_median']:.2f}x (max {result['save_ratio_max']:.2f}x)")
    print(f"recover snapshot {recover_snapshot:.3f} s, after {args.cycles} cycles {recover_chain:.3f} s "
          f"({result['recover_ratio']:.2f}x)")
    print_saves_from_modules(from_modules)
    for codec, figures in result["codecs_cycle1"].items():
        print(f"  codec {codec:15s} {figures['bytes']:>11,} B  encode {figures['encode_s']:.3f} s")
    print(f"results in {path}")


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
