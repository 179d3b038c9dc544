"""The fleet-ingest flow and the fleet simulation's command-line contract."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from flows.ingest import fleet_ingest
from flows.params import IngestParameters
from mmstore import Catalog, Settings, Store
from mmstore.device import pending_key
from tests.conftest import make_s3_bucket
from tests.test_devices import Fleet, changed

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
REPORT_KEYS = {"devices", "days", "bundles", "ingested", "quarantined", "bytes_uploaded", "bytes_full_upload",
               "ingest_seconds", "versions_verified", "versions_total", "lineages"}


def test_ingest_flow_commits_quarantines_indexes_and_sweeps(prefect_harness, tmp_path):
    fleet = Fleet(str(tmp_path / "store"), str(tmp_path / "inbox"))
    for name in ("car-0", "car-2"):
        device = fleet.device(name)
        device.push(changed(device.base, 0, seed=len(name)))
    fleet.inbox.put(pending_key("car-1", "0" * 64), b"not a bundle", exclusive=True)
    unfinished = tmp_path / "inbox" / "pending" / "car-1" / "upload.tmp-1"
    unfinished.write_bytes(b"half")
    old = time.time() - 3 * 86400
    os.utime(unfinished, (old, old))
    report = fleet_ingest(IngestParameters(store=fleet.store_url, inbox=fleet.inbox_url, batches=2, grace_hours=1))
    assert report["counts"] == {"committed": 2, "quarantined": 1}
    assert "digest" in report["quarantined"][0]["reason"] and report["swept"]["unfinished"] == 1
    heads = Catalog(Store.open(fleet.store_url, Settings(trusted_modules=("tests",)))).heads()
    assert heads["car-0"].head == fleet.versions("car-0")[0] and heads["car-2"].versions == 2
    expired = fleet_ingest(IngestParameters(store=fleet.store_url, inbox=fleet.inbox_url, quarantine_days=0))
    assert expired["counts"] == {} and expired["swept"]["quarantined"] == 2  # the bundle and its reason


def test_fleet_simulation_contract_on_s3(s3_endpoint, s3_options, tmp_path):
    bucket = make_s3_bucket(s3_options)
    env = {**os.environ, "AWS_ENDPOINT_URL": s3_endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    plot = tmp_path / "sim.png"
    run = subprocess.run([sys.executable, "-m", "flows.fleet_sim", "--store", f"s3://{bucket}/store", "--devices", "3",
                          "--cells", "20", "--days", "2", "--seed", "4", "--json", "--plot", str(plot)],
                         capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert REPORT_KEYS <= set(report)
    assert report["bundles"] == report["ingested"] == report["versions_total"] == report["versions_verified"] == 6
    assert report["quarantined"] == 0 and report["lineages"] == ["device-0000", "device-0001", "device-0002"]
    assert 0 < report["bytes_uploaded"] < report["bytes_full_upload"] and plot.stat().st_size > 10_000
    assert 0.5 < report["uploaded_per_stored"] < 1.2


def test_fleet_simulation_contract_on_a_local_directory_with_its_own_inbox(tmp_path):
    store, inbox = tmp_path / "store", tmp_path / "elsewhere" / "inbox"
    env = {k: v for k, v in os.environ.items() if k != "AWS_ENDPOINT_URL"}
    run = subprocess.run([sys.executable, "-m", "flows.fleet_sim", "--store", str(store), "--inbox", str(inbox), "--devices", "2",
                          "--cells", "20", "--days", "2", "--seed", "5", "--json"],
                         capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert REPORT_KEYS <= set(report) and report["lineages"] == ["device-0000", "device-0001"]
    assert report["bundles"] == report["ingested"] == report["versions_verified"] == report["versions_total"] == 4
    assert report["quarantined"] == 0 and 0 < report["bytes_uploaded"] < report["bytes_full_upload"]
    assert inbox.is_dir() and not (tmp_path / "store-inbox").exists()  # the inbox given, not the one beside the store
    assert {"device-0000", "device-0001"} <= set(Store.open(str(store), Settings()).lineages())
