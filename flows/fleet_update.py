"""Flow: one update cycle of a fleet (use case U3): drift -> retrain (in groups) -> save -> move the lineage."""

from __future__ import annotations

from dataclasses import replace

from prefect import flow, get_run_logger
from prefect.artifacts import create_progress_artifact, update_progress_artifact

from mmstore import ModelSet, ProvenanceRecord, Settings
from mmstore.groups import GroupPlan, plan_groups
from mmstore.replay import ReplayJob, ReplayTask, grouped, split
from workloads.models import ARCHITECTURES
from workloads.training import TrainRecipe

from flows.params import FleetUpdateParameters
from flows.save_model_set import save_model_set
from tasks.fleet import cycle_data, detect_drift, write_cycle_datasets
from tasks.store import load_set
from tasks.training import assemble, fingerprint, train_batch, training_jobs

__all__ = ["fleet_update", "datasets_location", "recipes_for", "training_task", "train_in_tasks", "TRAINER",
           "GROUP_TRAINER"]

TRAINER = "workloads.training:train_from_bytes"
GROUP_TRAINER = "workloads.training:train_group"


def datasets_location(store: str, datasets: str | None) -> str:
    """Where a fleet's datasets live: outside the store, by default beside it."""
    return datasets or store.rstrip("/") + "-datasets"


def recipes_for(arch: str, cycle: int) -> dict[str, dict]:
    """The full and the last-layer recipe of a cycle (seeded by the cycle)."""
    last = list(ARCHITECTURES[arch].last_layers)
    return {name: TrainRecipe(seed=cycle, trainable=trainable).model_dump(mode="json")
            for name, trainable in (("full", None), ("partial", last))}


# Parameters are validated: deployments pass them as JSON, which validation turns into FleetUpdateParameters.
@flow(name="fleet-update")
def fleet_update(params: FleetUpdateParameters = FleetUpdateParameters(), current: tuple[str, dict, ModelSet] | None = None) -> dict:
    """Retrain the drifted models of the lineage's newest set and save the new version."""
    base_id, meta, base = current or load_set(params.store, params.lineage)
    cycle, seed, arch = int(meta["cycle"]) + 1, int(meta["seed"]), str(meta["arch"])
    data = cycle_data(seed, len(base), cycle, arch)
    full, partial = detect_drift(base, data, params.full_fraction, params.partial_fraction, arch)
    cells = sorted(full + partial)
    refs = write_cycle_datasets(datasets_location(params.store, params.datasets), cycle, cells, data)
    recipes, recipe_of = recipes_for(arch, cycle), {**{c: "full" for c in full}, **{c: "partial" for c in partial}}
    spec, jobs, plan = training_task(base, training_jobs(base, cells, recipe_of, recipes, data), recipe_of, params.group_size)
    new_set = assemble(base, [job.model for job in jobs], train_in_tasks(spec, jobs, params))
    provenance = ProvenanceRecord(
        trainer=spec.trainer, recipes=recipes, environment=fingerprint(),
        changes={c: (recipe_of[c], refs[c].model_dump()) for c in cells},
        groups=plan,
    ) if params.approach == "provenance" else None
    new_meta = {**meta, "cycle": cycle, "full": len(full), "partial": len(partial)}
    saved = save_model_set(new_set, params.store, params.approach, base_id, params.lineage, new_meta, provenance, base)
    get_run_logger().info("cycle %d: retrained %d fully, %d last layer; saved %s", cycle, len(full), len(partial), saved["id"][:12])
    return {**saved, "cycle": cycle, "model_set": new_set}


def training_task(base: ModelSet, jobs: list[ReplayJob], recipe_of: dict[int, str],
                  group_size: int) -> tuple[ReplayTask, list[ReplayJob], GroupPlan | None]:
    """How to train `jobs`: in groups of at most `group_size` models of one recipe, or one model per call (0).

    Returns the task, the jobs in training order and the grouping a provenance record states.
    """
    spec = ReplayTask(arch=base.arch, layout=base.layout, trainer=TRAINER, trusted=Settings().allowed_prefixes())
    if not group_size or not jobs:
        return spec, jobs, None
    plan = plan_groups(recipe_of, group_size)
    return *grouped(replace(spec, trainer=GROUP_TRAINER), jobs, plan), plan


def train_in_tasks(spec: ReplayTask, jobs: list[ReplayJob], params: FleetUpdateParameters) -> list:
    """Train the jobs in a few mapped tasks (whole groups each), publishing progress as they finish; their rows."""
    progress = create_progress_artifact(0.0, key="training", description=f"Training {len(jobs)} models")
    futures = [train_batch.submit(task, batch, params.workers) for task, batch in split(spec, jobs, params.batches)]
    rows = []
    for done, future in enumerate(futures, start=1):
        rows.append(future.result())
        update_progress_artifact(progress, 100.0 * done / len(futures))
    return rows
