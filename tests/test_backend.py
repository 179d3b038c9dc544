"""Backends: create-only writes and compare-and-swap, on every backend (S3 through moto's server)."""

from __future__ import annotations

import threading

import pytest

from mmstore import NotFoundError
from mmstore.errors import ConflictError


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
