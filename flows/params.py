"""Flow parameters as pydantic models: the Prefect UI renders each as a form."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

import mmstore.approaches  # noqa: F401  (registers the built-in approaches)
from mmstore.groups import MAX_GROUP_MODELS
from mmstore.plugins import APPROACHES, EXECUTORS
from mmstore.retention import RetentionPolicy

__all__ = ["FleetUpdateParameters", "RecoverParameters", "ScenarioParameters", "MaintenanceParameters", "Approach", "ExecutorName"]

# The UI's choices are the registries' names: a plug-in that registers one appears in the form.
Approach = Literal[APPROACHES.names()]  # type: ignore[valid-type]
ExecutorName = Literal[EXECUTORS.names()]  # type: ignore[valid-type]


class FleetUpdateParameters(BaseModel):
    """One update cycle (use case U3) of a fleet's lineage."""

    store: str = Field("./mmstore-data/update", description="Store URL: a directory, file://, or s3://bucket/prefix")
    lineage: str = Field("fleet-0", description="The fleet's lineage (fleet-<seed>): its newest set is the base")
    approach: Approach = Field("update", description="How the new set is stored")
    datasets: str | None = Field(None, description="Where the cells' new data go (default: the store URL + '-datasets')")
    full_fraction: float = Field(0.05, ge=0, le=1, description="Share of models retrained fully")
    partial_fraction: float = Field(0.05, ge=0, le=1, description="Share of models retrained in their last layer")
    workers: int = Field(2, ge=0, description="Training processes per batch (0: train inside the task's worker)")
    batches: int = Field(8, ge=1, description="How many batched training tasks a cycle is split into")
    group_size: int = Field(
        128, ge=0, le=MAX_GROUP_MODELS,
        description="Models of one recipe trained together in one call (0: one model per call, the per-model trainer)",
    )


class RecoverParameters(BaseModel):
    """Recover a set (use case U4): rebuild its chain, recover, verify and export it."""

    store: str = Field("./mmstore-data/update", description="Store URL")
    set: str = Field("fleet-0", description="Set id, unique id prefix, or lineage name")
    models: list[int] | None = Field(None, description="Model indices to recover (default: all)")
    executor: ExecutorName = Field(
        "auto", description="Where provenance replays run (auto: here when this environment is compatible with the "
        "recorded one, else in the pinned image the set was trained in)"
    )
    output: str = Field("./recovered", description="Directory for one .safetensors file per model")


class ScenarioParameters(BaseModel):
    """The paper's sequence: U1, then `cycles` times U3, for one approach."""

    store: str = Field("./mmstore-data/update", description="Store URL")
    cells: int = Field(500, ge=1, description="Fleet size: one model per battery cell")
    cycles: int = Field(3, ge=0, description="Update cycles after the initial set")
    approach: Approach = "update"
    seed: int = Field(0, description="Fleet seed: same seed, same models")
    arch: Literal["ffnn48", "ffnn69"] = "ffnn48"
    datasets: str | None = Field(None, description="Dataset location (default: the store URL + '-datasets')")
    lineage: str | None = Field(None, description="Lineage name (default: fleet-<seed>)")


class MaintenanceParameters(BaseModel):
    """Weekly upkeep of a store: retention per lineage, garbage collection and a sampled verification."""

    store: str = Field("./mmstore-data/update", description="Store URL")
    grace_hours: float = Field(24.0, ge=0, description="Only garbage older than this is removed (hours)")
    verify_sample: int = Field(10, ge=0, description="Sets verified byte for byte besides every lineage's head")
    seed: int = Field(0, description="Seed of the sample")
    dry_run: bool = Field(False, description="Report what pruning and garbage collection would free, change nothing")
    lineages: str = Field("*", description="Lineages the retention policy applies to (a glob, e.g. fleet-*)")
    retention: RetentionPolicy = Field(
        default_factory=RetentionPolicy, description="Sets of each lineage to keep (the head always; empty: keep everything)"
    )


def inbox_location(store: str, inbox: str | None) -> str:
    """Where devices leave their bundles: beside the store unless given."""
    return inbox or store.rstrip("/") + "-inbox"


class IngestParameters(BaseModel):
    """Bring the bundles devices pushed into the store: each a new version of its device's lineage."""

    store: str = Field("./mmstore-data/fleet", description="Store URL: a directory, file://, or s3://bucket/prefix")
    inbox: str | None = Field(None, description="Inbox URL the devices push to (default: the store URL + '-inbox')")
    batches: int = Field(8, ge=1, le=64, description="How many ingest tasks the waiting devices are split into")
    grace_hours: float = Field(24.0, ge=0, description="Unfinished uploads older than this are removed (hours)")
    quarantine_days: float = Field(30.0, ge=0, description="Rejected bundles and their reasons are kept this long (days)")


class FleetSimParameters(BaseModel):
    """A simulated fleet: devices retrain their drifted cells every day and push bundles; ingest runs meanwhile."""

    store: str = Field("./mmstore-data/fleet", description="Store URL: a directory, file://, or s3://bucket/prefix")
    inbox: str | None = Field(None, description="Inbox URL (default: the store URL + '-inbox')")
    devices: int = Field(4, ge=1, le=10_000, description="How many devices (one lineage each)")
    cells: int = Field(20, ge=1, le=10_000, description="Cells (models) per device")
    days: int = Field(3, ge=1, le=3650, description="Simulated days; every device retrains and pushes once a day")
    seed: int = Field(0, description="Fleet seed: same seed, same models and data")
    arch: Literal["ffnn48", "ffnn69"] = "ffnn48"
    full_fraction: float = Field(0.05, ge=0, le=1, description="Share of a device's models retrained fully per day")
    partial_fraction: float = Field(0.05, ge=0, le=1, description="Share retrained in their last layer per day")
    processes: int = Field(2, ge=1, le=64, description="Device processes the devices are spread over")
    batches: int = Field(8, ge=1, le=64, description="Ingest tasks per ingest run")
    ingest_every: float = Field(7.5, gt=0, description="Wall seconds between ingest runs: one simulated hour, a simulated "
                                "day taking about 3 minutes of the devices' training on this class of machine")


__all__ += ["FleetAsOfParameters"]


class FleetAsOfParameters(BaseModel):
    """Recover the fleet as of a time: every matching device's version then, saved as one set."""

    store: str = Field("./mmstore-data/fleet", description="Store URL: a directory, file://, or s3://bucket/prefix")
    time: str = Field(..., description="ISO-8601 time, e.g. 2026-11-25T14:00:00Z (without a zone: UTC)")
    match: str = Field("*", description="Glob of the device lineages, e.g. car-*")
    base: str | None = Field(
        None, description="Save as an update against this set (id, prefix or lineage), e.g. the deployed fleet set "
        "or the previous fleet-as-of set; it must hold as many models. Empty: a baseline snapshot",
    )
    lineage: str | None = Field(None, description="Lineage to move to the new set (empty: the set stands alone)")
    batches: int = Field(4, ge=1, le=64, description="Recovery tasks the devices are split into")
