"""What a replay container leaves as its result is read only as the array the host expects."""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest

from envs.replay_worker import RESULT, read_result
from mmstore.errors import MMStoreError
from mmstore.replay import ReplayTask

from ..provenance_fleet import TRAINER, initial_set


@pytest.fixture
def task():
    """A task over two-model FFNN-48 rows."""
    models = initial_set(2, seed=13)
    return ReplayTask(models.arch, models.layout, TRAINER, ("tests",))


@pytest.fixture
def out(tmp_path):
    """A work directory with its empty output folder."""
    (tmp_path / RESULT.parent).mkdir()
    return tmp_path


def test_the_expected_rows_are_read(task, out):
    rows = np.random.default_rng(13).integers(0, 256, (2, task.layout.row_nbytes), dtype=np.uint8)
    np.save(out / RESULT, rows, allow_pickle=False)
    assert np.array_equal(read_result(out, task, 2), rows)


@pytest.mark.parametrize("written", ["more rows", "other dtype", "fortran order", "huge header", "trailing bytes"])
def test_any_other_array_is_refused(written, task, out):
    row = task.layout.row_nbytes
    arrays = {"more rows": np.zeros((3, row), np.uint8), "other dtype": np.zeros((2, row), np.int8),
              "fortran order": np.asfortranarray(np.zeros((row, 2), np.uint8).T),
              "trailing bytes": np.zeros((2, row), np.uint8)}
    if written == "huge header":
        (out / RESULT).write_bytes(b"\x93NUMPY\x01\x00\x46\x00{'descr': '|u1', 'fortran_order': False, 'shape': (10**12, 10**6), }\n")
    else:
        np.save(out / RESULT, arrays[written], allow_pickle=False)
        if written == "trailing bytes":
            with open(out / RESULT, "ab") as f:
                f.write(b"\x00")
    with pytest.raises(MMStoreError, match="is not a uint8 array"):
        read_result(out, task, 2)


def test_links_and_fifos_are_refused_without_blocking(task, out):
    os.symlink("/etc/hostname", out / RESULT)
    with pytest.raises(MMStoreError, match="cannot be opened"):
        read_result(out, task, 2)
    os.remove(out / RESULT)
    os.mkfifo(out / RESULT)
    outcome: list[BaseException] = []
    reader = threading.Thread(target=lambda: outcome.append(pytest.raises(MMStoreError, read_result, out, task, 2)))
    reader.start()
    reader.join(5)
    assert not reader.is_alive() and outcome


def test_a_missing_result_is_named(task, out):
    with pytest.raises(MMStoreError, match="wrote no result"):
        read_result(out, task, 2)
