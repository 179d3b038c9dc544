"""Small FFNN-48 fleets retrained in groups by `workloads.training:train_group`, with their provenance records."""

from __future__ import annotations

import numpy as np

from envs.fingerprint import capture
from mmstore import ModelSet, ProvenanceRecord
from mmstore.groups import GroupPlan, plan_groups
from mmstore.replay import ReplayJob, ReplayTask, grouped, run_jobs
from workloads.datasets import encode_arrays, write_datasets
from workloads.models import FFNN48

from .conftest import TEST_SETTINGS
from .provenance_fleet import RECIPES

__all__ = ["GROUP_TRAINER", "retrain_grouped", "group_jobs", "random_arrays"]

GROUP_TRAINER = "workloads.training:train_group"


def random_arrays(rng: np.random.Generator, samples: int) -> dict[str, np.ndarray]:
    """A small regression dataset for one FFNN-48 cell."""
    x = rng.standard_normal((samples, FFNN48.in_features), dtype=np.float32)
    return {"x": x, "y": x[:, :1] * 0.5 + rng.standard_normal((samples, 1), dtype=np.float32) * 0.1}


def group_jobs(model_set: ModelSet, plan: dict[int, str], arrays: dict[int, dict], groups: GroupPlan,
               recipes: dict = RECIPES) -> tuple[ReplayTask, list[ReplayJob]]:
    """The grouped task and its jobs (in training order) that retrain `plan` on `arrays`."""
    jobs = [ReplayJob(m, model_set.data[m], encode_arrays(arrays[m]), recipes[plan[m]]) for m in sorted(plan)]
    task = ReplayTask(model_set.arch, model_set.layout, GROUP_TRAINER, TEST_SETTINGS.allowed_prefixes())
    return grouped(task, jobs, groups)


def retrain_grouped(model_set: ModelSet, plan: dict[int, str], root: str, cycle: int, seed: int, size: int = 3,
                    samples: int = 48) -> tuple[ModelSet, ProvenanceRecord]:
    """Retrain `plan` (index -> recipe name) in groups of at most `size` on fresh datasets under `root`."""
    rng = np.random.default_rng([seed, cycle])
    arrays = {cell: random_arrays(rng, samples) for cell in sorted(plan)}
    refs = write_datasets(root, cycle, arrays)
    groups = plan_groups(plan, size)
    task, jobs = group_jobs(model_set, plan, arrays, groups)
    data = model_set.data.copy()
    data[[job.model for job in jobs]] = run_jobs(task, jobs)
    record = ProvenanceRecord(
        trainer=GROUP_TRAINER, recipes=RECIPES, changes={cell: (name, refs[cell]) for cell, name in plan.items()},
        environment=capture().to_json(), groups=groups,
    )
    return ModelSet(model_set.arch, model_set.layout, data), record
