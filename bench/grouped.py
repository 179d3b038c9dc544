"""Grouped training against one model per call: one U3 cycle of 5,000 FFNN-48 (500 retrains, default recipe).

Run: `python -m bench.grouped [--models N] [--repeats K] [--group-size G]`. In one run, taking turns,
median of K:
- the fleet-update flow's training of the cycle (its mapped training tasks, 8 of them, each with
  two worker processes): one model per call (`group_size=0`, the per-model path) and in groups;
- a cold recovery of the cycle saved with provenance (fresh store, no worker processes running):
  per-model replay and grouped replay, both with two workers; every recovery checked bit for bit.
Before that, the same models are trained in groups of 1, 7, 50 and 500 to see whether the group
size changes their bits (`--no-sizes` skips it).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from envs.executors import LocalExecutor, shutdown
from envs.fingerprint import capture
from flows.params import FleetUpdateParameters
from mmstore import ModelSet, ProvenanceRecord, Settings, Store
from mmstore.groups import plan_groups
from mmstore.replay import ReplayJob, ReplayTask, grouped, run_jobs
from workloads.datasets import encode_arrays, write_datasets
from workloads.fleet import Fleet

from .common import scratch_dir, write_results
from .eval_sequence import GROUP_TRAINER, TRAINER
from .provenance import RECIPES, initial_set


def flow_training(work: dict[str, Any], sizes: tuple[int, ...], repeats: int) -> tuple[dict, dict]:
    """Seconds of the fleet-update flow's training stage per group size (taking turns), and what each trained.

    Prefect is imported here only: replay worker processes import the main module, and should not pay for it.
    """
    from prefect import flow

    from flows import local_run_settings
    from flows.fleet_update import train_in_tasks, training_task

    @flow(name="bench-grouped-training")
    def training(group_size: int) -> tuple:
        # The work is not a parameter: Prefect would serialise 5,000 models.
        spec, ordered, plan = training_task(work["base"], work["jobs"], work["recipe_of"], group_size)
        rows = np.concatenate(train_in_tasks(spec, ordered, FleetUpdateParameters(group_size=group_size)))
        return [job.model for job in ordered], rows, plan

    trained: dict[int, tuple] = {}
    with local_run_settings():
        training(sizes[-1])  # starts Prefect's server and the fork server once, untimed
        times = _turns({str(size): lambda size=size: trained.__setitem__(size, training(size)) for size in sizes}, repeats)
    return times, trained


def size_study(base: ModelSet, plan: dict[int, str], arrays: dict, sizes: tuple[int, ...]) -> dict[str, Any]:
    """Per recipe, the share of models whose bits equal the largest group's, per group size (one process, one thread)."""
    spec = ReplayTask(base.arch, base.layout, GROUP_TRAINER, Settings().allowed_prefixes())
    study: dict[str, Any] = {}
    for recipe in sorted(set(plan.values())):
        cells = sorted(c for c, r in plan.items() if r == recipe)
        # Groups of one are timed on the first 50 models only: they run at per-model speed.
        rows, seconds = {}, {}
        for size in sizes:
            chosen = cells[:50] if size == 1 else cells
            jobs = [ReplayJob(c, base.data[c], encode_arrays(arrays[c]), RECIPES[recipe]) for c in chosen]
            task, ordered = grouped(spec, jobs, plan_groups({c: recipe for c in chosen}, size))
            start = time.perf_counter()
            rows[size] = run_jobs(task, ordered)
            seconds[size] = (time.perf_counter() - start) / len(chosen)
        largest = rows[max(sizes)]
        study[recipe] = {str(size): {"same_bits_as_largest": float(np.mean(np.all(rows[size] == largest[: len(rows[size])], axis=1))),
                                     "ms_per_model": 1e3 * seconds[size]} for size in sizes}
        study[recipe]["models"] = len(cells)
    return study


def _turns(runs: dict[str, Callable[[], Any]], repeats: int) -> dict[str, list[float]]:
    """Seconds of each run, `repeats` times, taking turns; no worker processes before each."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            shutdown()
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return times


def _save(root: Path, name: str, work: dict[str, Any], models: list[int], rows: np.ndarray,
          record: dict) -> tuple[str, str, ModelSet]:
    """A store at root/name holding the base and the cycle trained as `rows`; its URL, the cycle's id, the cycle."""
    url, base = str(root / name), work["base"]
    refs = write_datasets(url + "-datasets", 1, work["arrays"])
    data = base.data.copy()
    data[models] = rows
    derived = ModelSet(base.arch, base.layout, data)
    store = Store.open(url)
    store.save(base, approach="provenance", lineage="fleet")
    changes = {c: (work["recipe_of"][c], refs[c]) for c in models}
    set_id = store.save(derived, approach="provenance", lineage="fleet",
                        provenance=ProvenanceRecord(changes=changes, environment=capture().to_json(), **record))
    return url, set_id, derived


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--group-size", type=int, default=FleetUpdateParameters().group_size)
    parser.add_argument("--no-sizes", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    base = initial_set(args.models, args.seed)
    cells = sorted(np.random.default_rng(args.seed).choice(args.models, size=args.models // 10, replace=False).tolist())
    recipe_of = {c: ("full" if k % 2 == 0 else "partial") for k, c in enumerate(cells)}
    arrays = Fleet(args.seed, args.models).datasets(1, np.array(cells))
    jobs = [ReplayJob(c, base.data[c], encode_arrays(arrays[c]), RECIPES[recipe_of[c]]) for c in cells]
    work = {"base": base, "jobs": jobs, "recipe_of": recipe_of, "arrays": arrays}
    result: dict[str, Any] = {"models": args.models, "retrains": len(cells), "group_size": args.group_size,
                              "repeats": args.repeats}
    if not args.no_sizes:
        result["group_size_study"] = size_study(base, recipe_of, arrays, (1, 7, 50, 500))
    flow_s, trained = flow_training(work, (0, args.group_size), args.repeats)
    with scratch_dir("mmstore-bench-grouped-") as root:
        per_model = _save(root, "per-model", work, *trained[0][:2], {"trainer": TRAINER, "recipes": RECIPES})
        in_groups = _save(root, "grouped", work, *trained[args.group_size][:2],
                          {"trainer": GROUP_TRAINER, "recipes": RECIPES, "groups": trained[args.group_size][2]})
        exact: list[bool] = []

        def recover(url: str, set_id: str, expected: ModelSet) -> Callable[[], None]:
            return lambda: exact.append(Store.open(url).recover(set_id, executor=LocalExecutor(workers=2)).equals(expected))

        recover_s = _turns({"per_model": recover(*per_model), "grouped": recover(*in_groups)}, args.repeats)
    shutdown()
    result.update({
        "flow_training_per_model_s": statistics.median(flow_s["0"]),
        "flow_training_grouped_s": statistics.median(flow_s[str(args.group_size)]),
        "recover_per_model_2_workers_s": statistics.median(recover_s["per_model"]),
        "recover_grouped_2_workers_s": statistics.median(recover_s["grouped"]),
        "runs": {"flow_training": flow_s, "recover": recover_s}, "bit_exact_share": float(np.mean(exact)),
    })
    result["flow_training_speedup"] = result["flow_training_per_model_s"] / result["flow_training_grouped_s"]
    result["recover_ratio"] = result["recover_grouped_2_workers_s"] / result["recover_per_model_2_workers_s"]
    path = write_results("grouped", result)
    print(f"{args.models} FFNN-48, {len(cells)} retrains, groups of <= {args.group_size}; median of {args.repeats} "
          f"(results in {path})")
    print(f"  flow training: per model {result['flow_training_per_model_s']:.1f} s, grouped "
          f"{result['flow_training_grouped_s']:.2f} s ({result['flow_training_speedup']:.1f}x)")
    print(f"  recovery, 2 workers: per model {result['recover_per_model_2_workers_s']:.1f} s, grouped "
          f"{result['recover_grouped_2_workers_s']:.2f} s (ratio {result['recover_ratio']:.3f}); "
          f"bit-exact {100 * result['bit_exact_share']:.0f}%")


if __name__ == "__main__":
    main()
