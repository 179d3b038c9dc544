"""Replay executors for this machine: worker processes, in parallel over models or groups, each single-threaded.

Starting workers costs seconds (the fork server, then each worker importing the trainer), so work
too small to repay that is trained in the calling process instead, with the workers' settings.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import numpy as np
import torch

from envs.compare import compare
from envs.fingerprint import Fingerprint, capture
from mmstore.arch import GROUP_TRAINER_KIND, TRAINER_KIND, import_trusted
from mmstore.errors import EnvironmentMismatchError, MMStoreError
from mmstore.replay import ReplayJob, ReplayTask, part, run_jobs, split

__all__ = ["LocalExecutor", "shutdown"]

# Several batches per worker even out full and partial retrains, which differ ~4x in cost.
_BATCHES_PER_WORKER = 8
# Seconds from no workers to workers training (fork server, then each worker's imports and first
# optimiser step): 1.5-4 s on the reference machine. Work that parallelism would shorten by less runs here.
_POOL_START_S = 2.0
# What a fresh worker process runs with: one thread per op, float32 by default, no deterministic-only mode.
_WORKER_SETTINGS = (1, torch.float32, False, False)


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


class LocalExecutor:
    """Replays in `workers` processes (default: one per core) after checking this environment.

    While no workers run yet, jobs are trained here as long as that is expected to finish sooner
    than starting them: with one worker, always.
    """

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
        """The trained rows in order: from worker processes, unless starting them costs more than it saves."""
        if not jobs:
            return run_jobs(task, jobs)
        if self.workers in _POOLS:
            return self._in_workers(task, jobs)
        here, (rest_task, rest) = _here_unless_workers_pay(task, jobs, self.workers)
        return np.concatenate([here, self._in_workers(rest_task, rest)]) if rest else here

    def _in_workers(self, task: ReplayTask, jobs: Sequence[ReplayJob]) -> np.ndarray:
        # A group trains in one call and is never split: the batches are whole groups.
        tasks, batches = zip(*split(task, jobs, self.workers * _BATCHES_PER_WORKER))
        try:
            return np.concatenate(list(_pool(self.workers).map(run_jobs, tasks, batches)))
        except BrokenProcessPool as exc:
            _POOLS.pop(self.workers, None)
            raise MMStoreError(f"a replay worker process died ({exc}); free memory and recover again") from exc


def _here_unless_workers_pay(task: ReplayTask, jobs: Sequence[ReplayJob],
                             workers: int) -> tuple[np.ndarray, tuple[ReplayTask, list[ReplayJob]]]:
    """Train jobs here unless workers are expected to finish the rest sooner; the rows and the work left.

    A job (or a group) is trained here and timed, and if workers would not pay at that cost the rest
    follows here at once. The first one also pays one-off costs (imports, torch's first optimiser
    step) that each worker would pay as well, so a second one gives a closer estimate before any start.
    """
    rows, units = [], len(task.units(jobs))
    for done in range(min(2, units)):
        start = time.perf_counter()
        rows.append(_here(*part(task, jobs, done, done + 1)))
        if not _workers_pay(time.perf_counter() - start, units - done - 1, workers):
            return np.concatenate([*rows, _here(*part(task, jobs, done + 1))]), part(task, jobs, units)
        if not done:
            # Workers may pay: they start (and import the trainer) while the second one trains here.
            for _ in range(workers):
                _pool(workers).submit(_import_trainer, task)
    return np.concatenate(rows), part(task, jobs, 2)


def _import_trainer(task: ReplayTask) -> None:
    import_trusted(task.trainer, task.trusted, GROUP_TRAINER_KIND if task.groups else TRAINER_KIND)


def _here(task: ReplayTask, jobs: Sequence[ReplayJob]) -> np.ndarray:
    with _as_in_a_worker():
        return run_jobs(task, jobs)


def _workers_pay(seconds_per_job: float, remaining: int, workers: int) -> bool:
    """True when starting `workers` processes and training there beats training `remaining` jobs here."""
    return _POOL_START_S + seconds_per_job * math.ceil(remaining / workers) < seconds_per_job * remaining


class _Here:
    """Torch's process-wide settings are changed once for all replays training here at a time, then restored."""

    lock = threading.Lock()
    active = 0
    saved: tuple = ()


@contextmanager
def _as_in_a_worker() -> Iterator[None]:
    """A fresh worker's settings while the block trains; the caller's settings and random state after it."""
    with _Here.lock:
        if not _Here.active:
            _Here.saved = _settings()
            _apply(_WORKER_SETTINGS)
        _Here.active += 1
    try:
        with torch.random.fork_rng(devices=[]), torch.inference_mode(False), torch.enable_grad():
            yield
    finally:
        with _Here.lock:
            _Here.active -= 1
            if not _Here.active:
                _apply(_Here.saved)


def _settings() -> tuple:
    return (torch.get_num_threads(), torch.get_default_dtype(), torch.are_deterministic_algorithms_enabled(),
            torch.is_deterministic_algorithms_warn_only_enabled())


def _apply(settings: tuple) -> None:
    threads, dtype, deterministic, warn_only = settings
    torch.set_num_threads(threads)
    torch.set_default_dtype(dtype)
    torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
