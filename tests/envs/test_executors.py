"""The local replay executor: environment check by fingerprint, parallel replay identical to in-process,
small replays trained here without starting workers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from envs import executors
from envs.executors import LocalExecutor, shutdown
from envs.fingerprint import capture
from mmstore import Settings
from mmstore.errors import EnvironmentMismatchError
from mmstore.groups import plan_groups
from mmstore.replay import ReplayJob, ReplayTask, run_jobs
from workloads.datasets import encode_arrays

from ..grouped_fleet import group_jobs, random_arrays
from ..provenance_fleet import RECIPES, TRAINER, initial_set


def _other_torch() -> bytes:
    fp = capture()
    return fp.model_copy(update={"torch": fp.torch.model_copy(update={"version": "1.7.1"})}).to_json()


def test_same_environment_passes():
    LocalExecutor().check(capture().to_json())


def test_incompatible_environment_names_the_field():
    with pytest.raises(EnvironmentMismatchError, match=r"torch\.version.*force=True"):
        LocalExecutor().check(_other_torch())


def test_force_skips_the_environment_check():
    LocalExecutor(force=True).check(_other_torch())


def _jobs(n: int, samples: int = 32) -> tuple[ReplayTask, list[ReplayJob], np.ndarray]:
    models = initial_set(n, seed=9)
    rng = np.random.default_rng(9)
    jobs = [
        ReplayJob(i, models.data[i], encode_arrays({"x": rng.standard_normal((samples, 5), dtype=np.float32),
                                                    "y": rng.standard_normal((samples, 1), dtype=np.float32)}),
                  RECIPES["full" if i % 2 else "partial"])
        for i in range(n)
    ]
    return ReplayTask(models.arch, models.layout, TRAINER, Settings().allowed_prefixes()), jobs, models.data


@pytest.fixture
def no_workers():
    """No worker pool before the test, none left after it."""
    shutdown()
    yield
    shutdown()


def test_workers_replay_exactly_what_this_process_trains(no_workers):
    task, jobs, start = _jobs(6)
    here = run_jobs(task, jobs)
    assert np.array_equal(executors._pool(2).submit(run_jobs, task, jobs).result(), here)
    assert not np.array_equal(here, start)
    assert LocalExecutor(workers=2).replay(task, []).shape == (0, start.shape[1])


def test_small_replays_train_here_without_starting_workers(no_workers):
    task, jobs, _ = _jobs(5)
    here = run_jobs(task, jobs)
    assert np.array_equal(LocalExecutor(workers=2).replay(task, jobs), here)
    assert executors._POOLS == {}


def test_training_here_is_like_a_worker_and_leaves_the_callers_settings(no_workers):
    task, jobs, _ = _jobs(3)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    torch.manual_seed(123)
    try:
        with torch.no_grad():
            rows = LocalExecutor(workers=2).replay(task, jobs)
            assert not torch.is_grad_enabled()
        assert torch.get_num_threads() == 2
        # The trainer seeds torch; the caller's random stream goes on as if nothing had trained.
        assert torch.equal(torch.rand(3), torch.rand(3, generator=torch.Generator().manual_seed(123)))
    finally:
        torch.set_num_threads(threads)
    assert executors._POOLS == {}
    assert np.array_equal(rows, executors._pool(2).submit(run_jobs, task, jobs).result())


def test_work_that_repays_the_start_goes_to_workers(no_workers, monkeypatch):
    task, jobs, _ = _jobs(7)
    here = run_jobs(task, jobs)
    monkeypatch.setattr(executors, "_POOL_START_S", 0.0)
    # Two jobs here (the first pays one-off costs, the second is measured), the other five in workers.
    assert np.array_equal(LocalExecutor(workers=2).replay(task, jobs), here)
    assert 2 in executors._POOLS
    assert np.array_equal(LocalExecutor(workers=2).replay(task, jobs), here)  # with workers running, all go there


def test_one_worker_never_starts_a_process(no_workers):
    task, jobs, _ = _jobs(4)
    assert np.array_equal(LocalExecutor(workers=1).replay(task, jobs), run_jobs(task, jobs))
    assert executors._POOLS == {}


def test_grouped_training_in_workers_is_bit_identical_to_this_process(no_workers, monkeypatch):
    """Four groups of two (full and partial recipes) go to two worker processes, a whole group to each call."""
    base = initial_set(8, seed=10)
    plan = {m: "full" if m % 2 else "partial" for m in range(8)}
    rng = np.random.default_rng(10)
    task, jobs = group_jobs(base, plan, {m: random_arrays(rng, 40) for m in plan}, plan_groups(plan, 2))
    assert task.groups == (2, 2, 2, 2)
    here = run_jobs(task, jobs)
    monkeypatch.setattr(executors, "_POOL_START_S", 0.0)
    assert np.array_equal(LocalExecutor(workers=2).replay(task, jobs), here)
    assert 2 in executors._POOLS
    assert np.array_equal(LocalExecutor(workers=2).replay(task, jobs), here)  # every group in the workers
    assert not np.array_equal(here, base.data[[job.model for job in jobs]])
