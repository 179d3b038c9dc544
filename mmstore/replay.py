"""Replay: what provenance recovery asks an executor to train, the executor protocol, an in-process executor.

An executor only runs training; it decides nothing. The provenance approach checks datasets,
trainer and environment before it hands out jobs, and checks every result bit for bit afterwards.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from .arch import TRAINER_KIND, ArchSpec, import_trusted
from .layout import Layout
from .modelset import ModelSet

__all__ = ["ReplayTask", "ReplayJob", "Executor", "InProcessExecutor", "run_jobs", "TRAINER_KIND"]


@dataclass(frozen=True)
class ReplayTask:
    """What all jobs of one replay share: the architecture, its layout and the training function."""

    arch: ArchSpec
    layout: Layout
    trainer: str
    trusted: tuple[str, ...]


@dataclass(frozen=True)
class ReplayJob:
    """One model to re-train: its index in the set, its starting row, its dataset's bytes, its recipe."""

    model: int
    row: np.ndarray
    dataset: bytes
    recipe: dict[str, Any]


class Executor(Protocol):
    """Something that runs training: in this process, in worker processes, in a container."""

    def check(self, environment: bytes) -> None:
        """Raise `EnvironmentMismatchError` if replays here cannot match the recorded environment's bits."""

    def replay(self, task: ReplayTask, jobs: Sequence[ReplayJob]) -> np.ndarray:
        """The trained rows of `jobs`, in their order: a (len(jobs), row) uint8 array."""


def run_jobs(task: ReplayTask, jobs: Sequence[ReplayJob]) -> np.ndarray:
    """Train every job here, one after another: the unit of work every executor runs somewhere."""
    if not jobs:
        return np.empty((0, task.layout.row_nbytes), dtype=np.uint8)
    trainer = import_trusted(task.trainer, task.trusted, TRAINER_KIND)
    start = ModelSet(task.arch, task.layout, np.stack([job.row for job in jobs]), task.trusted)
    states = [trainer(module, job.dataset, job.recipe).state_dict() for module, job in zip(start.to_modules(), jobs)]
    task.layout.check(states[0], f"the model {task.trainer} returned")
    return ModelSet.from_state_dicts(states, task.arch).data


class InProcessExecutor:
    """Replays in the calling process, model after model; it compares no environments (results still are)."""

    def check(self, environment: bytes) -> None:
        """Accept any environment: only the bit-exact check of the results guards this executor."""

    def replay(self, task: ReplayTask, jobs: Sequence[ReplayJob]) -> np.ndarray:
        """Train the jobs here."""
        return run_jobs(task, jobs)


def in_process(store: Any, set_id: str) -> InProcessExecutor:
    """The registered `in-process` executor (entry point `mmstore.executors`)."""
    return InProcessExecutor()
