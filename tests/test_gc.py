"""Garbage collection and deletion: leaks are found and removed, and no committed set ever loses a byte."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from mmstore import ArchSpec, ModelSet, Store
from mmstore.cli import main
from mmstore.errors import InUseError, MMStoreError
from mmstore.layout import Layout

from .archs import Small
from .conftest import TEST_SETTINGS, make_s3_bucket
from .faults import HookedBackend, before
from .test_crash import WRITER

LAYOUT = Layout.of(Small().state_dict())
ARCH = ArchSpec(factory="tests.archs:Small")



def model_set(seed: int, n: int = 30) -> ModelSet:
    """n rows of random bytes in the layout of `tests.archs.Small`."""
    data = np.random.default_rng(seed).integers(0, 256, (n, LAYOUT.row_nbytes), dtype=np.uint8)
    return ModelSet(ARCH, LAYOUT, data)


def disk_bytes(root: Path) -> int:
    """Bytes of every file below `root`."""
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def recover_all(store: Store) -> None:
    """Every set recovers (each read is verified) and every lineage names a valid set."""
    fresh = Store(store.backend, store.settings)
    fresh.verify()


@pytest.mark.parametrize("approach", ["baseline", "update"])
def test_killed_saves_leak_nothing_after_gc(tmp_path, approach):
    """20 saves killed at random points, then one collection with no grace: disk equals what `du` attributes."""
    url = str(tmp_path / "store")
    store = Store.open(url, TEST_SETTINGS)
    store.save(model_set(0), approach=approach, lineage="fleet")
    rng = np.random.default_rng(7)
    for kill in range(20):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, url, str(kill), approach, "20000"], stdout=subprocess.PIPE,
                                cwd=Path(__file__).parent.parent, text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(float(rng.uniform(0.0, 0.4)))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    reader = Store.open(url, TEST_SETTINGS)
    leaked = reader.unreferenced()
    report = reader.collect_garbage(grace=0)
    assert report.freed == leaked.freed
    recover_all(reader)
    live = sum(reader.size(info.id) for info in reader.list())
    # Beyond what `du` attributes to sets: the marker, lineage refs and their lock files.
    overhead = sum(p.stat().st_size for p in (tmp_path / "store").rglob("*")
                   if p.is_file() and (p.name == "mmstore.json" or p.parent.name == "refs"))
    assert disk_bytes(tmp_path / "store") == live + overhead
    assert reader.unreferenced().freed == 0


def test_grace_period_keeps_young_garbage_and_dry_run_removes_nothing(local_store):
    local_store.save(model_set(0), lineage="fleet")
    orphan = local_store.blobs.put(model_set(1).data)
    before = local_store.backend.scan("")
    assert local_store.collect_garbage(grace=3600).young == 1
    dry = local_store.collect_garbage(grace=0, dry_run=True)
    assert dry.blobs == 1 and dry.blob_bytes == orphan.size
    assert local_store.backend.scan("") == before
    assert local_store.collect_garbage(grace=0).blob_bytes == orphan.size
    assert not local_store.blobs.exists(orphan.id)
    recover_all(local_store)


def _save_steps(store: Store, approach: str) -> int:
    """How many backend calls of each kind a save makes (so every point of it can be interrupted)."""
    counts: dict[str, int] = {}

    class Counting:
        url = store.backend.url

        def __getattr__(self, name):
            real = getattr(store.backend, name)

            def call(*args, **kwargs):
                counts[name] = counts.get(name, 0) + 1
                return real(*args, **kwargs)

            return call

    probe = Store(Counting(), TEST_SETTINGS)
    probe.save(model_set(99), approach=approach, lineage="probe")
    return counts


@pytest.mark.parametrize("backend_kind", ["local", "s3"])
def test_gc_interleaved_with_saves_loses_nothing(tmp_path, backend_kind, request):
    """A collection with no grace runs at every step of a save that deduplicates against orphaned blobs."""
    if backend_kind == "local":
        url, options = str(tmp_path / "store"), {}
    else:
        options = request.getfixturevalue("s3_options")
        url = f"s3://{make_s3_bucket(options)}/store"
    seed_store = Store.open(url, TEST_SETTINGS, **options)
    seed_store.save(model_set(0), approach="update", lineage="fleet")
    interleavings = 0
    for approach in ("baseline", "update", "auto"):  # auto: the cost model reads the base first
        steps = _save_steps(Store.open(url, TEST_SETTINGS, **options), approach)
        for method, count in sorted(steps.items()):
            for n in range(1, count + 1):
                for leaked in (True, False):
                    data = model_set(1000 + interleavings)
                    if leaked:  # an earlier, killed save of the same data left its blobs behind, unreferenced
                        Store.open(url, TEST_SETTINGS, **options).blobs.put(data.data)
                    collector = Store.open(url, TEST_SETTINGS, **options)
                    collect = before(lambda: collector.collect_garbage(grace=0))
                    writer = Store(HookedBackend(collector.backend, method, n, collect), TEST_SETTINGS)
                    set_id = writer.save(data, approach=approach, lineage=f"fleet-{approach}")
                    assert Store.open(url, TEST_SETTINGS, **options).recover(set_id).equals(data)
                    interleavings += 1
    recover_all(Store.open(url, TEST_SETTINGS, **options))
    assert interleavings >= 60


@pytest.mark.parametrize("backend_kind", ["local", "s3"])
def test_delete_interleaved_with_saves_loses_nothing(tmp_path, backend_kind, request):
    """A deletion and a collection at every step of a save that reuses the deleted set's blobs (or only its architecture)."""
    if backend_kind == "local":
        url, options = str(tmp_path / "store"), {}
    else:
        options = request.getfixturevalue("s3_options")
        url = f"s3://{make_s3_bucket(options)}/store"
    interleavings = 0
    for approach in ("baseline", "update", "auto"):
        steps = _save_steps(Store.open(url, TEST_SETTINGS, **options), approach)
        for method, count in sorted(steps.items()):
            for n in range(1, count + 1):
                for shared in (True, False):
                    store = Store.open(url, TEST_SETTINGS, **options)
                    data = model_set(2000 + interleavings)
                    doomed = store.save(data if shared else model_set(5000 + interleavings), approach=approach)

                    def delete_and_collect() -> None:
                        other = Store.open(url, TEST_SETTINGS, **options)
                        other.delete(doomed)
                        other.collect_garbage(grace=0)

                    writer = Store(HookedBackend(store.backend, method, n, before(delete_and_collect)), TEST_SETTINGS)
                    set_id = writer.save(data, approach=approach, meta={"copy": True}, lineage=f"keep-{approach}")
                    assert Store.open(url, TEST_SETTINGS, **options).recover(set_id).equals(data)
                    interleavings += 1
    recover_all(Store.open(url, TEST_SETTINGS, **options))
    assert interleavings >= 60


def test_a_set_derived_while_its_base_is_deleted_keeps_its_base(tmp_path):
    """The deletion lists the store again after moving the manifest aside: a new dependent puts it back."""
    url = str(tmp_path / "store")
    store = Store.open(url, TEST_SETTINGS)
    base = store.save(model_set(0), approach="update", lineage="fleet")
    derived_data = model_set(0).data.copy()
    derived_data[1, :4] ^= 0xFF
    derived = {}

    def save_derived() -> None:
        derived["id"] = Store.open(url, TEST_SETTINGS).save(ModelSet(ARCH, LAYOUT, derived_data), approach="update",
                                                            base=base)

    deleter = Store(HookedBackend(store.backend, "move", 1, before(save_derived)), TEST_SETTINGS)
    with pytest.raises(InUseError):  # the derived set is saved between the move and the second check
        deleter.delete(base)
    assert Store.open(url, TEST_SETTINGS).recover(derived["id"]).equals(ModelSet(ARCH, LAYOUT, derived_data))


def test_verify_reports_dangling_lineages_and_unreferenced_bytes(local_store, capsys):
    local_store.save(model_set(0), lineage="fleet")
    orphan = local_store.blobs.put(model_set(3).data)
    assert main(["--store", local_store.url, "--json", "verify"]) == 0
    out = capsys.readouterr().out
    assert f'"unreferenced_bytes": {orphan.size}' in out
    assert main(["--store", local_store.url, "du"]) == 0
    assert f"{orphan.size} bytes unreferenced" in capsys.readouterr().out
    local_store.backend.put("refs/ghost", b"0" * 64, exclusive=False)
    assert main(["--store", local_store.url, "verify"]) == 1
    assert "lineage 'ghost'" in capsys.readouterr().err
    assert main(["--store", local_store.url, "gc", "--grace", "0"]) == 0
    assert f"freed {orphan.size} bytes" in capsys.readouterr().out
    assert main(["--store", local_store.url, "gc", "--grace", "soon"]) == 1


def test_resaving_heals_a_truncated_blob(local_store):
    data = model_set(5)
    set_id = local_store.save(data)
    key = f"blobs/{local_store.manifest(set_id).blobs['params'].id[:2]}/{local_store.manifest(set_id).blobs['params'].id[2:]}"
    local_store.backend.put(key, local_store.backend.get(key)[:100], exclusive=False)
    local_store.save(data, meta={"again": True})
    assert Store.open(local_store.url, TEST_SETTINGS).recover(set_id).equals(data)


def test_a_deletion_that_stopped_half_way_is_undone_by_gc(local_store):
    set_id = local_store.save(model_set(6))
    local_store.backend.move(f"sets/{set_id}.json", f"trash/{'a' * 32}-set-{set_id}.json")
    with pytest.raises(Exception):
        Store.open(local_store.url, TEST_SETTINGS).recover(set_id)
    local_store.collect_garbage(grace=0)
    assert Store.open(local_store.url, TEST_SETTINGS).recover(set_id).equals(model_set(6))


def test_verify_repair_rewrites_damaged_blobs_from_a_replica(tmp_path, capsys):
    data = model_set(8)
    damaged, replica = Store.open(str(tmp_path / "a"), TEST_SETTINGS), Store.open(str(tmp_path / "b"), TEST_SETTINGS)
    set_id = damaged.save(data, lineage="fleet")
    replica.save(data, lineage="fleet")
    params = damaged.manifest(set_id).blobs["params"].id
    key = f"blobs/{params[:2]}/{params[2:]}"
    flipped = bytearray(damaged.backend.get(key))
    flipped[3] ^= 1
    damaged.backend.put(key, bytes(flipped), exclusive=False)
    assert main(["--store", damaged.url, "verify"]) == 1
    assert "corrupt" in capsys.readouterr().err
    assert main(["--store", damaged.url, "verify", "--repair"]) == 1
    assert "--from" in capsys.readouterr().err
    assert main(["--store", damaged.url, "--json", "verify", "--repair", "--from", replica.url]) == 0
    assert params in capsys.readouterr().out
    assert Store.open(damaged.url, TEST_SETTINGS).recover(set_id).equals(data)


def test_sizes_agrees_with_size_on_branching_chains(local_store):
    base = local_store.save(model_set(20), approach="update", lineage="a")
    for seed in (21, 22):
        data = model_set(20).data.copy()
        data[seed % 5, :16] ^= 0xFF
        local_store.save(ModelSet(ARCH, LAYOUT, data), approach="update", base=base, lineage=f"b{seed}")
    local_store.save(model_set(23), lineage="c")
    sizes = local_store.sizes()
    assert sizes == {info.id: local_store.size(info.id) for info in local_store.list()}
    assert len(sizes) == 4


def test_an_oversized_manifest_in_the_trash_is_refused_unread(local_store):
    local_store.save(model_set(9))
    local_store.backend.put(f"trash/{'b' * 32}-set-{'c' * 64}.json", b" " * (5 << 20), exclusive=True)
    with pytest.raises(MMStoreError, match="larger than any manifest"):
        local_store.collect_garbage(grace=0)
