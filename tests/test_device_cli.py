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
from tests.test_provenance_bundles import SETTINGS, device_fleet, retrain

ENV = {**os.environ, "MMSTORE_TRUSTED_MODULES": "tests"}


def mmstore(store: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mmstore.cli", "--store", store, *args], capture_output=True, text=True,
                          env=ENV, timeout=120, cwd=os.path.dirname(os.path.dirname(__file__)))


def device_day(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "workloads.device_day", *args], capture_output=True, text=True,
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


def test_a_device_pushes_how_it_retrained_and_ingest_replays_it(tmp_path):
    fleet = device_fleet(tmp_path)
    work = tmp_path / "car"
    assert mmstore(fleet.store_url, "device", "pull", "car-0", str(work)).returncode == 0
    models, training = retrain(fleet.device("car-0").base, {1: "full", 3: "partial"}, seed=6)
    for cell in (1, 3):
        save_file(models.state_dict(cell), work / f"model-{cell:05d}.safetensors")
        (work / f"cell-{cell}.npz").write_bytes(training.changes[cell][1])
    (work / "fingerprint.json").write_bytes(training.environment)
    description = {"trainer": training.trainer, "recipes": training.recipes, "environment": "fingerprint.json",
                   "changes": {str(cell): [training.changes[cell][0], f"cell-{cell}.npz"] for cell in (1, 3)},
                   "seconds": {"full": 0.2, "partial": 0.1}}
    (work / "training.json").write_text(json.dumps(description))
    dry = json.loads(mmstore(fleet.store_url, "device", "push", "car-0", str(work), "--training", str(work / "training.json"),
                             "--dry-run", "--json").stdout)
    assert [o["name"] for o in dry["choice"]["options"]] == ["delta", "full", "provenance"]
    sent = mmstore(fleet.store_url, "device", "push", "car-0", str(work), "--kind", "provenance", "--training",
                   str(work / "training.json"), "--inbox", fleet.inbox_url, "--json")
    assert json.loads(sent.stdout)["kind"] == "provenance", sent.stderr
    outcome, = fleet.ingest()
    assert outcome.status == "committed", outcome
    store = Store.open(fleet.store_url, SETTINGS)
    assert store.manifest(outcome.set_id).approach == "provenance" and store.recover("car-0").equals(models)


def test_a_training_description_that_is_wrong_is_one_line_that_says_what(tmp_path):
    fleet = device_fleet(tmp_path)
    work = tmp_path / "car"
    assert mmstore(fleet.store_url, "device", "pull", "car-1", str(work)).returncode == 0
    (work / "training.json").write_text(json.dumps({"trainer": "tests.provenance_fleet:train", "recipes": {},
                                                     "changes": {"0": ["full", "missing.npz"]}, "environment": "fp.json"}))
    missing = mmstore(fleet.store_url, "device", "push", "car-1", str(work), "--training", str(work / "training.json"))
    assert missing.returncode == 1 and "cannot read" in missing.stderr and missing.stderr.count("\n") == 1
    (work / "training.json").write_text(json.dumps({"trainer": "x:y", "changes": {}, "environment": "fp.json"}))
    invalid = mmstore(fleet.store_url, "device", "push", "car-1", str(work), "--training", str(work / "training.json"))
    assert invalid.returncode == 1 and "is not a training description: recipes" in invalid.stderr
    assert invalid.stderr.count("\n") == 1
    (work / "cell.npz").write_bytes(b"data")
    (work / "training.json").write_text(json.dumps({"trainer": "x:y", "recipes": {}, "changes": {"0": ["full", "cell.npz"]},
                                                     "environment": "cell.npz", "held": {"cel.npz": "s3://b/cell.npz"}}))
    unused = mmstore(fleet.store_url, "device", "push", "car-1", str(work), "--training", str(work / "training.json"))
    assert unused.returncode == 1 and "holds 'cel.npz', which no retrained model used" in unused.stderr


def test_a_device_pulls_retrains_with_the_battery_workload_and_pushes(tmp_path):
    fleet = device_fleet(tmp_path)
    work = tmp_path / "car"
    assert mmstore(fleet.store_url, "device", "pull", "car-1", str(work)).returncode == 0
    before = {p.name: p.read_bytes() for p in work.glob("model-*.safetensors")}
    day = device_day(str(work), "--first-cell", "4", "--day", "2", "--seed", "0", "--full", "0.25", "--partial", "0.25")
    retrained = json.loads(day.stdout)
    assert len(retrained["full"]) == len(retrained["partial"]) == 1 and retrained["data_bytes"] > 0, day.stderr
    after = {p.name: p.read_bytes() for p in work.glob("model-*.safetensors")}
    assert sorted(n for n in after if after[n] != before[n]) == sorted(
        f"model-{c:05d}.safetensors" for c in retrained["full"] + retrained["partial"])
    sent = json.loads(mmstore(fleet.store_url, "device", "push", "car-1", str(work), "--inbox", fleet.inbox_url, "--json").stdout)
    assert sent["kind"] == "delta" and sent["bytes"] < sent["full_bytes"] / 2
    outcome, = fleet.ingest()
    recovered = Store.open(fleet.store_url, SETTINGS).recover("car-1")
    assert outcome.status == "committed"
    for cell in range(len(recovered)):
        pushed = load_file(work / f"model-{cell:05d}.safetensors")
        assert all(tensor.equal(pushed[name]) for name, tensor in recovered.state_dict(cell).items())
    missing = device_day(str(tmp_path / "none"), "--first-cell", "0", "--day", "1")
    assert missing.returncode == 1 and "run `mmstore device pull" in missing.stderr and missing.stderr.count("\n") == 1
