"""The local replay executor: environment check by fingerprint, parallel replay identical to in-process."""

from __future__ import annotations

import numpy as np
import pytest

from envs.executors import LocalExecutor
from envs.fingerprint import capture
from mmstore import Settings
from mmstore.errors import EnvironmentMismatchError
from mmstore.replay import ReplayJob, ReplayTask, run_jobs
from workloads.datasets import encode_arrays

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


def test_workers_replay_exactly_what_this_process_trains():
    models = initial_set(6, seed=9)
    rng = np.random.default_rng(9)
    jobs = [
        ReplayJob(i, models.data[i], encode_arrays({"x": rng.standard_normal((32, 5), dtype=np.float32),
                                                    "y": rng.standard_normal((32, 1), dtype=np.float32)}),
                  RECIPES["full" if i % 2 else "partial"])
        for i in range(6)
    ]
    task = ReplayTask(models.arch, models.layout, TRAINER, Settings().allowed_prefixes())
    here = run_jobs(task, jobs)
    assert np.array_equal(LocalExecutor(workers=2).replay(task, jobs), here)
    assert not np.array_equal(here, models.data)
    assert LocalExecutor(workers=2).replay(task, []).shape == (0, models.layout.row_nbytes)
