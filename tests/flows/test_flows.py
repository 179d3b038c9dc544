"""The flows, run against one temporary Prefect server: same seed, same models, whatever the approach."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from flows.fleet_update import fleet_update
from flows.params import FleetUpdateParameters, RecoverParameters, ScenarioParameters
from flows.recover import recover_model_set
from mmstore import Store
from tests.flows.fleets import APPROACHES, CELLS, CYCLES, SEED, initial_store

pytestmark = pytest.mark.usefixtures("prefect_harness")


def test_every_approach_ends_in_the_same_models(scenarios):
    finals = {}
    for approach, run in scenarios.items():
        store, sets = Store.open(run["store"]), run["out"]["sets"]
        assert len(sets) == CYCLES + 1
        assert [info.id for info in store.log(sets[-1])] == sets[::-1], "sets are listed oldest first"
        finals[approach] = store.recover(sets[-1])
        assert not finals[approach].equals(store.recover(sets[0])), "the update cycles retrained some models"
    for approach in APPROACHES[1:]:
        assert finals[approach].equals(finals["baseline"]), f"{approach} differs from baseline"


def test_scenario_command_prints_the_sets_oldest_first(tmp_path, capsys):
    from flows.fleet_scenario import main

    store = tmp_path / "cli"
    main(["--store", str(store), "--cells", "8", "--cycles", "1", "--approach", "update", "--seed", str(SEED), "--json"])
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["lineage"] == f"fleet-{SEED}"
    assert len(out["sets"]) == len(out["bytes"]) == 2
    assert Store.open(str(store)).manifest(out["sets"][1]).base == out["sets"][0]


def test_scenario_takes_its_parameters_as_json_as_a_deployment_passes_them(tmp_path):
    from flows.fleet_scenario import fleet_scenario

    params = ScenarioParameters(store=str(tmp_path / "store"), cells=6, cycles=0, seed=SEED).model_dump(mode="json")
    out = fleet_scenario(params)
    assert Store.open(str(tmp_path / "store")).resolve(out["lineage"]) == out["sets"][0]


def test_recover_flow_exports_the_verified_set(scenarios, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    run = scenarios["update"]
    output = tmp_path / "recovered"
    report = recover_model_set(RecoverParameters(store=run["store"], set=run["out"]["lineage"], output=str(output)))
    newest = run["out"]["sets"][-1]
    assert report["set"] == newest and report["verified"] and report["models"] == report["files"] == CELLS
    assert report["chain"] == run["out"]["sets"][::-1]
    expected = Store.open(run["store"]).recover(newest)
    assert len(list(output.iterdir())) == CELLS
    for i in range(CELLS):
        exported = load_file(output / f"model-{i:05d}.safetensors")
        assert exported.keys() == expected.state_dict(i).keys()
        assert all(torch.equal(exported[k], v) for k, v in expected.state_dict(i).items())
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["recovery"])))
    assert any(newest[:12] in (a.data or "") and "passed" in a.data for a in artifacts)


def test_fleet_update_on_dask_trains_the_same_models(tmp_path):
    from prefect_dask import DaskTaskRunner

    _, base = initial_store(str(tmp_path / "local"))
    assert initial_store(str(tmp_path / "dask"))[1].equals(base)
    # JSON parameters, as the scheduled deployment passes them.
    local = fleet_update(FleetUpdateParameters(store=str(tmp_path / "local")).model_dump(mode="json"))
    # workers=0: each batch trains inline on its Dask worker instead of starting worker processes there.
    on_dask = fleet_update.with_options(task_runner=DaskTaskRunner(
        cluster_kwargs={"n_workers": 2, "processes": True, "threads_per_worker": 1, "dashboard_address": None},
    ))(FleetUpdateParameters(store=str(tmp_path / "dask"), workers=0))
    assert on_dask["model_set"].equals(local["model_set"]), "same base, same seed: the same models"
    recovered = Store.open(str(tmp_path / "dask")).recover("fleet-0")
    assert recovered.equals(Store.open(str(tmp_path / "local")).recover("fleet-0"))
    assert 0 < int((recovered.data != base.data).any(axis=1).sum()) <= CELLS // 5


@pytest.mark.parametrize("group_size", [0, 3])
def test_fleet_update_trains_in_groups_or_per_model_and_replays_bit_exactly(tmp_path, group_size):
    """A cycle of mixed full and partial retrains, grouped (groups of one recipe) or one model per call (no groups)."""
    from mmstore.provenance_records import decode_changes

    path = str(tmp_path / "store")
    initial_store(path)
    out = fleet_update(FleetUpdateParameters(store=path, approach="provenance", group_size=group_size,
                                             full_fraction=0.1, partial_fraction=0.1))
    store = Store.open(path)
    manifest = store.manifest(out["id"])
    changes = decode_changes(store.blobs.get(manifest.blobs["changes"]).tobytes(), out["id"], 1 << 20)
    recipe_of = {entry.model: entry.recipe for entry in changes.models}
    assert set(recipe_of.values()) == {"full", "partial"}
    if group_size:
        assert sorted(changes.groups.models()) == sorted(recipe_of)
        assert all(2 <= len(g) <= group_size and len({recipe_of[m] for m in g}) == 1 for g in changes.groups.groups)
    else:
        assert changes.groups is None
    assert Store.open(path).recover(out["id"], executor="local").equals(out["model_set"])
