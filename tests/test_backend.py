"""Backends: create-only writes and compare-and-swap on every backend (S3 through moto's server); clear failures."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import uuid

import numpy as np
import pytest

from mmstore import ArchSpec, ModelSet, NotFoundError, Store
from mmstore.backend import open_backend
from mmstore.errors import AccessDeniedError, ConflictError, StorageError, StoreUnreachableError, StoreURLError
from mmstore.layout import Layout

from .archs import Small
from .conftest import TEST_SETTINGS


def test_exclusive_put_never_replaces(store):
    backend = store.backend
    assert backend.put("objects/a", b"first", exclusive=True)
    assert not backend.put("objects/a", b"second", exclusive=True)
    assert backend.get("objects/a") == b"first"
    assert backend.put("objects/a", b"third", exclusive=False)
    assert backend.get("objects/a") == b"third"
    assert backend.list("objects") == ["a"]
    assert backend.size("objects/a") == 5


def test_missing_object_is_not_found(store):
    with pytest.raises(NotFoundError, match="does not exist"):
        store.backend.get("objects/missing")
    assert store.backend.list("nothing-here") == []


def test_swap_is_compare_and_swap(store):
    backend = store.backend
    backend.swap("refs/x", None, b"one")
    with pytest.raises(ConflictError):
        backend.swap("refs/x", None, b"two")
    with pytest.raises(ConflictError):
        backend.swap("refs/x", b"stale", b"two")
    backend.swap("refs/x", b"one", b"two")
    assert backend.get("refs/x") == b"two"


def test_concurrent_lineage_moves_lose_no_update(local_store):
    backend = local_store.backend
    backend.swap("refs/counter", None, b"0")
    errors: list[Exception] = []

    def bump(times: int) -> None:
        done = 0
        while done < times:
            current = backend.get("refs/counter")
            try:
                backend.swap("refs/counter", current, str(int(current) + 1).encode())
                done += 1
            except ConflictError as exc:
                errors.append(exc)

    threads = [threading.Thread(target=bump, args=(25,)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert backend.get("refs/counter") == b"100"


def test_s3_create_is_conditional_on_the_server(s3_options):
    """If-None-Match is honoured by the endpoint itself, not only by a client-side check."""
    import s3fs

    from .conftest import make_s3_bucket

    bucket = make_s3_bucket(s3_options)
    fs = s3fs.S3FileSystem(**s3_options)
    fs.pipe_file(f"{bucket}/k", b"one", mode="create")
    with pytest.raises(FileExistsError):
        fs.pipe_file(f"{bucket}/k", b"two", mode="create")
    assert fs.cat_file(f"{bucket}/k") == b"one"


# -- failures a user can cause, each an MMStoreError that says what to do -------------------------


def _mount(*args: str) -> None:
    # check=True: where mounting is not permitted the test fails loudly instead of passing vacuously.
    subprocess.run(["mount", *args], check=True, capture_output=True, timeout=30)


@pytest.fixture
def tiny_fs(tmp_path):
    """A real 64 KiB tmpfs mounted at tmp_path/tiny (the tests run as root), unmounted afterwards."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    _mount("-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount))
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=True, timeout=30)


def make_read_only(mount) -> None:
    """Remount a file system mounted by `tiny_fs` read-only."""
    _mount("-o", "remount,ro", str(mount))


def small_set(n: int, seed: int) -> ModelSet:
    """A set of `n` random models of tests.archs:Small (228 bytes each)."""
    layout = Layout.of(Small().state_dict())
    rows = np.random.default_rng(seed).integers(0, 256, (n, layout.row_nbytes), dtype=np.uint8)
    return ModelSet(ArchSpec(factory="tests.archs:Small"), layout, rows)


def _leftovers(root) -> list[str]:
    return [name for _, _, names in os.walk(root) for name in names if ".tmp-" in name]


def test_full_disk_mid_save_is_a_storage_error_and_leaves_no_temp_file(tiny_fs):
    store = Store.open(str(tiny_fs / "store"), TEST_SETTINGS)
    first = store.save(small_set(20, seed=1), lineage="fleet")
    with pytest.raises(StorageError, match="no space left .* free space") as caught:
        store.save(small_set(1000, seed=2), lineage="fleet")  # 228 KB on a 64 KiB disk
    assert isinstance(caught.value, OSError)
    assert _leftovers(tiny_fs) == []
    after = Store.open(str(tiny_fs / "store"), TEST_SETTINGS)
    assert [info.id for info in after.list()] == [first] and after.resolve("fleet") == first


def test_read_only_file_system_refuses_saves_but_reads(tiny_fs):
    store = Store.open(str(tiny_fs / "store"), TEST_SETTINGS)
    first = store.save(small_set(20, seed=3), lineage="fleet")
    make_read_only(tiny_fs)
    with pytest.raises(StorageError, match="read-only file system; remount it read-write"):
        store.save(small_set(20, seed=4), lineage="fleet")
    assert Store.open(str(tiny_fs / "store"), TEST_SETTINGS).verify() == [first]


def test_opening_creates_nothing_and_the_first_write_creates_the_root(tmp_path):
    root = tmp_path / "a" / "b" / "store"
    backend = open_backend(str(root))
    assert backend.list("sets") == [] and not backend.exists("refs/fleet")
    assert not (tmp_path / "a").exists()
    assert backend.put("sets/x.json", b"{}", exclusive=True)
    assert open_backend(str(root)).get("sets/x.json") == b"{}"


def test_list_hides_exactly_the_backends_own_files(tmp_path):
    backend = open_backend(str(tmp_path / "store"))
    backend.put("objects/a", b"1", exclusive=True)
    own = ["a.tmp-" + "0123456789abcdef" * 2, "fleet.lock"]
    users = ["x.tmp-y", "a.tmp-", "lock", "a.locks", "a.tmp-" + "0" * 31]
    for name in own + users:
        (tmp_path / "store" / "objects" / name).write_bytes(b"")
    assert backend.list("objects") == sorted(["a", *users])


def test_a_file_is_not_a_store(tmp_path):
    path = tmp_path / "file"
    path.write_text("not a store")
    with pytest.raises(StoreURLError, match="is a file, not a store directory"):
        open_backend(str(path))


@pytest.mark.parametrize("url, message", [
    ("bogus://x", "scheme 'bogus' .* is not supported"),
    ("http://example.com/store", "web address, but a store must be a directory or an object store bucket"),
    ("https://example.com/store", "web address"),
    ("gs://bucket/store", "scheme 'gs' .* is not supported"),
    ("s3://", "names no bucket"),
    ("s3:///prefix", "names no bucket"),
    ("memory://", "names no bucket or store name"),
    ("file://", "names no directory"),
])
def test_unusable_store_urls_are_refused(url, message):
    with pytest.raises(StoreURLError, match=message):
        open_backend(url)


def test_s3_fails_fast_unless_the_caller_configures_it():
    default = open_backend("s3://bucket/p", key="k", secret="s")
    assert default.fs.config_kwargs["connect_timeout"] <= 5
    assert default.fs.config_kwargs["retries"]["max_attempts"] <= 2
    own = open_backend("s3://bucket/q", key="k", secret="s", config_kwargs={"retries": {"max_attempts": 9}})
    assert own.fs.config_kwargs["retries"] == {"max_attempts": 9}


def test_dead_s3_endpoint_fails_fast_and_clearly(dead_endpoint):
    backend = open_backend("s3://bucket/store", key="k", secret="s", skip_instance_cache=True,
                           client_kwargs={"endpoint_url": dead_endpoint})
    started = time.monotonic()
    with pytest.raises(StoreUnreachableError, match=f"cannot reach the S3 endpoint at {dead_endpoint} .*AWS_ENDPOINT_URL"):
        backend.list("sets")
    assert time.monotonic() - started < 15


def test_s3_without_credentials_is_access_denied(s3_endpoint, monkeypatch):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    backend = open_backend("s3://bucket/store", skip_instance_cache=True, client_kwargs={"endpoint_url": s3_endpoint})
    with pytest.raises(AccessDeniedError, match="no usable credentials .* AWS_ACCESS_KEY_ID"):
        backend.list("sets")


def test_s3_wrong_credentials_are_access_denied(s3_auth_endpoint):
    backend = open_backend("s3://bucket/store", key="wrong", secret="wrong", skip_instance_cache=True,
                           client_kwargs={"endpoint_url": s3_auth_endpoint})
    for operation in (lambda: backend.list("sets"), lambda: backend.get("refs/fleet"),
                      lambda: backend.put("sets/x", b"1", exclusive=True), lambda: backend.swap("refs/f", b"a", b"b")):
        with pytest.raises(AccessDeniedError, match="was denied .*AWS_SECRET_ACCESS_KEY"):
            operation()


def test_s3_missing_bucket_on_write_says_so(s3_options):
    backend = open_backend(f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/store", **s3_options)
    assert backend.list("sets") == []
    with pytest.raises(NotFoundError, match="bucket does not exist.*create the bucket"):
        backend.put("sets/x", b"1", exclusive=True)


@pytest.fixture(scope="session")
def dead_endpoint():
    """An http URL on 127.0.0.1 where nothing listens."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture(scope="session")
def s3_auth_endpoint():
    """A moto S3 server that checks credentials (and so refuses all: it knows no keys), in its own process."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, INITIAL_NO_AUTH_ACTION_COUNT="0")
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while True:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                break
        assert time.monotonic() < deadline and server.poll() is None, "moto server did not start"
        time.sleep(0.2)
    yield f"http://127.0.0.1:{port}"
    server.terminate()
    server.wait(timeout=30)
