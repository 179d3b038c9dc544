"""The device side of a fleet: deploy one lineage per device, pull its models, push what changed.

A device needs only mmstore and torch: it reads its lineage from the store (a partial read of the
deployed fleet set at first), retrains on its own data, and writes one bundle into its inbox
prefix. What the bundle carries is the cost model's choice between the changed tensors and every
tensor; the central ingest (`mmstore.ingest`) makes it a version of the device's lineage.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone

from .backend import Backend
from .bundle import BUNDLE_SUFFIX, BundleHeader, encode_bundle
from .bundle_provenance import DatasetClaim, DeviceRecord, encode_provenance_bundle
from .costmodel import Choice, Option, choose, delta_seconds, replay_seconds, snapshot_seconds
from .device_register import enrol
from .digest import digest_bytes
from .errors import MMStoreError
from .modelset import ModelSet
from .store import Store

__all__ = ["deploy", "enrol_deployed", "Device", "Push", "Training", "pending_key", "DELTA_CODEC", "FULL_CODEC"]

DELTA_CODEC = "xor-group-zstd"
FULL_CODEC = "group-zstd"


def pending_key(device: str, digest: str) -> str:
    """Where a device's bundle waits in the inbox."""
    return f"pending/{device}/{digest}{BUNDLE_SUFFIX}"


def deploy(store: Store, fleet_set: str, devices: Sequence[str], models_per_device: int, device_time: str | None = None) -> dict[str, str]:
    """Start one lineage per device, each a slice of `fleet_set` (device i holds its models i*m ... i*m+m-1).

    Each lineage is marked as a device's in the device register: only such lineages take bundles.
    """
    fleet_id = store.resolve(fleet_set)
    fleet = store.recover(fleet_id)
    if len(devices) * models_per_device > len(fleet):
        raise MMStoreError(f"{len(devices)} devices of {models_per_device} models need {len(devices) * models_per_device} "
                           f"models; set {fleet_id[:12]} has {len(fleet)}")
    when = device_time or datetime.now(timezone.utc).isoformat(timespec="milliseconds")
    heads = {}
    for i, name in enumerate(devices):
        start = i * models_per_device
        part = fleet.select(range(start, start + models_per_device))
        enrol(store.backend, name, fleet_id, start)
        heads[name] = store.save(part, "update", base=fleet_id, lineage=name, slice_start=start,
                                 meta={"device_time": when, "fleet": fleet_id, "first_model": start})
    return heads


def enrol_deployed(store: Store, devices: Sequence[str]) -> dict[str, str]:
    """Mark lineages an older mmstore deployed (they start as a slice of a fleet set) as devices'; their fleet sets.

    Deployment marks its lineages itself; this brings a store deployed before the register existed up to date.
    """
    fleets = {}
    for name in devices:
        root = store.manifest(store.resolve(name))
        while root.base and root.lineage == name and store.manifest(root.base).lineage == name:
            root = store.manifest(root.base)
        fleet, first = root.meta.get("fleet"), root.meta.get("first_model")
        if getattr(root.data, "kind", None) != "slice" or root.base != fleet or not isinstance(first, int):
            raise MMStoreError(f"lineage {name!r} does not start as a slice of a deployed fleet set; "
                               "deploy devices with `mmstore device deploy`")
        enrol(store.backend, name, fleet, first)
        fleets[name] = fleet
    return fleets


@dataclass(frozen=True)
class Training:
    """How a device retrained its models: the trainer, its named recipes, per model its recipe and data, the environment.

    `seconds` is what training one model took per recipe, as the device measured it: the cost model's
    estimate of replaying them. `held` maps a dataset's digest to the URI where the store can already
    read it (below its dataset roots): such data is named in the bundle, not sent.
    """

    trainer: str
    recipes: dict[str, dict]
    changes: dict[int, tuple[str, bytes]]
    environment: str
    seconds: Mapping[str, float] = field(default_factory=dict)
    held: Mapping[str, str] = field(default_factory=dict)

    def record(self) -> tuple[DeviceRecord, dict[str, bytes]]:
        """The record a provenance bundle carries and the datasets it sends (those the store does not hold), by digest."""
        digests = {m: digest_bytes(data) for m, (_, data) in self.changes.items()}
        claims = {m: (recipe, DatasetClaim(digest=digests[m], size=len(data), uri=self.held.get(digests[m])))
                  for m, (recipe, data) in self.changes.items()}
        record = DeviceRecord(trainer=self.trainer, recipes=self.recipes, changes=claims, environment=self.environment)
        return record, {digests[m]: data for m, (_, data) in self.changes.items() if digests[m] not in self.held}


@dataclass(frozen=True)
class Push:
    """What one push sent: the inbox key, the bundle's bytes, the bytes of sending every tensor, the choice."""

    key: str
    kind: str
    nbytes: int
    full_nbytes: int
    choice: Choice


class Device:
    """One device: its lineage in the store (read only) and its inbox (write only)."""

    def __init__(self, name: str, store: Store, inbox: Backend | None, base: ModelSet | None = None,
                 base_set: str | None = None, depth: int = 0):
        self.name, self.store, self.inbox = name, store, inbox
        self.base, self.base_set, self.depth = base, base_set, depth

    def pull(self) -> ModelSet:
        """The newest version the store holds for this device; it becomes the base of the next push."""
        self.base_set = self.store.resolve(self.name)
        self.base = self.store.recover(self.base_set)
        self.depth = 0
        return self.base

    def push(self, models: ModelSet, device_time: str | None = None, kind: str = "auto", dry_run: bool = False,
             training: Training | None = None) -> Push:
        """Send `models` (retrained from the base) as one bundle; it becomes the base of the next push.

        With `training` (how the models were retrained), sending that record and its data is an option
        too. With `dry_run`, only say what would be sent.
        """
        if self.base is None:
            raise MMStoreError(f"device {self.name} has no base models; pull before pushing")
        if models.layout != self.base.layout or len(models) != len(self.base):
            raise MMStoreError(f"the models pushed for {self.name} do not have the shape of the models pulled; "
                               "push retrained versions of the pulled models")
        when = datetime.fromisoformat(device_time) if device_time else datetime.now(timezone.utc)
        header = BundleHeader(device=self.name, kind="delta", base_set=self.base_set, base_content=digest_bytes(self.base.data),
                              content=digest_bytes(models.data), arch=self._arch_id(), n_models=len(models),
                              row_nbytes=models.layout.row_nbytes, device_time=when, codec=DELTA_CODEC)
        encoded = {
            "delta": encode_bundle(header, models.data, self.base.data, models.layout),
            "full": encode_bundle(header.model_copy(update={"kind": "full", "codec": FULL_CODEC}), models.data, self.base.data, models.layout),
        }
        if training is not None:
            encoded["provenance"] = encode_provenance_bundle(header, *training.record())
        choice = self.explain(encoded, training)
        chosen = choice.chosen if kind == "auto" else kind
        if chosen not in encoded:
            raise MMStoreError(f"unknown bundle kind {kind!r}; choose auto, delta, full or (with training) provenance")
        data = encoded[chosen]
        key = pending_key(self.name, digest_bytes(data))
        if dry_run or self.inbox is None:
            return Push(key, chosen, len(data), len(encoded["full"]), choice)
        self.inbox.put(key, data, exclusive=True)  # atomic: an interrupted upload leaves no object under this name
        self.base, self.base_set = models, None
        self.depth = 0 if chosen == "full" else self.depth + 1
        return Push(key, chosen, len(data), len(encoded["full"]), choice)

    def explain(self, encoded: dict[str, bytes], training: Training | None = None) -> Choice:
        """The cost model's view of sending the changed tensors, every tensor, or (if encoded) how they were trained."""
        settings, full, delta = self.store.settings, len(encoded["full"]), len(encoded["delta"])
        after = delta_seconds(full, delta, self.depth + 1, settings)
        options = [Option("delta", delta, delta, after), Option("full", full, full, snapshot_seconds(full, settings))]
        if training is not None and "provenance" in encoded:
            sent = len(encoded["provenance"])
            base = delta_seconds(full, delta, self.depth, settings)
            recipes = [recipe for recipe, _ in training.changes.values()]
            options.append(Option("provenance", sent, sent, replay_seconds(base, recipes, training.seconds, settings)))
        return choose(options, settings)

    def _arch_id(self) -> str:
        return self.store.manifest(self.store.resolve(self.name)).arch.id
