"""Provenance recovery is training: how it scales with replay workers, and what the realistic recipe costs."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import numpy as np

from envs.executors import LocalExecutor
from envs.fingerprint import capture
from mmstore import ModelSet, ProvenanceRecord, Settings, Store
from mmstore.groups import plan_groups
from mmstore.replay import ReplayJob, ReplayTask, grouped
from workloads.datasets import encode_arrays, write_datasets
from workloads.fleet import Fleet
from workloads.models import ARCHITECTURES

from .common import timed
from .eval_run import warm_pool
from .eval_sequence import GROUP_SIZE, GROUP_TRAINER, SEED, Sequence, recipes

__all__ = ["worker_scaling", "realistic_recipe"]


def _recover(url: str, set_id: str, workers: int, settings: Settings) -> tuple[float, ModelSet]:
    """One recovery through a fresh store, replaying in `workers` (already started) processes."""
    return timed(lambda: Store.open(url, settings).recover(set_id, executor=LocalExecutor(workers)))


def _provenance_pair(url: str, base: ModelSet, derived: ModelSet, record: ProvenanceRecord, settings: Settings) -> str:
    """Save a base snapshot and one derived provenance set; returns the derived set's id."""
    store = Store.open(url, settings)
    base_id = store.save(base, approach="provenance")
    return store.save(derived, approach="provenance", base=base_id, provenance=record)


def worker_scaling(seq: Sequence, root: Path, repeats: int) -> dict[str, Any]:
    """Median recovery seconds of U3-1 (the reduced recipe) with 1 and with 2 replay workers."""
    set_id = _provenance_pair(str(root / "scaling"), seq.sets[0], seq.sets[1], seq.record(1), seq.settings())
    result: dict[str, Any] = {"use_case": "U3-1", "retrained": len(seq.changes[0])}
    for workers in (1, 2):
        warm_pool(seq, workers)
        runs = [_recover(str(root / "scaling"), set_id, workers, seq.settings())[0] for _ in range(repeats)]
        result[f"recover_{workers}_s"] = statistics.median(runs)
    result["speedup"] = result["recover_1_s"] / result["recover_2_s"]
    return result


def realistic_recipe(seq: Sequence, root: Path, cells: int) -> dict[str, Any]:
    """U3-1 for `cells` of its retrained models with the default recipe on full cycle data, in groups: one run."""
    arch = seq.variant.arch
    changes = seq.changes[0]
    chosen = sorted(changes)[:: max(1, len(changes) // cells)][:cells]
    data = Fleet(SEED, len(seq.sets[0]), ARCHITECTURES[arch]).datasets(1, np.array(chosen))
    refs = write_datasets(str((root / "realistic-datasets").resolve()), 1, data)
    named = recipes(arch, 1, reduced=False)
    jobs = [ReplayJob(c, seq.sets[0].data[c], encode_arrays(data[c]), named[changes[c][0]]) for c in chosen]
    groups = plan_groups({c: changes[c][0] for c in chosen}, GROUP_SIZE)
    task, jobs = grouped(ReplayTask(seq.sets[0].arch, seq.sets[0].layout, GROUP_TRAINER, Settings().allowed_prefixes()),
                         jobs, groups)
    train_s, rows = timed(lambda: LocalExecutor(2).replay(task, jobs))
    derived = seq.sets[0].data.copy()
    derived[[job.model for job in jobs]] = rows
    record = ProvenanceRecord(trainer=GROUP_TRAINER, recipes=named, environment=capture().to_json(),
                              changes={c: (changes[c][0], refs[c]) for c in chosen}, groups=groups)
    # The datasets lie at the store's own dataset location, "<store>-datasets": the default settings read them.
    settings = Settings()
    set_id = _provenance_pair(str(root / "realistic"), seq.sets[0], ModelSet(task.arch, task.layout, derived), record, settings)
    warm_pool(seq, 1)
    one, _ = _recover(str(root / "realistic"), set_id, 1, settings)
    two, recovered = _recover(str(root / "realistic"), set_id, 2, settings)
    assert recovered.equals(ModelSet(task.arch, task.layout, derived))
    per_model = two / len(chosen)
    return {
        "recipe": named["full"], "samples_per_model": int(data[chosen[0]]["x"].shape[0]), "retrained": len(chosen),
        "train_at_save_s": train_s, "recover_1_s": one, "recover_2_s": two, "speedup": one / two,
        "per_model_2_workers_s": per_model,
        # U3-k replays every model retrained in cycles 1..k: the paper's staircase.
        "extrapolated_recover_s": [float(per_model * m) for m in np.cumsum([len(c) for c in seq.changes])],
    }
