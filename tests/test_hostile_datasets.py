"""Dataset references from a forged store: refused before anything is opened, read or requested."""

from __future__ import annotations

import os
import select
import socket
import threading
import time
import uuid

import fsspec
import numpy as np
import pytest

from mmstore import MMStoreError, Settings, Store
from mmstore.digest import digest_bytes
from mmstore.errors import DatasetError, IntegrityError
from mmstore.provenance_records import (
    ChangedModel, ChangeList, DatasetRef, DatasetRoots, check_dataset, decode_changes, encode_changes, read_datasets,
)

from .conftest import TEST_SETTINGS
from .provenance_fleet import SpyExecutor, initial_set

DIGEST = "ab" * 32
DATA = b"the bytes of a small dataset"


def forged(uri: str, size: int = 8, digest: str = DIGEST) -> DatasetRef:
    """A reference as a forged change list would carry it, field checks skipped."""
    return DatasetRef.model_construct(uri=uri, digest=digest, size=size)


@pytest.fixture
def root(tmp_path):
    """The store's dataset location, holding one dataset, and a file beside it that is not a dataset."""
    folder = tmp_path / "store-datasets"
    folder.mkdir()
    (folder / "good.bin").write_bytes(DATA)
    (tmp_path / "secret").write_bytes(DATA)
    return folder


@pytest.fixture
def roots(root):
    """The dataset roots a reader of the store at tmp_path/store uses by default."""
    return DatasetRoots.of(str(root.parent / "store"), Settings())


@pytest.fixture
def opened(monkeypatch):
    """Every local path opened and every fsspec file system made while a test runs."""
    seen: list[str] = []
    real_open, real_filesystem = os.open, fsspec.filesystem

    def spy_open(path, *args, **kwargs):
        seen.append(str(path))
        return real_open(path, *args, **kwargs)

    def spy_filesystem(protocol, **options):
        seen.append(f"{protocol}://")
        return real_filesystem(protocol, **options)

    monkeypatch.setattr(os, "open", spy_open)
    monkeypatch.setattr(fsspec, "filesystem", spy_filesystem)
    return seen


class Listener:
    """A TCP socket listening on 127.0.0.1 that tells whether anything connected to it."""

    def __init__(self) -> None:
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen()
        self.port = self.server.getsockname()[1]

    def connected(self) -> bool:
        """Whether a connection waits to be accepted (checked for half a second)."""
        return bool(select.select([self.server], [], [], 0.5)[0])


@pytest.fixture
def listener():
    """A listening socket on 127.0.0.1, closed after the test."""
    server = Listener()
    yield server
    server.server.close()


def refuse(refs: list[DatasetRef], roots: DatasetRoots) -> DatasetError:
    """The error reading `refs` raises; it must be a DatasetError and come fast."""
    start = time.monotonic()
    with pytest.raises(DatasetError) as caught:
        read_datasets(refs, roots)
    assert time.monotonic() - start < 5
    assert "\n" not in str(caught.value)
    return caught.value


def test_a_dataset_in_the_store_location_is_read(root, roots, opened):
    ref = DatasetRef(uri=str(root / "good.bin"), digest=digest_bytes(DATA), size=len(DATA))
    assert read_datasets([ref], roots) == [DATA]
    assert opened == [os.path.realpath(root / "good.bin")]


@pytest.mark.parametrize("scheme", ["http", "https", "ftp"])
def test_network_urls_make_no_request(scheme, listener, roots, opened):
    url = f"{scheme}://127.0.0.1:{listener.port}/x"
    assert "never reads" in str(refuse([forged(url)], roots))
    # Not even when a root names that server.
    with pytest.raises(DatasetError, match="never reads"):
        read_datasets([forged(url)], DatasetRoots((url.rsplit("/", 1)[0],), 1 << 20))
    assert not listener.connected()
    assert opened == []


@pytest.mark.parametrize("uri", [
    "/etc/hostname", "file:///etc/passwd", "/etc", "simplecache::file:///etc/passwd", "memory://elsewhere/x",
    "s3://some-bucket/x.npz",
])
def test_references_outside_the_roots_are_refused_unopened(uri, roots, opened):
    assert "outside the dataset roots" in str(refuse([forged(uri)], roots))
    assert opened == []


def test_outside_refusals_do_not_reveal_whether_a_file_exists(root, roots):
    existing, missing = str(root.parent / "secret"), str(root.parent / f"absent-{uuid.uuid4().hex}")
    messages = [str(refuse([forged(uri)], roots)).replace(uri, "X") for uri in (existing, missing)]
    assert messages[0] == messages[1]


def test_dot_dot_escapes_are_refused(root, roots, opened):
    for uri in (f"{root}/../secret", f"file://{root}/../secret", "memory://provenance-datasets/../x"):
        assert "'..'" in str(refuse([forged(uri, size=len(DATA), digest=digest_bytes(DATA))], roots))
    assert opened == []


def test_a_symlink_inside_the_root_that_points_outside_is_refused(root, roots, opened):
    (root / "link.bin").symlink_to(root.parent / "secret")
    (root / "inner.bin").symlink_to(root / "good.bin")
    ref = forged(str(root / "link.bin"), size=len(DATA), digest=digest_bytes(DATA))
    assert "outside the dataset roots" in str(refuse([ref], roots))
    assert opened == []
    # A link that stays inside the root is read, through its target.
    inner = DatasetRef(uri=str(root / "inner.bin"), digest=digest_bytes(DATA), size=len(DATA))
    assert read_datasets([inner], roots) == [DATA]


def test_a_fifo_inside_the_root_is_refused_without_blocking(root, roots, opened):
    os.mkfifo(root / "fifo")
    outcome: list[BaseException] = []

    def read() -> None:
        try:
            read_datasets([forged(str(root / "fifo"), size=0, digest=digest_bytes(b""))], roots)
        except BaseException as exc:
            outcome.append(exc)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(5)
    assert not reader.is_alive()
    assert isinstance(outcome[0], DatasetError) and "not a regular file" in str(outcome[0])
    assert opened == []


@pytest.mark.parametrize("size", [10**15, 8])
def test_dev_zero_is_never_read(size, opened):
    roots = DatasetRoots(("/dev",), 1 << 30)
    message = str(refuse([forged("/dev/zero", size=size)], roots))
    assert ("more than max_dataset_bytes" if size > 1 << 30 else "not a regular file") in message
    assert "outside the dataset roots" in str(refuse([forged("/dev/zero", size=size)], DatasetRoots(("/tmp/d",), 1 << 30)))
    assert opened == []


def test_a_claimed_size_beyond_the_bound_is_refused_before_any_check(root, opened):
    roots = DatasetRoots((str(root),), 1 << 20)
    assert "MMSTORE_MAX_DATASET_BYTES" in str(refuse([forged(str(root / "good.bin"), size=(1 << 20) + 1)], roots))
    assert opened == []


def test_a_size_other_than_the_file_s_is_refused_before_reading(root, roots, opened):
    ref = forged(str(root / "good.bin"), size=len(DATA) + 1, digest=digest_bytes(DATA))
    assert "changed since the set was saved" in str(refuse([ref], roots))
    assert opened == []


def test_missing_dataset_inside_the_root_is_named(root, roots):
    assert "is missing" in str(refuse([forged(str(root / "gone.bin"))], roots))


@pytest.mark.parametrize("fields", [
    {"uri": "/x/\x00/y"}, {"uri": "/x/\ny"}, {"uri": "/" + "a" * 5000}, {"uri": ""},
    {"size": -1}, {"digest": "AB" * 32}, {"digest": "ab" * 31}, {"digest": "ab" * 32 + "\n"},
])
def test_malformed_references_are_refused(fields, roots, opened):
    ref = {"uri": "/x/y", "digest": DIGEST, "size": 8, **fields}
    assert "malformed" in str(refuse([forged(**ref)], roots))
    # A change list that carries one does not decode.
    entry = ChangedModel.model_construct(model=0, recipe="full", dataset=forged(**ref), tensors={})
    with pytest.raises(IntegrityError, match="change list"):
        decode_changes(encode_changes(ChangeList.model_construct(schema_version=1, models=(entry,))), "f" * 64, 1 << 20)
    with pytest.raises(ValueError):
        DatasetRef(**ref)
    assert opened == []


def test_every_reference_is_checked_before_any_is_read(root, roots, opened):
    good = DatasetRef(uri=str(root / "good.bin"), digest=digest_bytes(DATA), size=len(DATA))
    refuse([good, forged("/etc/hostname")], roots)
    assert opened == []


def test_memory_datasets_are_confined_to_their_root(opened):
    fs = fsspec.filesystem("memory")
    base = f"memory://hostile-{uuid.uuid4().hex}"
    fs.pipe({f"{base}/in/a.bin": DATA, f"{base}/in-not/b.bin": DATA})
    roots = DatasetRoots((f"{base}/in",), 1 << 20)
    good = DatasetRef(uri=f"{base}/in/a.bin", digest=digest_bytes(DATA), size=len(DATA))
    assert read_datasets([good], roots) == [DATA]
    sibling = forged(f"{base}/in-not/b.bin", size=len(DATA), digest=digest_bytes(DATA))
    assert "outside the dataset roots" in str(refuse([sibling], roots))
    assert "changed" in str(refuse([forged(good.uri, size=len(DATA) - 1, digest=good.digest)], roots))
    assert "not a file" in str(refuse([forged(f"{base}/in", size=0)], DatasetRoots((base,), 1 << 20)))


def test_roots_come_from_the_settings_or_beside_the_store(monkeypatch):
    assert DatasetRoots.of("s3://b/fleet/", Settings()).roots == ("s3://b/fleet-datasets",)
    monkeypatch.setenv("MMSTORE_DATASET_ROOTS", "/data/a, s3://b/c")
    monkeypatch.setenv("MMSTORE_MAX_DATASET_BYTES", "1000")
    assert DatasetRoots.of("/stores/fleet", Settings()) == DatasetRoots(("/data/a", "s3://b/c"), 1000)


def test_a_store_naming_a_file_outside_its_roots_trains_nothing(tmp_path):
    # The writer of the store trusted a location its readers do not.
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "cell.npz").write_bytes(DATA)
    writer = TEST_SETTINGS.model_copy(update={"dataset_roots": (str(outside),)})
    store = Store.open(str(tmp_path / "store"), writer)
    base = initial_set(4, seed=7)
    store.save(base, approach="provenance", lineage="fleet")
    changed = base.data.copy()
    changed[2, :4] ^= np.uint8(1)
    ref = DatasetRef(uri=str(outside / "cell.npz"), digest=digest_bytes(DATA), size=len(DATA))
    record = {"trainer": "workloads.training:train_from_bytes", "recipes": {"full": {}}, "changes": {2: ("full", ref)},
              "environment": "{}"}
    set_id = store.save(type(base)(base.arch, base.layout, changed), approach="provenance", lineage="fleet", provenance=record)
    reader = Store(store.backend, TEST_SETTINGS.model_copy(update={"dataset_roots": ()}))
    executor = SpyExecutor()
    with pytest.raises(DatasetError, match="outside the dataset roots.*MMSTORE_DATASET_ROOTS"):
        reader.recover(set_id, executor=executor)
    assert executor.trained == []
    with pytest.raises(MMStoreError):
        reader.recover(set_id, models=[2], executor=executor)
    assert reader.recover(set_id, models=[0, 1], executor=executor).equals(base.select([0, 1]))

