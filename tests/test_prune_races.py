"""Prune and compact against concurrent saves, deletions and collections, and killed with SIGKILL at random points.

The interleavings are forced with `tests.faults.HookedBackend`, a backend wrapper that runs the
concurrent action just before the n-th call of one backend method of the prune or compaction: real
concurrency cannot hit each of those points reliably. The kills are real SIGKILLs of forked children.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from mmstore import ArchSpec, ModelSet, Store
from mmstore.errors import ConflictError
from mmstore.layout import Layout
from mmstore.retention import RetentionPolicy

from .archs import Small
from .conftest import TEST_SETTINGS, make_s3_bucket
from .faults import HookedBackend, before
from .test_lifecycle_crash import Spawner, trash_and_temps

LAYOUT = Layout.of(Small().state_dict())
ARCH = ArchSpec(factory="tests.archs:Small")
FAST = TEST_SETTINGS.model_copy(update={"durable": False})  # kills and races need no fsync; setup time matters
VERSIONS = 5
# The operations under test, each as it is called in the tests; both re-base one or two sets.
OPERATIONS = {
    "prune": lambda store: store.prune("fleet", RetentionPolicy(keep_last=2), grace=0),
    "compact": lambda store: store.compact("fleet", max_depth=1),
}
MUTATING = ("put", "delete", "swap", "move")


def versions(seed: int, count: int) -> list[np.ndarray]:
    """`count` versions of 16 models, each changing two rows of the one before."""
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, (16, LAYOUT.row_nbytes), dtype=np.uint8)
    out = []
    for _ in range(count):
        data = data.copy()
        data[rng.integers(16, size=2), :32] = rng.integers(0, 256, 32, dtype=np.uint8)
        out.append(data)
    return out


def build(url: str, seed: int, settings=FAST, **options) -> tuple[dict[str, np.ndarray], str]:
    """Lineage 'fleet' of VERSIONS update sets and a loose baseline copy of the third (sharing its rows' blob)."""
    store = Store.open(url, settings, **options)
    saved = {store.save(ModelSet(ARCH, LAYOUT, data), approach="update", lineage="fleet"): data
             for data in versions(seed, VERSIONS)}
    rows = list(saved.values())[2]
    loose = store.save(ModelSet(ARCH, LAYOUT, rows), meta={"copy": True})
    saved[loose] = rows
    return saved, loose


def expected_after(operation: str, saved: dict[str, np.ndarray], loose: str) -> dict[str, np.ndarray]:
    """The sets an operation keeps: prune keeps the newest two of the lineage and the loose copy."""
    if operation == "compact":
        return dict(saved)
    ids = list(saved)
    return {set_id: saved[set_id] for set_id in (ids[VERSIONS - 2], ids[VERSIONS - 1], loose)}


def check(url: str, expected: dict[str, np.ndarray], **options) -> Store:
    """Every expected id (old ones through aliases) recovers bit-exactly and `verify` is clean."""
    store = Store.open(url, FAST, **options)
    store.verify()
    for set_id, rows in expected.items():
        assert np.array_equal(store.recover(set_id).data, rows), set_id[:12]
    return store


def _steps(operation: str, url: str, options: dict) -> dict[str, int]:
    """How many calls of each mutating backend method the operation makes on a fresh store."""
    build(url, 0, **options)
    counts = dict.fromkeys(MUTATING, 0)
    store = Store.open(url, FAST, **options)

    class Counting:
        url = store.backend.url

        def __getattr__(self, name):
            real = getattr(store.backend, name)
            if name not in counts:
                return real

            def call(*args, **kwargs):
                counts[name] += 1
                return real(*args, **kwargs)

            return call

    OPERATIONS[operation](Store(Counting(), FAST))
    return counts


def _concurrent(action: str, url: str, options: dict, loose: str, head_rows: np.ndarray, expected: dict) -> Callable[[], None]:
    """The action another writer takes at the forced point; it records what it committed in `expected`."""
    def save() -> None:
        rows = head_rows.copy()
        rows[0, :8] ^= 0xA5
        try:
            set_id = Store.open(url, FAST, **options).save(ModelSet(ARCH, LAYOUT, rows), approach="update", lineage="fleet")
        except ConflictError as exc:  # committed; only the lineage moved on meanwhile
            set_id = re.search(r"set ([0-9a-f]{64}) was saved", str(exc)).group(1)
        expected[set_id] = rows

    def delete() -> None:
        Store.open(url, FAST, **options).delete(loose)
        expected.pop(loose)
        Store.open(url, FAST, **options).collect_garbage(grace=0)

    return {"save": save, "delete": delete, "gc": lambda: Store.open(url, FAST, **options).collect_garbage(grace=0)}[action]


def _interleave(operation: str, base_url: str, options: dict, sample: int | None, seed: int) -> int:
    """Run the operation with each concurrent action at each mutating call (or a seeded sample of them)."""
    steps = _steps(operation, f"{base_url}/probe", options)
    points = [(action, method, n) for action in ("save", "delete", "gc") for method in MUTATING
              for n in range(1, steps[method] + 1)]
    if sample is not None:
        picked = np.random.default_rng(seed).choice(len(points), size=min(sample, len(points)), replace=False)
        points = [points[i] for i in sorted(picked)]
    for k, (action, method, n) in enumerate(points):
        url = f"{base_url}/{operation}-{k}"
        saved, loose = build(url, 100 + k, **options)
        expected = expected_after(operation, saved, loose)
        hook = before(_concurrent(action, url, options, loose, list(saved.values())[VERSIONS - 1], expected))
        store = Store.open(url, FAST, **options)
        OPERATIONS[operation](Store(HookedBackend(store.backend, method, n, hook), FAST))
        check(url, expected, **options)
    return len(points)


@pytest.mark.parametrize("operation", sorted(OPERATIONS))
def test_prune_and_compact_interleaved_with_saves_deletions_and_gc_on_disk(tmp_path, operation):
    """Every mutating step of the operation, with a save, a deletion plus collection, or a collection just before it."""
    assert _interleave(operation, str(tmp_path), {}, None, 0) >= 30


@pytest.mark.parametrize("operation", sorted(OPERATIONS))
def test_prune_and_compact_interleaved_with_saves_deletions_and_gc_on_s3(s3_options, operation):
    """The same on S3 (moto's server), at a seeded sample of the steps: each S3 store costs about a second to build."""
    url = f"s3://{make_s3_bucket(s3_options)}/{uuid.uuid4().hex[:8]}"
    assert _interleave(operation, url, s3_options, 4, seed=3) == 4


# -- kill -9 ---------------------------------------------------------------------------------------


def job_operation(url: str, operation: str) -> None:
    """Prune or compact lineage 'fleet' once (the test kills it on the way)."""
    OPERATIONS[operation](Store.open(url, TEST_SETTINGS))


@pytest.fixture(scope="module")
def spawner():
    """One spawner forking this module's jobs."""
    spawner = Spawner(__name__)
    yield spawner
    spawner.close()


def _running(pid: int) -> bool:
    """Whether the child still works (a finished child stays a zombie until the spawner reaps it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _progress(root: Path, milestone: str, present: int) -> bool:
    """Whether the child has passed a milestone: a new or removed manifest, a first alias, something in the trash."""
    if milestone == "sets":
        return len(list((root / "sets").iterdir())) != present
    folder = root / milestone
    return folder.exists() and any(folder.iterdir())


def _kill_repeatedly(spawner, tmp_path: Path, operation: str, iterations: int, seed: int) -> int:
    """Kill the operation at seeded random points past observable milestones; how many kills left it unfinished."""
    rng = np.random.default_rng(seed)
    unfinished = 0
    for k in range(iterations):
        root = tmp_path / f"{operation}-{k}"
        saved, loose = build(str(root), 200 + k, settings=TEST_SETTINGS)
        expected = expected_after(operation, saved, loose)
        present = len(list((root / "sets").iterdir()))
        milestone = ("sets", "aliases", "trash")[int(rng.integers(2 if operation == "compact" else 3))]
        pid = spawner.spawn("operation", url=str(root), operation=operation)
        deadline = time.monotonic() + 20
        while _running(pid) and not _progress(root, milestone, present) and time.monotonic() < deadline:
            time.sleep(0.0005)
        time.sleep(float(rng.uniform(0.0, 0.004)))
        finished = not _running(pid)
        spawner.kill(pid)
        check(str(root), expected)
        unfinished += not finished and _left_work(root, operation, saved)
        # Running the operation again finishes the work; a last collection leaves nothing behind.
        OPERATIONS[operation](Store.open(str(root), FAST))
        final = check(str(root), expected)
        final.collect_garbage(grace=0)
        assert trash_and_temps(final) == [] and final.backend.list("plans") == [] and final.unreferenced().freed == 0
        # Nothing a stopped prune meant to remove is left over.
        assert {info.id for info in final.list()} == {final.resolve(set_id) for set_id in expected}
        check(str(root), expected)
    return unfinished


def _left_work(root: Path, operation: str, saved: dict[str, np.ndarray]) -> bool:
    """Whether a killed operation left something to do: an old manifest still there, or trash."""
    store = Store.open(str(root), FAST)
    ids = set(store.documents.set_ids())
    return bool(trash_and_temps(store)) or (operation == "prune" and any(s in ids for s in list(saved)[:VERSIONS - 2])) \
        or (operation == "compact" and len(store.documents.aliases.names()) < 2)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("operation", sorted(OPERATIONS))
def test_kill_9_during_prune_and_compact_keeps_every_kept_set(spawner, tmp_path, operation):
    unfinished = _kill_repeatedly(spawner, tmp_path, operation, 20, seed=31 if operation == "prune" else 32)
    # The kills must land inside the operation, not only after it, for the test to mean anything.
    assert unfinished >= 5, f"only {unfinished} of 20 kills landed inside {operation}"
