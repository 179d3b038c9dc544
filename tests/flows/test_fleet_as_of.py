"""The fleet-as-of flow: every device's version at a time, found through the catalog, joined bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

from bench.catalog import build_fleet, device_set, device_time
from flows.fleet_as_of import fleet_as_of
from flows.params import FleetAsOfParameters
from mmstore import NotFoundError, Store
from mmstore.catalog import Catalog, to_time

CELLS = 3


@pytest.fixture
def fleet(tmp_path):
    """5 devices x 4 daily versions, one more device whose first version comes later, all catalogued."""
    store = Store.open(str(tmp_path / "store"))
    saved = build_fleet(store, 5, 4, cells=CELLS, seed=7)
    late = store.save(device_set(CELLS, 4242), lineage="car-late", meta={"device_time": device_time(0, 3)})
    Catalog(store).record([late])
    saved["car-late"] = [(device_time(0, 3), 4242)]
    return store, saved


def expected_at(saved: dict, when: str) -> tuple[np.ndarray, list[str]]:
    """What the devices held at `when`, joined in name order, from the seeds they were saved with."""
    held = {}
    for name, versions in sorted(saved.items()):
        before = [seed for t, seed in versions if to_time(t) <= to_time(when)]
        if before:
            held[name] = device_set(CELLS, before[-1]).data
    return np.concatenate(list(held.values())), list(held)


def test_fleet_as_of_equals_each_devices_version_at_that_time(prefect_harness, fleet):
    store, saved = fleet
    when = device_time(2, 1)  # devices 0-2 hold version 1, devices 3-4 still version 0; car-late nothing
    report = fleet_as_of(FleetAsOfParameters(store=store.url, time=when, batches=2))
    data, names = expected_at(saved, when)
    assert [v["lineage"] for v in report["versions"]] == names and report["absent"] == ["car-late"]
    result = Store.open(store.url).recover(report["set"])
    assert result.data.tobytes() == data.tobytes()
    meta = store.manifest(report["set"]).meta
    assert meta["fleet_as_of"] == to_time(when) and store.manifest(report["set"]).approach == "baseline"
    assert meta["versions"] == [[v["lineage"], v["id"]] for v in report["versions"]]
    assert [Catalog(store).at(n, when).id for n in names] == [v["id"] for v in report["versions"]]

    report = fleet_as_of(FleetAsOfParameters(store=store.url, time=device_time(4, 2), base=report["set"],
                                             lineage="fleet-as-of", match="car-000*", batches=3))
    data, _ = expected_at({n: v for n, v in saved.items() if n != "car-late"}, device_time(4, 2))
    assert Store.open(store.url).recover("fleet-as-of").data.tobytes() == data.tobytes()
    assert store.manifest(report["set"]).approach == "update" and report["absent"] == []
    with pytest.raises(NotFoundError, match="give a later time"):
        fleet_as_of(FleetAsOfParameters(store=store.url, time="2020-01-01T00:00:00Z"))
