"""The fleet recovered as of T equals what the devices held at T, bit for bit, through pushes, ingest and the catalog."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from flows.fleet_as_of import fleet_as_of
from flows.params import FleetAsOfParameters
from mmstore import ModelSet, NotFoundError, Store
from mmstore.catalog import Catalog
from mmstore.digest import digest_bytes
from tests.conftest import TEST_SETTINGS, make_s3_bucket
from tests.forge import small_set
from tests.test_devices import WHEN, Fleet, changed

DEVICES = ("car-0", "car-1", "car-2", "car-3")
MODELS_PER_DEVICE = 3
DAYS = 4
SEED = 20260101
DEPLOYED = datetime.fromisoformat(WHEN)
# A realistic fleet is ragged: devices miss days, one pushes twice before an ingest, one retrains
# everything (so the cost model sends a full bundle), one reports its clock in another zone.
SKIPS = {("car-3", 0), ("car-1", 1), ("car-3", 1), ("car-0", 3)}
TWICE = {("car-2", 2)}
EVERYTHING = {("car-1", 3)}
ZONES = {"car-2": timezone(timedelta(hours=5, minutes=30))}


def push_time(device: str, day: int, again: bool = False) -> datetime:
    """When `device` pushes on `day`: devices one hour apart, so a time can fall between them, in the device's own zone."""
    moment = DEPLOYED + timedelta(days=day + 1, hours=8 + DEVICES.index(device) + (10 if again else 0))
    return moment.astimezone(ZONES.get(device, timezone.utc))


def retrained(models: ModelSet, rng: np.random.Generator, everything: bool) -> ModelSet:
    """A device's retraining: some tensors of one model, or every tensor of every model."""
    tensors = len(models.layout.tensors)
    if everything:
        for model in range(len(models)):
            models = changed(models, model, int(rng.integers(2**31)), tensors=range(tensors))
        return models
    which = sorted(rng.choice(tensors, size=int(rng.integers(1, tensors + 1)), replace=False).tolist())
    return changed(models, int(rng.integers(len(models))), int(rng.integers(2**31)), tensors=which)


def run_fleet(fleet: Fleet) -> tuple[dict[str, list[tuple[datetime, bytes]]], set[str]]:
    """Push and ingest DAYS of retraining: per device every (time, rows) it held from the deployment on; the bundle kinds sent."""
    rng = np.random.default_rng(SEED)
    devices = {name: fleet.device(name) for name in DEVICES}
    held = {name: [(DEPLOYED, device.base.data.tobytes())] for name, device in devices.items()}
    kinds = set()
    for day in range(DAYS):
        pushed = 0
        for name, device in devices.items():
            if (name, day) in SKIPS:
                continue
            for again in (False, True) if (name, day) in TWICE else (False,):
                models = retrained(device.base, rng, (name, day) in EVERYTHING)
                when = push_time(name, day, again)
                kinds.add(device.push(models, when.isoformat()).kind)
                held[name].append((when, models.data.tobytes()))
                pushed += 1
        outcomes = fleet.ingest()
        assert [o.status for o in outcomes] == ["committed"] * pushed
        # The library ingest leaves indexing to its caller, as the ingest flow does after each run. The first
        # record finds no catalog and builds it from the refs, so devices that never pushed are catalogued too.
        Catalog(fleet.open()).record([o.set_id for o in outcomes])
    return held, kinds


def held_at(held: dict[str, list[tuple[datetime, bytes]]], when: datetime) -> list[bytes]:
    """Each device's rows at `when`, in device order: its newest version from at or before then."""
    return [[rows for t, rows in versions if t <= when][-1] for versions in held.values()]


@pytest.fixture(params=["local", "s3"])
def deployed_fleet(request, tmp_path, monkeypatch) -> tuple[Fleet, dict]:
    """A fleet of DEVICES x MODELS_PER_DEVICE deployed on a local or an S3 store, and the store's storage options."""
    deployed = small_set(len(DEVICES) * MODELS_PER_DEVICE, seed=SEED % 1000)
    if request.param == "local":
        return Fleet(str(tmp_path / "store"), str(tmp_path / "inbox"), fleet=deployed, devices=DEVICES), {}
    options = request.getfixturevalue("s3_options")
    # The flow opens the store from its URL alone and, as a deployed worker does, finds the endpoint in the environment.
    monkeypatch.setenv("AWS_ENDPOINT_URL", options["client_kwargs"]["endpoint_url"])
    bucket = make_s3_bucket(options)
    return Fleet(f"s3://{bucket}/store", f"s3://{bucket}/inbox", fleet=deployed, devices=DEVICES, **options), options


def test_the_fleet_recovered_as_of_any_time_is_what_the_devices_held_then_bit_for_bit(prefect_harness, deployed_fleet):
    fleet, options = deployed_fleet
    held, kinds = run_fleet(fleet)
    assert kinds == {"delta", "full"}
    day = timedelta(days=1)
    times = {
        "at the deployment": DEPLOYED,
        "before any push": DEPLOYED + day,
        "between two devices' pushes of the first day": push_time("car-1", 0) + timedelta(minutes=30),
        "a second before car-2's first push of day 2, in car-2's zone": push_time("car-2", 2) - timedelta(seconds=1),
        "at the very instant of that push": push_time("car-2", 2),
        "between car-2's two pushes of day 2, after car-3's": push_time("car-3", 2) + timedelta(minutes=30),
        "a second before a full retrain": push_time("car-1", 3) - timedelta(seconds=1),
        "after the last push": DEPLOYED + (DAYS + 2) * day,
    }
    seen = set()
    for label, when in times.items():
        report = fleet_as_of(FleetAsOfParameters(store=fleet.store_url, time=when.isoformat(), match="car-*", batches=3))
        assert [v["lineage"] for v in report["versions"]] == list(DEVICES) and report["absent"] == [], label
        recovered = Store.open(fleet.store_url, TEST_SETTINGS, **options).recover(report["set"])
        expected = held_at(held, when)
        blocks = np.split(recovered.data, len(DEVICES))
        assert [digest_bytes(block) for block in blocks] == [digest_bytes(rows) for rows in expected], label
        assert recovered.data.tobytes() == b"".join(expected), label
        seen.add(digest_bytes(recovered.data))
    assert len(seen) == len(times) - 1  # only the deployment and the morning before any push coincide
    with pytest.raises(NotFoundError, match="give a later time"):
        fleet_as_of(FleetAsOfParameters(store=fleet.store_url, time=(DEPLOYED - timedelta(seconds=1)).isoformat(),
                                        match="car-*"))
