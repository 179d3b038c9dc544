"""The store-maintenance flow: garbage past the grace period is freed, lineages and a sample are verified."""

from __future__ import annotations

import numpy as np

from flows.maintenance import _markdown, store_maintenance
from flows.params import MaintenanceParameters
from mmstore import ArchSpec, ModelSet, Store
from mmstore.layout import Layout
from workloads.models import FFNN48


def test_maintenance_frees_garbage_and_verifies(prefect_harness, tmp_path):
    layout = Layout.of(FFNN48().state_dict())
    rng = np.random.default_rng(11)
    store = Store.open(str(tmp_path / "store"))
    for version in range(4):
        data = (rng.standard_normal((6, layout.row_nbytes // 4), dtype=np.float32) * 0.1).view(np.uint8)
        store.save(ModelSet(ArchSpec.of(FFNN48), layout, data), lineage=f"fleet-{version % 2}")
    orphan = store.blobs.put(rng.integers(0, 256, 5000, dtype=np.uint8))
    params = MaintenanceParameters(store=store.url, grace_hours=0, verify_sample=1, seed=0)
    report = store_maintenance(params)
    assert report["gc"]["freed"] == orphan.size and report["gc"]["blobs"] == 1
    assert len(report["verified"]) == 3 and report["sets"] == 4  # both heads and one sampled set
    assert not store.blobs.exists(orphan.id)
    assert store_maintenance(params)["gc"]["freed"] == 0


def test_maintenance_prunes_the_lineages_its_glob_matches(prefect_harness, tmp_path):
    from mmstore.retention import RetentionPolicy

    layout = Layout.of(FFNN48().state_dict())
    rng = np.random.default_rng(12)
    store = Store.open(str(tmp_path / "store"))
    saved = {}
    for version in range(4):
        for name in ("fleet-a", "other"):
            data = (rng.standard_normal((6, layout.row_nbytes // 4), dtype=np.float32) * 0.1).view(np.uint8)
            saved.setdefault(name, []).append(store.save(ModelSet(ArchSpec.of(FFNN48), layout, data), lineage=name))
    params = MaintenanceParameters(store=store.url, grace_hours=0, verify_sample=0, lineages="fleet-*",
                                   retention=RetentionPolicy(keep_last=2))
    report = store_maintenance(params)
    assert report["pruned"] == [{"lineage": "fleet-a", "kept": 2, "removed": 2, "rebased": 1,
                                 "manifest_bytes": report["pruned"][0]["manifest_bytes"]}]
    assert report["gc"]["blobs"] == 2  # the removed sets' parameters
    assert "retention removed **2 set(s)** of 1 lineage(s)" in _markdown(report) and "| `fleet-a` | 2 | 1 | 2 |" in _markdown(report)
    fresh = Store.open(store.url)
    assert [info.id for info in fresh.log("other")] == saved["other"][::-1]
    assert len(fresh.log("fleet-a")) == 2 and fresh.resolve(saved["fleet-a"][2]) != saved["fleet-a"][2]
    assert store_maintenance(MaintenanceParameters(store=store.url, grace_hours=0))["pruned"] == []
