"""The `mmstore device` and `mmstore explain` commands, run as a device and an operator would."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from safetensors.torch import load_file, save_file

from mmstore import Settings, Store
from mmstore.backend import open_backend
from mmstore.ingest import ingest, pending
from tests.forge import small_set

ENV = {**os.environ, "MMSTORE_TRUSTED_MODULES": "tests"}


def mmstore(store: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mmstore.cli", "--store", store, *args], capture_output=True, text=True,
                          env=ENV, timeout=120, cwd=os.path.dirname(os.path.dirname(__file__)))


def test_pull_retrain_push_ingest_and_explain(tmp_path):
    url = str(tmp_path / "store")
    store = Store.open(url, Settings(trusted_modules=("tests",)))
    fleet = small_set(8, seed=3)
    store.save(fleet, "update", lineage="fleet")
    deployed = mmstore(url, "device", "deploy", "fleet", "--count", "2", "--models", "4", "--prefix", "car-", "--json")
    assert sorted(json.loads(deployed.stdout)["devices"]) == ["car-0000", "car-0001"], deployed.stderr
    work = tmp_path / "car"
    assert mmstore(url, "device", "pull", "car-0001", str(work)).returncode == 0
    path = work / "model-00002.safetensors"
    tensors = load_file(path)
    tensors["net.2.bias"] = tensors["net.2.bias"] + 1
    save_file(tensors, path)
    dry = mmstore(url, "device", "push", "car-0001", str(work), "--dry-run")
    assert "would send a delta bundle" in dry.stdout and "cheapest" in dry.stdout
    assert pending(open_backend(url + "-inbox")) == {}
    sent = json.loads(mmstore(url, "device", "push", "car-0001", str(work), "--json").stdout)
    assert sent["kind"] == "delta" and sent["bytes"] < sent["full_bytes"]
    inbox = open_backend(url + "-inbox")
    assert [o.status for o in ingest(Store.open(url, Settings(trusted_modules=("tests",))), inbox, pending(inbox))] == ["committed"]
    recovered = Store.open(url, Settings(trusted_modules=("tests",))).recover("car-0001")
    assert recovered.state_dict(2)["net.2.bias"].equal(tensors["net.2.bias"])
    assert recovered.select([0, 1, 3]).equals(fleet.select([4, 5, 7]))
    explained = mmstore(url, "explain", "car-0001")
    assert "stored as update" in explained.stdout and "* update" in explained.stdout and "snapshot policy" in explained.stdout


def test_device_errors_are_one_line(tmp_path):
    url = str(tmp_path / "store")
    Store.open(url, Settings(trusted_modules=("tests",))).save(small_set(4, seed=1), "update", lineage="fleet")
    deploy = mmstore(url, "device", "deploy", "fleet", "--count", "2", "--models", "4")
    assert deploy.returncode == 1 and deploy.stderr.count("\n") == 1 and "need 8 models" in deploy.stderr
    push = mmstore(url, "device", "push", "fleet", str(tmp_path / "nothing"))
    assert push.returncode == 1 and "run `mmstore device pull fleet" in push.stderr and push.stderr.count("\n") == 1
