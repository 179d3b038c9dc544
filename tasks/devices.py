"""Tasks of a device fleet: deploy one lineage per device from a central fleet set, check their versions."""

from __future__ import annotations

from prefect import task

from mmstore import Catalog, Settings, Store
from mmstore.device import deploy
from mmstore.digest import digest_bytes

from tasks.fleet import initial_models

__all__ = ["deploy_fleet", "verify_versions", "device_names"]


def device_names(devices: int) -> list[str]:
    """The lineage names of a simulated fleet's devices."""
    return [f"device-{i:04d}" for i in range(devices)]


@task(name="deploy-fleet")
def deploy_fleet(store_url: str, devices: int, cells: int, seed: int, arch: str, when: str) -> dict[str, str]:
    """Train the fleet's initial models centrally, save them once, and start every device's lineage on its slice."""
    store = Store.open(store_url)
    fleet = initial_models.fn(devices * cells, seed, arch)
    fleet_id = store.save(fleet, "update", lineage="fleet", meta={"seed": seed, "arch": arch, "device_time": when})
    heads = deploy(store, fleet_id, device_names(devices), cells, when)
    Catalog(store).rebuild()  # indexed from the start: ingest runs then only add versions
    return heads


@task(name="verify-versions")
def verify_versions(store_url: str, device: str, contents: list[str]) -> dict[str, int]:
    """How many of the contents a device held are versions of its lineage that recover bit for bit,
    and the bytes its versions after the deployed slice store (manifests and the blobs each adds)."""
    store = Store.open(store_url, Settings(cache_sets=2))
    chain = [store.manifest(info.id) for info in store.log(device) if info.lineage == device]
    found, blobs, manifest_bytes = {}, {}, 0
    for manifest in reversed(chain):  # oldest first: each recovery starts from the one before, still at hand
        found[digest_bytes(store.recover(manifest.id).data)] = manifest.id
        if manifest.base and manifest.lineage == store.manifest(manifest.base).lineage:
            manifest_bytes += len(manifest.encode()[1])
            blobs.update({ref.id: ref.size for ref in manifest.blobs.values()})
    return {"verified": sum(content in found for content in contents), "stored": manifest_bytes + sum(blobs.values())}
