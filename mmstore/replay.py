"""Replay: what provenance recovery asks an executor to train, the executor protocol, an in-process executor.

An executor only runs training; it decides nothing. The provenance approach checks datasets,
trainer and environment before it hands out jobs, and checks every result bit for bit afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, Protocol

import numpy as np
import torch

from .arch import GROUP_TRAINER_KIND, TRAINER_KIND, ArchSpec, import_trusted
from .errors import MMStoreError, ReproductionError
from .groups import GroupPlan, spans
from .layout import Layout
from .modelset import ModelSet

__all__ = ["ReplayTask", "ReplayJob", "Executor", "InProcessExecutor", "run_jobs", "grouped", "split", "part",
           "TRAINER_KIND"]


@dataclass(frozen=True)
class ReplayTask:
    """What all jobs of one replay share: the architecture, its layout, the training function, the grouping.

    With `groups` empty the trainer trains one model per call and jobs may be split anywhere. Otherwise
    it is a group trainer, the jobs form consecutive groups of these sizes, each trained by one call
    while torch uses `threads` threads, and a group is never split.
    """

    arch: ArchSpec
    layout: Layout
    trainer: str
    trusted: tuple[str, ...]
    groups: tuple[int, ...] = ()
    threads: int = 1

    def units(self, jobs: Sequence["ReplayJob"]) -> list[tuple[int, int]]:
        """The [start, end) spans of `jobs` that train together: each group, or each job."""
        if not self.groups:
            return [(i, i + 1) for i in range(len(jobs))]
        if sum(self.groups) != len(jobs) or min(self.groups) < 1:
            raise MMStoreError(f"a replay of {len(jobs)} models names groups of {sum(self.groups)}; the caller is broken")
        return spans(self.groups)


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
    """Train every job (or group) here, one after another: the unit of work every executor runs somewhere."""
    units = task.units(jobs)
    if not jobs:
        return np.empty((0, task.layout.row_nbytes), dtype=np.uint8)
    start = ModelSet(task.arch, task.layout, np.stack([job.row for job in jobs]), task.trusted)
    return _train_groups(task, jobs, start, units) if task.groups else _train_models(task, jobs, start)


def _train_models(task: ReplayTask, jobs: Sequence[ReplayJob], start: ModelSet) -> np.ndarray:
    trainer = import_trusted(task.trainer, task.trusted, TRAINER_KIND)
    states = [trainer(module, job.dataset, job.recipe).state_dict() for module, job in zip(start.to_modules(), jobs)]
    task.layout.check(states[0], f"the model {task.trainer} returned")
    return ModelSet.from_state_dicts(states, task.arch).data


def _train_groups(task: ReplayTask, jobs: Sequence[ReplayJob], start: ModelSet, units: list[tuple[int, int]]) -> np.ndarray:
    trainer = import_trusted(task.trainer, task.trusted, GROUP_TRAINER_KIND)
    tensors, template, rows = start.tensors(), start.template(), []
    with _threads(task.threads):
        for lo, hi in units:
            group = jobs[lo:hi]
            models = [job.model for job in group][:10]
            if any(job.recipe != group[0].recipe for job in group):
                raise MMStoreError(f"models {models} train in one group with different recipes; group models by recipe")
            try:
                stacked = trainer(template, {k: v[lo:hi] for k, v in tensors.items()}, [j.dataset for j in group],
                                  group[0].recipe)
            except (ValueError, TypeError, RuntimeError) as exc:
                raise ReproductionError(
                    f"the group trainer {task.trainer} failed on models {models} ({exc}); "
                    "their datasets and recipe cannot train together, as the record claims they did"
                ) from exc
            rows.append(ModelSet.from_stacked(dict(stacked), task.arch, task.layout).data)
    return np.concatenate(rows)


def grouped(task: ReplayTask, jobs: Sequence[ReplayJob], plan: GroupPlan) -> tuple[ReplayTask, list[ReplayJob]]:
    """`jobs` (one per planned model) in the plan's training order, and the task that trains them in its groups."""
    by_model = {job.model: job for job in jobs}
    return replace(task, groups=tuple(len(g) for g in plan.groups), threads=plan.threads), [by_model[m] for m in plan.models()]


def split(task: ReplayTask, jobs: Sequence[ReplayJob], count: int) -> list[tuple[ReplayTask, list[ReplayJob]]]:
    """At most `count` parts of consecutive jobs, of about equal job counts, never cutting a group."""
    units = task.units(jobs)
    parts: list[list[tuple[int, int]]] = [[]]
    target = max(1, -(-len(jobs) // max(1, count)))
    for unit in units:
        if parts[-1] and parts[-1][-1][1] - parts[-1][0][0] >= target:
            parts.append([])
        parts[-1].append(unit)
    return [_part(task, jobs, chosen) for chosen in parts if chosen]


def part(task: ReplayTask, jobs: Sequence[ReplayJob], start: int, stop: int | None = None) -> tuple[ReplayTask, list[ReplayJob]]:
    """The task and jobs of the groups (or jobs) `start` to `stop` (default: the end)."""
    return _part(task, jobs, task.units(jobs)[start:stop])


def _part(task: ReplayTask, jobs: Sequence[ReplayJob], units: list[tuple[int, int]]) -> tuple[ReplayTask, list[ReplayJob]]:
    if not units:
        return replace(task, groups=()), []
    chosen = list(jobs[units[0][0] : units[-1][1]])
    return (replace(task, groups=tuple(hi - lo for lo, hi in units)) if task.groups else task), chosen


@contextmanager
def _threads(count: int) -> Iterator[None]:
    """Torch's intra-op thread count for the block: the one the groups were recorded with."""
    old = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(old)


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
