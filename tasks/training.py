"""Tasks that train models in batches (of whole groups, or of single models), through the code path replay uses."""

from __future__ import annotations

import numpy as np
from prefect import task

from envs.executors import LocalExecutor
from envs.fingerprint import capture
from mmstore import ModelSet
from mmstore.replay import ReplayJob, ReplayTask, run_jobs
from workloads.datasets import encode_arrays

__all__ = ["train_batch", "fingerprint", "training_jobs", "assemble"]


@task(name="train-batch")
def train_batch(spec: ReplayTask, jobs: list[ReplayJob], workers: int) -> np.ndarray:
    """Trained rows of one batch: in `workers` local processes, or inline (`workers=0`) on a Dask worker."""
    if workers == 0:
        return run_jobs(spec, jobs)
    return LocalExecutor(workers).replay(spec, jobs)


@task(name="fingerprint")
def fingerprint() -> str:
    """The environment fingerprint (JSON) the training runs in."""
    return capture().to_json().decode()


@task(name="training-jobs")
def training_jobs(base: ModelSet, cells: list[int], recipe_of: dict[int, str], recipes: dict, data: dict) -> list[ReplayJob]:
    """One job per retrained cell: its current row, its newest data (as stored) and its recipe."""
    return [
        ReplayJob(model=cell, row=base.data[cell], recipe=recipes[recipe_of[cell]],
                  dataset=encode_arrays({"x": data["x"][cell], "y": data["y"][cell]}))
        for cell in cells
    ]


@task(name="assemble")
def assemble(base: ModelSet, cells: list[int], rows: list[np.ndarray]) -> ModelSet:
    """The new version: the base with the retrained rows put in."""
    data = base.data.copy()
    if cells:
        data[np.asarray(cells)] = np.concatenate(rows)
    return ModelSet(base.arch, base.layout, data)
