"""kill -9 of ingest at the points it reaches (its writes to the store and the inbox), with devices pushing backlogs.

The child parks at the n-th call of one backend method, after announcing it with a marker file, and
is killed there: the kill lands exactly at that step, however loaded the machine is.
"""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

import pytest

from mmstore import Store
from mmstore.backend import open_backend
from mmstore.ingest import ingest, pending
from tests.conftest import TEST_SETTINGS, make_s3_bucket
from tests.faults import HookedBackend
from tests.test_devices import Fleet, changed
from tests.test_ingest_backlog import assert_lineage_holds, push_backlog

DEVICES = ("car-0", "car-1", "car-2")
# (backend, method, n-th call, park after the real call): before the pack, with the pack alone, with some
# manifests, before any lineage moved, with some moved, with the register partly raised, before the inbox is cleared.
POINTS = [("store", "put", 1, False), ("store", "put", 1, True), ("store", "put", 5, True), ("store", "swap", 1, False),
          ("store", "swap", 2, True), ("store", "swap", 5, True), ("inbox", "delete_many", 1, False)]


def _ingest_parked(store_url: str, inbox_url: str, options: dict, point: tuple, marker: str) -> None:
    """Ingest everything pending, parking at `point` (announced by `marker`) until killed."""
    target, method, n, after = point

    def park(real, *args, **kwargs):
        if after:
            real(*args, **kwargs)
        Path(marker).write_text(f"{method} {n}")
        time.sleep(3600)  # parked: the parent kills this process here

    store_backend, inbox = open_backend(store_url, **options), open_backend(inbox_url, **options)
    if target == "store":
        store_backend = HookedBackend(store_backend, method, n, park)
    else:
        inbox = HookedBackend(inbox, method, n, park)
    ingest(Store(store_backend, TEST_SETTINGS), inbox, pending(inbox))


def _wait_for(marker: Path, process, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not marker.exists():
        assert process.is_alive(), "ingest ended before it reached the point it was to be killed at"
        assert time.monotonic() < deadline, "ingest never reached the point it was to be killed at"
        time.sleep(0.02)


def _kill_and_finish(fleet: Fleet, point: tuple, tmp_path: Path) -> dict[str, list]:
    held = {name: push_backlog(fleet, name, 3) for name in DEVICES}
    marker = tmp_path / "parked"
    child = multiprocessing.get_context("spawn").Process(
        target=_ingest_parked, args=(fleet.store_url, fleet.inbox_url, fleet.options, point, str(marker)))
    child.start()
    try:
        _wait_for(marker, child)
    finally:
        child.kill()
        child.join(timeout=30)
    assert child.exitcode == -9
    for name in DEVICES:  # the devices go on pushing from what they last sent
        held[name] += _continue(fleet, name, held[name])
    for _ in range(3):
        if not pending(fleet.inbox):
            break
        outcomes = fleet.ingest()
        assert "quarantined" not in {o.status for o in outcomes}, [o.reason for o in outcomes if o.status == "quarantined"]
    assert pending(fleet.inbox) == {}
    return held


def _continue(fleet: Fleet, name: str, held: list) -> list:
    """Two more pushes of a device that holds the last models it pushed, made after the kill."""
    device = fleet.device(name)
    device.base, device.base_set = held[-1], None  # what the device holds, ingested or not
    models, more = held[-1], []
    for day in range(2):
        models = changed(models, day, seed=5000 + 10 * DEVICES.index(name) + day, tensors=(1,))
        device.push(models, f"2026-03-0{day + 1}T00:00:00+00:00")
        more.append(models)
    return more


@pytest.mark.parametrize("point", POINTS, ids=[f"{t}-{m}-{n}-{'after' if a else 'before'}" for t, m, n, a in POINTS])
def test_ingest_killed_at_any_step_commits_each_version_exactly_once(tmp_path, point):
    fleet = Fleet(str(tmp_path / "store"), str(tmp_path / "inbox"))
    held = _kill_and_finish(fleet, point, tmp_path)
    for name in DEVICES:
        assert_lineage_holds(fleet, name, held[name])


@pytest.mark.parametrize("point", [POINTS[3], POINTS[5]], ids=["before-moves", "register-partly"])
def test_ingest_killed_on_s3_commits_each_version_exactly_once(tmp_path, s3_options, point):
    bucket = make_s3_bucket(s3_options)
    fleet = Fleet(f"s3://{bucket}/store", f"s3://{bucket}/store-inbox", **s3_options)
    held = _kill_and_finish(fleet, point, tmp_path)
    for name in DEVICES:
        assert_lineage_holds(fleet, name, held[name])
