"""Object I/O under one root: local disk (atomic, fsynced), S3 (conditional writes), memory."""

from __future__ import annotations

from dataclasses import dataclass
from typing import IO, Any, Protocol

from .backend_errors import open_filesystem
from .errors import StoreURLError

__all__ = ["Backend", "Entry", "LocalBackend", "FsspecBackend", "open_backend"]

Buffer = bytes | bytearray | memoryview


@dataclass(frozen=True)
class Entry:
    """One stored object as a scan sees it: its key, size and last modification (seconds since the epoch)."""

    key: str
    size: int
    mtime: float


class Backend(Protocol):
    """The storage operations a store needs; keys are '/'-separated paths below the root.

    Every failure is an MMStoreError: NotFoundError, ConflictError, StoreURLError, or a StorageError
    (an OSError; StoreUnreachableError and AccessDeniedError are its kinds) that says what to do.
    """

    url: str

    def put(self, key: str, data: Buffer, *, exclusive: bool) -> bool:
        """Write `data` atomically; with `exclusive`, do nothing and return False if `key` exists."""

    def get(self, key: str, at_most: int | None = None, offset: int = 0) -> bytes:
        """The object from `offset` on (with `at_most`, at most that many bytes), or NotFoundError."""

    def open(self, key: str) -> IO[bytes]:
        """A binary file object for ranged reads (`seek` + `readinto`)."""

    def exists(self, key: str) -> bool:
        """Whether `key` exists."""

    def size(self, key: str) -> int:
        """The object's size in bytes."""

    def list(self, prefix: str) -> list[str]:
        """Keys directly below `prefix` (names only)."""

    def delete(self, key: str) -> None:
        """Remove `key` if it exists."""

    def delete_many(self, keys: list[str]) -> None:
        """Remove every key that exists (on S3, one request per thousand keys)."""

    def swap(self, key: str, expected: bytes | None, new: bytes) -> None:
        """Replace `key`'s content with `new` if it is `expected` (None: absent), else ConflictError."""

    def scan(self, prefix: str) -> list[Entry]:
        """Every object below `prefix`, at any depth, the backend's own temporary files included."""

    def move(self, key: str, target: str) -> bool:
        """Give `key`'s object the name `target`; False if `key` is gone.

        Keys are content-addressed where this is used: if `target` exists, it holds the same bytes
        and stays as it is, and `key` is removed.
        """

    def abort_uploads(self, older_than: float) -> int:
        """Abort unfinished multipart uploads begun before `older_than` (epoch seconds); how many."""


from .backend_fsspec import FsspecBackend  # noqa: E402  (the implementations import the protocol's types)
from .backend_local import LocalBackend  # noqa: E402


def open_backend(url: str, durable: bool = True, **storage_options: Any) -> Backend:
    """The backend for a store URL: a local path or file:// URL, s3://bucket/prefix, memory://name."""
    protocol, separator, rest = url.partition("://")
    if not separator:
        return LocalBackend(url, durable)
    if protocol == "file":
        if not rest:
            raise StoreURLError(f"{url} names no directory; give file:///path/to/store")
        return LocalBackend(rest, durable)
    fs, root = open_filesystem(url, protocol, rest, storage_options)
    return FsspecBackend(fs, root, url)
