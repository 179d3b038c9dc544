"""Object I/O under one root: local disk (atomic, fsynced), S3 (conditional writes), memory."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import stat
import uuid
from typing import IO, Any, Protocol

import fsspec

from .backend_errors import GuardedFile, configured_endpoint, local_errors, missing, open_filesystem, remote_errors
from .errors import ConflictError, FormatError, StoreURLError

__all__ = ["Backend", "LocalBackend", "FsspecBackend", "open_backend"]

Buffer = bytes | bytearray | memoryview


class Backend(Protocol):
    """The storage operations a store needs; keys are '/'-separated paths below the root.

    Every failure is an MMStoreError: NotFoundError, ConflictError, StoreURLError, or a StorageError
    (an OSError; StoreUnreachableError and AccessDeniedError are its kinds) that says what to do.
    """

    url: str

    def put(self, key: str, data: Buffer, *, exclusive: bool) -> bool:
        """Write `data` atomically; with `exclusive`, do nothing and return False if `key` exists."""

    def get(self, key: str) -> bytes:
        """The whole object, or NotFoundError."""

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

    def swap(self, key: str, expected: bytes | None, new: bytes) -> None:
        """Replace `key`'s content with `new` if it is `expected` (None: absent), else ConflictError."""


# The backend's own files beside the objects: `<name>.tmp-<uuid hex>` while writing, `<name>.lock`
# guarding a compare-and-swap. Store keys never take these forms, so hiding them hides nothing else.
_INTERNAL = re.compile(r".+\.(lock|tmp-[0-9a-f]{32})")


def _discard(path: str) -> None:
    # A failed cleanup must not hide the error that led here; a leftover temp file stays hidden.
    with contextlib.suppress(OSError):
        os.unlink(path)


class LocalBackend:
    """A directory on a local disk: temp file + fsync + atomic link/rename + directory fsync."""

    def __init__(self, root: str, durable: bool = True):
        self.root = os.path.abspath(root)
        self.url = self.root
        self.durable = durable
        # Opening never creates anything: the directory appears with the first write.
        if os.path.exists(self.root) and not os.path.isdir(self.root):
            raise StoreURLError(f"{self.root} is a file, not a store directory; give a directory or a new path")

    def _path(self, key: str) -> str:
        return os.path.join(self.root, *key.split("/"))

    def _contained(self, key: str) -> str:
        """The path of `key` for reading, if it resolves to a regular file inside the store.

        A store copied from elsewhere may hold symbolic links or device files; following them would
        read outside the store (or block on a pipe), so they are refused before anything is opened.
        """
        path = self._path(key)
        real = os.path.realpath(path)
        try:
            regular = stat.S_ISREG(os.stat(real).st_mode)
        except OSError:  # absent: the read that follows reports it
            return path
        if not regular or not real.startswith(os.path.realpath(self.root) + os.sep):
            raise FormatError(
                f"{key} in {self.url} is a link leading out of the store or not a regular file; "
                "the store was forged or damaged: restore it from a backup"
            )
        return path

    def _fsync_dir(self, path: str) -> None:
        if self.durable:
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def _make_dirs(self, directory: str) -> None:
        absent = []
        while not os.path.isdir(directory):
            absent.append(directory)
            directory = os.path.dirname(directory)
        for path in reversed(absent):  # the store's root first, when this is its first write
            with contextlib.suppress(FileExistsError):  # another writer made it meanwhile
                os.mkdir(path)
            self._fsync_dir(os.path.dirname(path))

    def _write_file(self, path: str, data: Buffer) -> None:
        with open(path, "wb") as f:
            f.write(data)
            if self.durable:
                f.flush()
                os.fsync(f.fileno())

    def _guard(self, path: str, action: str) -> contextlib.AbstractContextManager[None]:
        return local_errors(self.root, path, action)

    def put(self, key: str, data: Buffer, *, exclusive: bool) -> bool:
        path = self._path(key)
        with self._guard(path, "write"):
            if exclusive and os.path.exists(path):
                return False
            self._make_dirs(os.path.dirname(path))
            if not self._commit(path, data, exclusive):
                return False
            self._fsync_dir(os.path.dirname(path))
        return True

    def _commit(self, path: str, data: Buffer, exclusive: bool) -> bool:
        temp = f"{path}.tmp-{uuid.uuid4().hex}"
        try:
            self._write_file(temp, data)
            if exclusive:
                os.link(temp, path)  # fails if `path` appeared meanwhile: never replaces
            else:
                os.replace(temp, path)
        except FileExistsError:
            return False
        finally:
            _discard(temp)
        return True

    def get(self, key: str) -> bytes:
        path = self._contained(key)
        with self._guard(path, "read"):
            try:
                with open(path, "rb") as f:
                    return f.read()
            except FileNotFoundError:
                raise missing(self.url, key) from None

    def open(self, key: str) -> IO[bytes]:
        path = self._contained(key)
        with self._guard(path, "read"):
            try:
                file = open(path, "rb", buffering=0)
            except FileNotFoundError:
                raise missing(self.url, key) from None
        return GuardedFile(file, lambda: self._guard(path, "read"))

    def exists(self, key: str) -> bool:
        return os.path.exists(self._path(key))

    def size(self, key: str) -> int:
        path = self._contained(key)
        with self._guard(path, "read"):
            try:
                return os.path.getsize(path)
            except FileNotFoundError:
                raise missing(self.url, key) from None

    def list(self, prefix: str) -> list[str]:
        path = self._path(prefix)
        with self._guard(path, "list"):
            try:
                names = os.listdir(path)
            except FileNotFoundError:
                return []
        return sorted(name for name in names if not _INTERNAL.fullmatch(name))

    def delete(self, key: str) -> None:
        path = self._path(key)
        with self._guard(path, "delete"):
            try:
                os.unlink(path)
            except FileNotFoundError:
                return
            self._fsync_dir(os.path.dirname(path))

    def swap(self, key: str, expected: bytes | None, new: bytes) -> None:
        lock_path = self._path(key) + ".lock"
        with self._guard(lock_path, "lock"):
            self._make_dirs(os.path.dirname(lock_path))
            with open(lock_path, "a+b") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                current = self.get(key) if self.exists(key) else None
                if current != expected:
                    raise ConflictError(f"{key} was moved by another writer; read it again and retry")
                self.put(key, new, exclusive=False)


class FsspecBackend:
    """Any fsspec filesystem; on S3, creates are conditional (`If-None-Match`) and swaps `If-Match`."""

    def __init__(self, fs: fsspec.AbstractFileSystem, root: str, url: str):
        self.fs, self.root, self.url = fs, root.rstrip("/"), url
        self._is_s3 = "s3" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))
        self.endpoint = configured_endpoint(fs)

    def _path(self, key: str) -> str:
        return f"{self.root}/{key}"

    def _guard(self, key: str, action: str) -> contextlib.AbstractContextManager[None]:
        return remote_errors(self.url, key, action, self.endpoint)

    def put(self, key: str, data: Buffer, *, exclusive: bool) -> bool:
        path = self._path(key)
        kwargs: dict[str, Any] = {"mode": "create"} if exclusive and self._is_s3 else {}
        with self._guard(key, "write"):
            if exclusive and self.fs.exists(path):
                return False
            try:
                self.fs.pipe_file(path, bytes(data), **kwargs)
            except FileExistsError:
                return False
        return True

    def get(self, key: str) -> bytes:
        with self._guard(key, "read"):
            try:
                return self.fs.cat_file(self._path(key))
            except FileNotFoundError:
                raise missing(self.url, key) from None

    def open(self, key: str) -> IO[bytes]:
        with self._guard(key, "read"):
            try:
                file = self.fs.open(self._path(key), "rb")
            except FileNotFoundError:
                raise missing(self.url, key) from None
        return GuardedFile(file, lambda: self._guard(key, "read"))

    def exists(self, key: str) -> bool:
        with self._guard(key, "read"):
            return self.fs.exists(self._path(key))

    def size(self, key: str) -> int:
        with self._guard(key, "read"):
            try:
                return int(self.fs.size(self._path(key)))
            except FileNotFoundError:
                raise missing(self.url, key) from None

    def list(self, prefix: str) -> list[str]:
        with self._guard(prefix, "list"):
            try:
                entries = self.fs.ls(self._path(prefix), detail=False, refresh=True)
            except FileNotFoundError:
                return []
        return sorted(e.rstrip("/").rsplit("/", 1)[-1] for e in entries)

    def delete(self, key: str) -> None:
        with self._guard(key, "delete"):
            if self.fs.exists(self._path(key)):
                self.fs.rm_file(self._path(key))

    def swap(self, key: str, expected: bytes | None, new: bytes) -> None:
        path = self._path(key)
        with self._guard(key, "write"):
            if self._is_s3:
                self._swap_s3(path, key, expected, new)
                return
            current = self.get(key) if self.exists(key) else None
            if current != expected:
                raise ConflictError(f"{key} was moved by another writer; read it again and retry")
            self.fs.pipe_file(path, new)

    def _swap_s3(self, path: str, key: str, expected: bytes | None, new: bytes) -> None:
        if expected is None:
            if not self.put(key, new, exclusive=True):
                raise ConflictError(f"{key} was created by another writer; read it again and retry")
            return
        info = self.fs.info(path, refresh=True)
        if self.get(key) != expected:
            raise ConflictError(f"{key} was moved by another writer; read it again and retry")
        try:
            self.fs.pipe_file(path, new, IfMatch=info["ETag"])
        except OSError as exc:
            if exc.errno != errno.EINVAL:  # s3fs maps only HTTP 412 Precondition Failed to EINVAL
                raise
            raise ConflictError(f"{key} was moved by another writer; read it again and retry") from exc


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
