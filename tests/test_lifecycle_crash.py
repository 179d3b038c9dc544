"""Crashes and races across a store's whole life: kill -9 during gc, delete, update and provenance saves, on disk and S3.

Every crash is a real SIGKILL of a real process. The processes are forked from one long-lived spawner
that imported mmstore once: starting a fresh interpreter costs about 3 s here, a fork a few milliseconds,
which is what lets dozens of kills fit in the time budget.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from mmstore import ArchSpec, ModelSet, Settings, Store
from mmstore.errors import ConflictError, InUseError
from mmstore.layout import Layout

from .archs import Small
from .conftest import TEST_SETTINGS, make_s3_bucket
from .faults import HookedBackend

ROOT = Path(__file__).resolve().parent.parent
LAYOUT = Layout.of(Small().state_dict())
ARCH = ArchSpec(factory="tests.archs:Small")
# Provenance datasets live under `<store>-datasets`, which only the default dataset roots allow.
PROVENANCE_SETTINGS = Settings(trusted_modules=("tests",))
TEMP_NAME = re.compile(r".+\.tmp-[0-9a-f]{32}")

SPAWNER = r"""
import importlib, json, os, sys, traceback
jobs = importlib.import_module(sys.argv[1])
import tests.provenance_fleet  # imported once here, not in every child
print("ready", flush=True)
for line in sys.stdin:
    request = json.loads(line)
    if "reap" in request:
        print(os.waitpid(request["reap"], 0)[1], flush=True)
        continue
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)  # the spawner's stdout carries its replies
            getattr(jobs, "job_" + request["job"])(**request["args"])
        except BaseException:
            traceback.print_exc()
            code = 1
        finally:
            os._exit(code)
    print(pid, flush=True)
"""


# -- jobs the spawner's children run --------------------------------------------------------------


def job_gc(url: str, options: dict) -> None:
    """Collect garbage with no grace period, again and again, until killed."""
    while True:
        Store.open(url, TEST_SETTINGS, **options).collect_garbage(grace=0)


def job_delete(url: str, ids: list[str], pause_at_move: int = 0, marker: str = "") -> None:
    """Delete the sets in order (each one's dependents come before it).

    With `pause_at_move`, the n-th move (a manifest set aside) is done, `marker` written, and the child waits to be killed.
    """
    store = Store.open(url, TEST_SETTINGS)
    if pause_at_move:
        def move_and_wait(real, *args, **kwargs):
            real(*args, **kwargs)
            Path(marker).touch()
            time.sleep(3600)

        store = Store(HookedBackend(store.backend, "move", pause_at_move, move_and_wait), TEST_SETTINGS)
    for set_id in ids:
        store.delete(set_id)


def job_update(url: str, seed: int) -> None:
    """Save update deltas to lineage 'fleet', continuing its deterministic sequence from the head, until killed."""
    store = Store.open(url, TEST_SETTINGS)
    depth = len(store.log("fleet")) - 1
    while True:
        depth += 1
        store.save(ModelSet(ARCH, LAYOUT, delta_data(seed, depth)), approach="update", lineage="fleet")


def job_provenance(url: str, seed: int) -> None:
    """Retrain and save provenance sets on lineage 'fleet', continuing from its head, until killed."""
    from .provenance_fleet import retrain

    store = Store.open(url, PROVENANCE_SETTINGS)
    depth = len(store.log("fleet")) - 1
    current = store.recover("fleet", executor="in-process")
    while True:
        depth += 1
        current, record = retrain(current, provenance_plan(seed, depth), f"{url}-datasets", depth, seed)
        store.save(current, approach="provenance", lineage="fleet", provenance=record)


def job_stall_before_commit(url: str, options: dict, seed: int, marker: str) -> None:
    """Save one set, but stop right before its manifest is written (the commit), and wait to be killed."""
    store = Store.open(url, TEST_SETTINGS, **options)
    put = store.backend.put

    def stalling_put(key, data, *, exclusive):
        if key.startswith("sets/"):
            Path(marker).write_text("blobs written")
            time.sleep(120)
        return put(key, data, exclusive=exclusive)

    store.backend.put = stalling_put
    store.save(model_set(seed), lineage="fleet")


def job_race(url: str, options: dict, worker: int, saves: int, out: str, start_at: float) -> None:
    """Save `saves` sets to lineage 'fleet', retrying on top of the new head after a conflict; log every attempt."""
    store = Store.open(url, TEST_SETTINGS, **options)
    time.sleep(max(0.0, start_at - time.time()))  # every writer starts together, however late it was forked
    attempts = []
    for k in range(saves):
        data = model_set(10_000 + worker * 100 + k, n=8)
        for _ in range(20):
            try:
                attempts.append({"id": store.save(data, lineage="fleet"), "seed": 10_000 + worker * 100 + k, "moved": True})
                break
            except ConflictError as exc:
                # The set was committed; only the lineage move lost the race.
                set_id = re.search(r"set ([0-9a-f]{64}) was saved", str(exc)).group(1)
                attempts.append({"id": set_id, "seed": 10_000 + worker * 100 + k, "moved": False})
    Path(out).write_text(json.dumps(attempts))


# -- helpers ---------------------------------------------------------------------------------------


def model_set(seed: int, n: int = 12) -> ModelSet:
    """n rows of random bytes in the layout of `tests.archs.Small`."""
    data = np.random.default_rng(seed).integers(0, 256, (n, LAYOUT.row_nbytes), dtype=np.uint8)
    return ModelSet(ARCH, LAYOUT, data)


def delta_data(seed: int, depth: int) -> np.ndarray:
    """The rows at `depth` of a deterministic sequence in which each step changes a few bytes of three rows."""
    data = model_set(seed, n=24).data.copy()
    for d in range(1, depth + 1):
        rng = np.random.default_rng([seed, d])
        for row in rng.choice(len(data), size=3, replace=False):
            start = int(rng.integers(0, LAYOUT.row_nbytes - 16))
            data[row, start:start + 16] = rng.integers(0, 256, 16, dtype=np.uint8)
    return data


def provenance_plan(seed: int, depth: int) -> dict[int, str]:
    """Which 2 of the 20 models version `depth` retrains, fully and partially."""
    full, partial = np.random.default_rng([seed, depth, 7]).choice(20, size=2, replace=False).tolist()
    return {full: "full", partial: "partial"}


class Spawner:
    """A process that imported mmstore once and forks a child per job (`job_<name>` of module `jobs`); children are killed with SIGKILL."""

    def __init__(self, jobs: str = __name__) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
               "AWS_DEFAULT_REGION": "us-east-1"}
        self.proc = subprocess.Popen([sys.executable, "-c", SPAWNER, jobs], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     cwd=ROOT, env=env, text=True)
        assert self._reply() == "ready"

    def _reply(self) -> str:
        """The spawner's next line, or a failure if it says nothing for 60 s (each test stays bounded)."""
        result: list[str] = []
        reader = threading.Thread(target=lambda: result.append(self.proc.stdout.readline()), daemon=True)
        reader.start()
        reader.join(60)
        assert result and result[0], "the spawner stopped answering"
        return result[0].strip()

    def spawn(self, job: str, **args) -> int:
        """Fork a child running `job_<job>(**args)`; its pid."""
        self.proc.stdin.write(json.dumps({"job": job, "args": args}) + "\n")
        self.proc.stdin.flush()
        return int(self._reply())

    def reap(self, pid: int) -> int:
        """Wait for a child to end; its wait status."""
        self.proc.stdin.write(json.dumps({"reap": pid}) + "\n")
        self.proc.stdin.flush()
        return int(self._reply())

    def kill(self, pid: int) -> None:
        """kill -9: no cleanup code of the child runs."""
        os.kill(pid, signal.SIGKILL)
        self.reap(pid)

    def close(self) -> None:
        """Stop the spawner."""
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def spawner():
    """One spawner for the module's tests."""
    spawner = Spawner()
    yield spawner
    spawner.close()


def wait_for(path: Path, timeout: float = 30.0) -> None:
    """Poll until `path` exists."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.01)


def wait_for_move(ref: Path, head: str, timeout: float = 30.0) -> None:
    """Poll until the lineage file `ref` names another set than `head` (a child has committed a save)."""
    deadline = time.monotonic() + timeout
    while ref.read_text().strip() == head:
        assert time.monotonic() < deadline, f"{ref} never moved"
        time.sleep(0.005)


def build_fleet(store: Store, seed: int) -> dict[str, np.ndarray]:
    """Three lineages (a baseline and two update chains with deltas) plus two loose sets; id -> rows."""
    saved = {}
    rng = np.random.default_rng(seed)
    for name, approach in (("base", "baseline"), ("upd", "update"), ("more", "update")):
        data = model_set(int(rng.integers(1 << 30))).data.copy()
        for _ in range(3):
            saved[store.save(ModelSet(ARCH, LAYOUT, data.copy()), approach=approach, lineage=name)] = data.copy()
            data[int(rng.integers(len(data))), :64] ^= 0x5A  # a small change: the next update save is a delta
    for _ in range(2):
        data = model_set(int(rng.integers(1 << 30))).data
        saved[store.save(ModelSet(ARCH, LAYOUT, data))] = data
    return saved


def add_orphans(store: Store, rng: np.random.Generator, count: int) -> int:
    """Blobs no set references (what killed saves leave), of 1 to 32 KiB; their total size."""
    total = 0
    for _ in range(count):
        total += store.blobs.put(rng.integers(0, 256, int(rng.integers(1, 32 << 10)), dtype=np.uint8)).size
    return total


def add_stale_temps(root: Path, rng: np.random.Generator, count: int) -> None:
    """Temporary files an interrupted write leaves, dated two hours back."""
    old = time.time() - 7200
    for i in range(count):
        directory = root / ("sets" if i % 3 == 0 else f"blobs/{rng.integers(256):02x}")
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{uuid.UUID(int=int(rng.integers(1 << 62))).hex}.tmp-{uuid.UUID(int=int(rng.integers(1 << 62))).hex}"
        path.write_bytes(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
        os.utime(path, (old, old))


def _wait_for_collection(root: Path) -> None:
    """Until the child has begun removing things (a busy machine may start it late), at most 20 s."""
    def temps() -> int:
        return sum(1 for p in root.rglob("*.tmp-*"))

    present, deadline = temps(), time.monotonic() + 20
    while temps() == present and time.monotonic() < deadline:
        time.sleep(0.001)


def _wait_for_trash(store: Store) -> None:
    """Until the child has moved a first blob to the trash, at most 20 s (object stores have no temp files)."""
    deadline = time.monotonic() + 20
    while not store.backend.scan("trash") and time.monotonic() < deadline:
        time.sleep(0.005)


def assert_sets_recover(url: str, saved: dict[str, np.ndarray], options: dict | None = None) -> Store:
    """Every saved set is listed and recovers bit-exactly; `verify()` is clean; returns a fresh store."""
    store = Store.open(url, TEST_SETTINGS, **(options or {}))
    assert sorted(store.verify()) == sorted(saved)
    for set_id, data in saved.items():
        assert np.array_equal(store.recover(set_id).data, data), set_id
    return store


def trash_and_temps(store: Store) -> list[str]:
    """Keys of trash left by an interrupted collection or deletion, and of temporary files."""
    return [e.key for e in store.backend.scan("") if e.key.startswith("trash/") or TEMP_NAME.fullmatch(e.key.rsplit("/", 1)[-1])]


# -- kill -9 during garbage collection -------------------------------------------------------------


def _kill_gc_repeatedly(spawner, url: str, options: dict, root: Path | None, iterations: int, seed: int,
                        window: float) -> int:
    """Kill a collecting child `iterations` times at seeded random points; how many kills left work half done."""
    store = Store.open(url, TEST_SETTINGS, **options)
    saved = build_fleet(store, seed)
    rng = np.random.default_rng(seed)
    half_done = 0
    for _ in range(iterations):
        add_orphans(store, rng, 30)
        if root is not None:
            add_stale_temps(root, rng, 6)
        pid = spawner.spawn("gc", url=url, options=options)
        _wait_for_collection(root) if root is not None else _wait_for_trash(store)
        time.sleep(float(rng.uniform(0.0, window)))
        spawner.kill(pid)
        after = assert_sets_recover(url, saved, options)
        after.verify_lineages()
        half_done += bool(trash_and_temps(after) or after.unreferenced().blobs)
    final = Store.open(url, TEST_SETTINGS, **options)
    final.collect_garbage(grace=0)
    assert final.unreferenced().freed == 0
    assert trash_and_temps(final) == []
    assert_sets_recover(url, saved, options)
    return half_done


@pytest.mark.timeout(60)
def test_kill_9_during_gc_on_disk_loses_nothing_and_a_last_gc_removes_every_leak(spawner, tmp_path):
    half_done = _kill_gc_repeatedly(spawner, str(tmp_path / "store"), {}, tmp_path / "store", 20, seed=11, window=0.03)
    # The kills must land inside collections, not only between them, for the test to mean anything.
    assert half_done >= 5, f"only {half_done} of 20 kills landed inside a collection"


@pytest.mark.timeout(60)
def test_kill_9_during_gc_on_s3_loses_nothing(spawner, s3_options):
    url = f"s3://{make_s3_bucket(s3_options)}/store"
    half_done = _kill_gc_repeatedly(spawner, url, s3_options, None, 3, seed=12, window=0.2)
    assert half_done >= 1


# -- kill -9 during delete -------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_kill_9_during_delete_leaves_each_deletion_complete_or_undone(spawner, tmp_path):
    rng = np.random.default_rng(21)
    undone = 0
    for iteration in range(12):
        url = str(tmp_path / f"store{iteration}")
        store = Store.open(url, TEST_SETTINGS)
        saved = build_fleet(store, iteration)
        # Newest first within each lineage: a set is deleted only once nothing derives from it.
        doomed = [info.id for name in ("upd", "base", "more") for info in store.log(name)]
        sets_dir = tmp_path / f"store{iteration}" / "sets"
        present = len(list(sets_dir.iterdir()))
        if iteration % 3 == 0:
            # Killed right after a manifest was set aside: the one point an undo must be possible from.
            marker = tmp_path / f"moved{iteration}"
            pid = spawner.spawn("delete", url=url, ids=doomed, pause_at_move=int(rng.integers(1, len(doomed) + 1)),
                                marker=str(marker))
            wait_for(marker)
        else:
            pid = spawner.spawn("delete", url=url, ids=doomed)
            # Kill once the child is deleting (a busy machine may start it late), at a random point from there.
            deadline = time.monotonic() + 20
            while len(list(sets_dir.iterdir())) == present and time.monotonic() < deadline:
                time.sleep(0.001)
            time.sleep(float(rng.uniform(0.0, 0.03)))
        spawner.kill(pid)
        before = Store.open(url, TEST_SETTINGS)
        listed = {info.id for info in before.list()}
        for set_id in listed:
            assert np.array_equal(before.recover(set_id).data, saved[set_id])
        before.collect_garbage(grace=0)
        after = Store.open(url, TEST_SETTINGS)
        after.verify_lineages()
        remaining = {info.id for info in after.list()}
        assert listed <= remaining  # a collection never removes a set
        undone += len(remaining - listed)
        assert set(saved) - set(doomed) <= remaining  # sets not being deleted are untouched
        for set_id in remaining:
            assert np.array_equal(after.recover(set_id).data, saved[set_id])  # an undone deletion recovers whole
        assert set(after.verify()) == remaining
        assert trash_and_temps(after) == []
        assert after.unreferenced().freed == 0  # a completed deletion's blobs went with the collection
    assert undone >= 4  # at least the kills that landed between moving a manifest aside and finishing


# -- kill -9 during update and provenance saves ----------------------------------------------------


def _kill_after_first_save(spawner, job: str, url: str, settings, delay: float, **kwargs) -> None:
    """Start a saving child, wait until its first save moved the lineage, kill it `delay` seconds later."""
    pid = spawner.spawn(job, url=url, **kwargs)
    wait_for_move(Path(url) / "refs" / "fleet", Store.open(url, settings).resolve("fleet"))
    time.sleep(float(delay))
    spawner.kill(pid)


@pytest.mark.timeout(60)
def test_kill_9_during_update_saves_leaves_only_complete_sets(spawner, tmp_path):
    url = str(tmp_path / "store")
    store = Store.open(url, TEST_SETTINGS)
    store.save(ModelSet(ARCH, LAYOUT, delta_data(31, 0)), approach="update", lineage="fleet")
    rng = np.random.default_rng(31)
    for _ in range(8):
        _kill_after_first_save(spawner, "update", url, TEST_SETTINGS, rng.uniform(0.0, 0.1), seed=31)
        reader = Store.open(url, TEST_SETTINGS)
        reader.verify()
        for info in reader.list():
            # A set's content is fixed by its depth in the sequence: a killed save never shows a mixture.
            depth = len(reader.log(info.id)) - 1
            assert np.array_equal(reader.recover(info.id).data, delta_data(31, depth))
    reader = Store.open(url, TEST_SETTINGS)
    assert len(reader.log("fleet")) > 8  # the children did save between kills
    assert any(m.approach == "update" and m.base for m in map(reader.manifest, (i.id for i in reader.list())))
    reader.collect_garbage(grace=0)
    assert reader.unreferenced().freed == 0
    Store.open(url, TEST_SETTINGS).verify()


@pytest.mark.timeout(90)
def test_kill_9_during_provenance_saves_leaves_only_complete_sets(spawner, tmp_path):
    from .provenance_fleet import initial_set, retrain

    url = str(tmp_path / "store")
    expected = [initial_set(20, 41)]
    for depth in range(1, 40):
        # The same training as the children, with datasets of its own: recoveries must use the store's.
        derived, _ = retrain(expected[-1], provenance_plan(41, depth), str(tmp_path / "expected-datasets"), depth, 41)
        expected.append(derived)
    Store.open(url, PROVENANCE_SETTINGS).save(expected[0], approach="provenance", lineage="fleet")
    rng = np.random.default_rng(41)
    for _ in range(4):
        # The child's first save warms torch up (about a second): the kill comes after it.
        _kill_after_first_save(spawner, "provenance", url, PROVENANCE_SETTINGS, rng.uniform(0.0, 0.06), seed=41)
        reader = Store.open(url, PROVENANCE_SETTINGS)
        for info in reader.list():
            depth = len(reader.log(info.id)) - 1
            assert depth < len(expected), "more versions than the test prepared; shorten the delays"
            assert reader.recover(info.id, executor="in-process").equals(expected[depth])
    reader = Store.open(url, PROVENANCE_SETTINGS)
    assert len(reader.log("fleet")) >= 3
    reader.collect_garbage(grace=0)
    assert reader.unreferenced().freed == 0
    assert reader.recover("fleet", executor="in-process").equals(expected[len(reader.log("fleet")) - 1])


# -- S3: killed writers and unfinished uploads -----------------------------------------------------


@pytest.mark.timeout(60)
def test_s3_writer_killed_before_its_manifest_leaves_no_set_and_gc_removes_its_blobs(spawner, s3_options, tmp_path):
    url = f"s3://{make_s3_bucket(s3_options)}/store"
    store = Store.open(url, TEST_SETTINGS, **s3_options)
    kept = store.save(model_set(50), lineage="fleet")
    marker = tmp_path / "stalled"
    pid = spawner.spawn("stall_before_commit", url=url, options=s3_options, seed=51, marker=str(marker))
    wait_for(marker)
    spawner.kill(pid)
    reader = Store.open(url, TEST_SETTINGS, **s3_options)
    assert [info.id for info in reader.list()] == [kept]
    assert reader.resolve("fleet") == kept
    leaked = reader.unreferenced()
    assert leaked.blobs >= 1  # the killed writer's params and digests
    report = reader.collect_garbage(grace=0)
    assert report.blobs == leaked.blobs and report.freed == leaked.freed
    assert reader.unreferenced().freed == 0
    assert_sets_recover(url, {kept: model_set(50).data}, s3_options)


@pytest.mark.timeout(60)
def test_s3_unfinished_multipart_upload_is_aborted_by_gc_but_kept_within_grace(s3_options):
    import s3fs

    bucket = make_s3_bucket(s3_options)
    url = f"s3://{bucket}/store"
    store = Store.open(url, TEST_SETTINGS, **s3_options)
    kept = store.save(model_set(60))
    fs = s3fs.S3FileSystem(**s3_options)
    fs.call_s3("create_multipart_upload", Bucket=bucket, Key="store/blobs/ab/" + "c" * 62)
    # moto dates every upload 2010-11-10, so "large" must reach back past that to keep it.
    assert store.collect_garbage(grace=30 * 365 * 86400).uploads == 0
    assert len(fs.list_multipart_uploads(bucket)) == 1
    assert store.collect_garbage(grace=0).uploads == 1
    assert fs.list_multipart_uploads(bucket) == []
    assert_sets_recover(url, {kept: model_set(60).data}, s3_options)


@pytest.mark.timeout(60)
def test_s3_gc_leaves_the_uploads_of_a_neighbouring_store_alone(s3_options):
    import s3fs

    bucket = make_s3_bucket(s3_options)
    store = Store.open(f"s3://{bucket}/store", TEST_SETTINGS, **s3_options)
    store.save(model_set(61))
    fs = s3fs.S3FileSystem(**s3_options)
    fs.call_s3("create_multipart_upload", Bucket=bucket, Key="store-b/blobs/ab/" + "c" * 62)
    store.collect_garbage(grace=0)
    assert len(fs.list_multipart_uploads(bucket)) == 1


# -- S3: the If-Match lineage swap raced by several processes --------------------------------------


@pytest.mark.timeout(90)
def test_s3_lineage_raced_by_four_processes_keeps_every_set_and_only_successful_moves(spawner, s3_options, tmp_path):
    url = f"s3://{make_s3_bucket(s3_options)}/store"
    Store.open(url, TEST_SETTINGS, **s3_options).save(model_set(70, n=8), lineage="fleet")
    outs = [tmp_path / f"worker{w}.json" for w in range(4)]
    start_at = time.time() + 2
    pids = [spawner.spawn("race", url=url, options=s3_options, worker=w, saves=5, out=str(out), start_at=start_at)
            for w, out in enumerate(outs)]
    assert [spawner.reap(pid) for pid in pids] == [0, 0, 0, 0]
    attempts = [a for out in outs for a in json.loads(out.read_text())]
    moved = {a["id"] for a in attempts if a["moved"]}
    assert len(moved) == 20  # every worker eventually moved the lineage for each of its sets
    assert any(not a["moved"] for a in attempts)  # the writers did collide: the swap was contended
    store = Store.open(url, TEST_SETTINGS, **s3_options)
    chain = [info.id for info in store.log("fleet")][:-1]  # the root was saved by the test itself
    assert set(chain) <= moved
    assert len(chain) == len(moved)  # no move was lost to another writer's
    for a in attempts:
        assert np.array_equal(store.recover(a["id"]).data, model_set(a["seed"], n=8).data)
    assert len(store.list()) == len({a["id"] for a in attempts}) + 1


# -- a deletion racing a collection; what `unreferenced` reports after an interrupted one -------------


def test_deletion_refused_during_gc_keeps_its_blobs(tmp_path):
    url = str(tmp_path / "store")
    base_data = model_set(80)
    base = Store.open(url, TEST_SETTINGS).save(base_data, approach="update", lineage="fleet")
    derived_data = base_data.data.copy()
    derived_data[1, :4] ^= 0xFF
    moved, collected, outcome = threading.Event(), threading.Event(), {}

    def move_aside_and_pause(real, key, target):
        """The deletion's move of the manifest, preceded by a save deriving from the set and followed by a pause."""
        outcome["derived"] = Store.open(url, TEST_SETTINGS).save(ModelSet(ARCH, LAYOUT, derived_data), approach="update",
                                                                 base=base)
        result = real(key, target)
        moved.set()
        collected.wait(30)
        return result

    def delete() -> None:
        """Delete the base; the derived set makes the deletion refuse and put the manifest back."""
        try:
            Store(HookedBackend(Store.open(url, TEST_SETTINGS).backend, "move", 1, move_aside_and_pause), TEST_SETTINGS).delete(base)
        except InUseError:
            outcome["refused"] = True

    deleter = threading.Thread(target=delete)

    def start_deletion(real, *args, **kwargs):
        """Right after gc's scan, before its first listing of the manifests: the deletion moves the base aside."""
        deleter.start()
        moved.wait(30)
        return real(*args, **kwargs)

    collector = Store(HookedBackend(Store.open(url, TEST_SETTINGS).backend, "list", 1, start_deletion), TEST_SETTINGS)
    collector.collect_garbage(grace=0)
    collected.set()
    deleter.join(30)
    assert outcome.get("refused")
    reader = Store.open(url, TEST_SETTINGS)
    assert reader.recover(base).equals(base_data)
    assert np.array_equal(reader.recover(outcome["derived"]).data, derived_data)


def test_unreferenced_reports_what_gc_frees_after_an_interrupted_gc(local_store):
    local_store.save(model_set(90), lineage="fleet")
    orphan = local_store.blobs.put(model_set(91).data)
    # Where a collection killed after step 2 leaves a candidate.
    local_store.backend.move(f"blobs/{orphan.id[:2]}/{orphan.id[2:]}", f"trash/{'d' * 32}-{orphan.id}")
    leaked = local_store.unreferenced()
    assert local_store.collect_garbage(grace=0).freed == leaked.freed == orphan.size
