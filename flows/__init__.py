"""Prefect flows, one per user action: fleet scenario, fleet update, save, recover."""

import os
from contextlib import AbstractContextManager

# Offline by default: no telemetry, and time for the embedded server to start on a small machine.
for _name, _value in {
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
}.items():
    os.environ.setdefault(_name, _value)


def local_run_settings() -> AbstractContextManager:
    """Settings for flows run from the command line: no heartbeat thread (each run would wait ~1 s for it)."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    return temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None})
