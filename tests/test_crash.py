"""A save interrupted at any point leaves the store as it was: no half-written set is visible."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from mmstore import ArchSpec, ModelSet, Store
from mmstore.layout import Layout

from .archs import Small
from .conftest import TEST_SETTINGS

WRITER = """
import sys, numpy as np
from mmstore import ArchSpec, ModelSet, Settings, Store
from mmstore.layout import Layout
from tests.archs import Small
store = Store.open(sys.argv[1], Settings(trusted_modules=("tests",)))
layout = Layout.of(Small().state_dict())
rng = np.random.default_rng(int(sys.argv[2]))
approach, rows = (sys.argv[3], int(sys.argv[4])) if len(sys.argv) > 3 else ("baseline", 40_000)
print("ready", flush=True)
while True:
    data = rng.integers(0, 256, (rows, layout.row_nbytes), dtype=np.uint8)
    store.save(ModelSet(ArchSpec(factory="tests.archs:Small"), layout, data), approach=approach, lineage="fleet")
"""


def _assert_consistent(url: str) -> int:
    store = Store.open(url, TEST_SETTINGS)
    ids = store.verify()
    if "fleet" in store.lineages():
        assert store.resolve("fleet") in ids
    return len(ids)


@pytest.mark.parametrize("delay", [0.05, 0.2, 0.45, 0.9])
def test_killed_writer_leaves_only_complete_sets(tmp_path, delay):
    url = str(tmp_path / "store")
    proc = subprocess.Popen([sys.executable, "-c", WRITER, url, str(int(delay * 100))], stdout=subprocess.PIPE,
                            cwd=os.getcwd(), text=True)
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(delay)
    os.kill(proc.pid, signal.SIGKILL)  # a real crash: no cleanup code runs
    proc.wait(timeout=30)
    _assert_consistent(url)


class FailingBackend:
    """Wraps a real backend and fails its n-th write, like a full disk or a dropped connection.

    A mock, because a failure at an exact write cannot be caused for real reliably.
    """

    def __init__(self, inner, fail_at: int):
        self.inner, self.fail_at, self.writes = inner, fail_at, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def put(self, key, data, *, exclusive):
        self.writes += 1
        if self.writes == self.fail_at:
            raise OSError("injected write failure")
        return self.inner.put(key, data, exclusive=exclusive)

    def swap(self, key, expected, new):
        self.writes += 1
        if self.writes == self.fail_at:
            raise OSError("injected write failure")
        return self.inner.swap(key, expected, new)


@pytest.mark.parametrize("fail_at", [1, 2, 3, 4])
def test_failure_at_each_write_keeps_previous_state(tmp_path, fail_at):
    url = str(tmp_path / "store")
    layout = Layout.of(Small().state_dict())
    rng = np.random.default_rng(fail_at)
    first = ModelSet(ArchSpec(factory="tests.archs:Small"), layout, rng.integers(0, 256, (50, layout.row_nbytes), dtype=np.uint8))
    first_id = Store.open(url, TEST_SETTINGS).save(first, lineage="fleet")
    second = ModelSet(first.arch, layout, rng.integers(0, 256, (50, layout.row_nbytes), dtype=np.uint8))
    failing = Store(FailingBackend(Store.open(url, TEST_SETTINGS).backend, fail_at), TEST_SETTINGS)
    try:
        new_id = failing.save(second, lineage="fleet")
    except OSError:
        # Either nothing new is visible, or the new set is complete and only the lineage did not move.
        after = Store.open(url, TEST_SETTINGS)
        assert after.resolve("fleet") == first_id
        assert [i.id for i in after.list()][0] == first_id
    else:
        # The failing write came after the commit point; everything must be complete.
        assert Store.open(url, TEST_SETTINGS).resolve("fleet") == new_id
    assert _assert_consistent(url) >= 1
