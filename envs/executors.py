"""Replay executors for this machine: worker processes, in parallel over models, each single-threaded."""

from __future__ import annotations

import multiprocessing
import os
import threading
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import numpy as np
import torch

from envs.compare import compare
from envs.fingerprint import Fingerprint, capture
from mmstore.errors import EnvironmentMismatchError, MMStoreError
from mmstore.replay import ReplayJob, ReplayTask, run_jobs

__all__ = ["LocalExecutor", "shutdown"]

# Several batches per worker even out full and partial retrains, which differ ~4x in cost.
_BATCHES_PER_WORKER = 8


def _single_threaded() -> None:
    # Save-time training ran with one thread; more threads could reorder float reductions.
    torch.set_num_threads(1)


def _context() -> multiprocessing.context.BaseContext:
    # A fork server imports torch once; each pool then forks from it in ~0.1 s instead of
    # spawning interpreters that import torch again (~3 s each), and never forks torch's threads.
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["torch", "mmstore.replay"])
    return context


# Pools live as long as the process: their workers import torch and the trainer once, not per recovery.
_POOLS: dict[int, ProcessPoolExecutor] = {}
# Training tasks run on several threads at once; without the lock each would start its own pool.
_POOLS_LOCK = threading.Lock()


def _pool(workers: int) -> ProcessPoolExecutor:
    with _POOLS_LOCK:
        if workers not in _POOLS:
            _POOLS[workers] = ProcessPoolExecutor(workers, mp_context=_context(), initializer=_single_threaded)
        return _POOLS[workers]


def shutdown() -> None:
    """Stop the worker processes kept for later replays."""
    while _POOLS:
        _POOLS.popitem()[1].shutdown()


def _batches(jobs: Sequence[ReplayJob], count: int) -> list[list[ReplayJob]]:
    size = max(1, -(-len(jobs) // count))
    return [list(jobs[i : i + size]) for i in range(0, len(jobs), size)]


class LocalExecutor:
    """Replays in `workers` processes (default: one per core) after checking this environment."""

    def __init__(self, workers: int | None = None, force: bool = False):
        self.workers = workers or os.cpu_count() or 1
        self.force = force

    def check(self, environment: bytes) -> None:
        """Raise `EnvironmentMismatchError` naming every blocking difference, unless forced."""
        if self.force:
            return
        comparison = compare(Fingerprint.from_json(environment), capture())
        if not comparison.compatible:
            fields = ", ".join(d.field for d in comparison.blocking)
            raise EnvironmentMismatchError(
                f"this environment differs from the recorded one in {fields}, which can change trained bits; "
                f"replay in the recorded environment (its image), or pass LocalExecutor(force=True) to try "
                f"anyway (results are still checked bit for bit).\n{comparison.summary()}"
            )

    def replay(self, task: ReplayTask, jobs: Sequence[ReplayJob]) -> np.ndarray:
        """Train the jobs in worker processes and return their rows in order."""
        if not jobs:
            return run_jobs(task, jobs)
        batches = _batches(jobs, self.workers * _BATCHES_PER_WORKER)
        try:
            return np.concatenate(list(_pool(self.workers).map(run_jobs, [task] * len(batches), batches)))
        except BrokenProcessPool as exc:
            _POOLS.pop(self.workers, None)
            raise MMStoreError(f"a replay worker process died ({exc}); free memory and recover again") from exc
