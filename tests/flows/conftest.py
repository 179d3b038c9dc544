"""Fixtures for the flow tests: one Prefect test server per session, small seeded fleets."""

from __future__ import annotations

import os

# Offline and patient: no telemetry, and time for the embedded server to start on a busy 2-core machine.
os.environ.update({
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
})

import pytest  # noqa: E402

from tests.flows.fleets import APPROACHES, CELLS, CYCLES, SEED  # noqa: E402


@pytest.fixture(scope="session")
def prefect_harness():
    """One temporary Prefect server and database for every flow test of the session."""
    from prefect.testing.utilities import prefect_test_harness

    from flows import local_run_settings

    with prefect_test_harness(server_startup_timeout=90), local_run_settings():
        yield


@pytest.fixture(scope="session")
def scenarios(prefect_harness, tmp_path_factory) -> dict[str, dict]:
    """The same seeded fleet scenario run once per approach: approach -> {"store", "out"}."""
    from flows.fleet_scenario import fleet_scenario
    from flows.params import ScenarioParameters

    root = tmp_path_factory.mktemp("scenarios")
    runs = {}
    for approach in APPROACHES:
        store = str(root / approach)
        params = ScenarioParameters(store=store, cells=CELLS, cycles=CYCLES, approach=approach, seed=SEED,
                                    datasets=str(root / f"{approach}-datasets"))
        runs[approach] = {"store": store, "out": fleet_scenario(params)}
    return runs

