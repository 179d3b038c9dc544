"""Object I/O under one root: local disk (atomic, fsynced), S3 (conditional writes), memory."""

from __future__ import annotations

import fcntl
import os
import uuid
from typing import IO, Any, Protocol

import fsspec

from .errors import ConflictError, NotFoundError

__all__ = ["Backend", "LocalBackend", "FsspecBackend", "open_backend"]

Buffer = bytes | bytearray | memoryview


class Backend(Protocol):
    """The storage operations a store needs; keys are '/'-separated paths below the root."""

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


def _missing(url: str, key: str) -> NotFoundError:
    return NotFoundError(f"{key} does not exist in the store at {url}; check the id or the store URL")


class LocalBackend:
    """A directory on a local disk: temp file + fsync + atomic link/rename + directory fsync."""

    def __init__(self, root: str, durable: bool = True):
        self.root = os.path.abspath(root)
        self.url = self.root
        self.durable = durable
        os.makedirs(self.root, exist_ok=True)

    def _path(self, key: str) -> str:
        return os.path.join(self.root, *key.split("/"))

    def _fsync_dir(self, path: str) -> None:
        if self.durable:
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def _write_temp(self, path: str, data: Buffer) -> str:
        directory = os.path.dirname(path)
        if not os.path.isdir(directory):
            os.makedirs(directory, exist_ok=True)
            self._fsync_dir(os.path.dirname(directory))
        temp = f"{path}.tmp-{uuid.uuid4().hex}"
        with open(temp, "wb") as f:
            f.write(data)
            if self.durable:
                f.flush()
                os.fsync(f.fileno())
        return temp

    def put(self, key: str, data: Buffer, *, exclusive: bool) -> bool:
        path = self._path(key)
        if exclusive and os.path.exists(path):
            return False
        temp = self._write_temp(path, data)
        try:
            if exclusive:
                os.link(temp, path)  # fails if `path` appeared meanwhile: never replaces
            else:
                os.replace(temp, path)
        except FileExistsError:
            return False
        finally:
            if os.path.exists(temp):
                os.unlink(temp)
        self._fsync_dir(os.path.dirname(path))
        return True

    def get(self, key: str) -> bytes:
        try:
            with open(self._path(key), "rb") as f:
                return f.read()
        except FileNotFoundError:
            raise _missing(self.url, key) from None

    def open(self, key: str) -> IO[bytes]:
        try:
            return open(self._path(key), "rb", buffering=0)
        except FileNotFoundError:
            raise _missing(self.url, key) from None

    def exists(self, key: str) -> bool:
        return os.path.exists(self._path(key))

    def size(self, key: str) -> int:
        try:
            return os.path.getsize(self._path(key))
        except FileNotFoundError:
            raise _missing(self.url, key) from None

    def list(self, prefix: str) -> list[str]:
        try:
            return sorted(n for n in os.listdir(self._path(prefix)) if ".tmp-" not in n)
        except FileNotFoundError:
            return []

    def delete(self, key: str) -> None:
        try:
            os.unlink(self._path(key))
        except FileNotFoundError:
            return
        self._fsync_dir(os.path.dirname(self._path(key)))

    def swap(self, key: str, expected: bytes | None, new: bytes) -> None:

        lock_path = self._path(key) + ".lock"
        os.makedirs(os.path.dirname(lock_path), exist_ok=True)
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

    def _path(self, key: str) -> str:
        return f"{self.root}/{key}"

    def put(self, key: str, data: Buffer, *, exclusive: bool) -> bool:
        path = self._path(key)
        if exclusive and self.fs.exists(path):
            return False
        kwargs: dict[str, Any] = {"mode": "create"} if exclusive and self._is_s3 else {}
        try:
            self.fs.pipe_file(path, bytes(data), **kwargs)
        except FileExistsError:
            return False
        return True

    def get(self, key: str) -> bytes:
        try:
            return self.fs.cat_file(self._path(key))
        except FileNotFoundError:
            raise _missing(self.url, key) from None

    def open(self, key: str) -> IO[bytes]:
        try:
            return self.fs.open(self._path(key), "rb")
        except FileNotFoundError:
            raise _missing(self.url, key) from None

    def exists(self, key: str) -> bool:
        return self.fs.exists(self._path(key))

    def size(self, key: str) -> int:
        try:
            return int(self.fs.size(self._path(key)))
        except FileNotFoundError:
            raise _missing(self.url, key) from None

    def list(self, prefix: str) -> list[str]:
        try:
            entries = self.fs.ls(self._path(prefix), detail=False, refresh=True)
        except FileNotFoundError:
            return []
        return sorted(e.rstrip("/").rsplit("/", 1)[-1] for e in entries)

    def delete(self, key: str) -> None:
        if self.fs.exists(self._path(key)):
            self.fs.rm_file(self._path(key))

    def swap(self, key: str, expected: bytes | None, new: bytes) -> None:
        path = self._path(key)
        if not self._is_s3:
            current = self.get(key) if self.exists(key) else None
            if current != expected:
                raise ConflictError(f"{key} was moved by another writer; read it again and retry")
            self.fs.pipe_file(path, new)
            return
        self._swap_s3(path, key, expected, new)

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
        except OSError as exc:  # s3fs maps HTTP 412 Precondition Failed to an OSError
            raise ConflictError(f"{key} was moved by another writer; read it again and retry") from exc


def open_backend(url: str, durable: bool = True, **storage_options: Any) -> Backend:
    """The backend for a store URL: a local path or file:// URL, s3://bucket/prefix, memory://name."""
    protocol, _, rest = url.partition("://")
    if not rest:
        return LocalBackend(url, durable)
    if protocol == "file":
        return LocalBackend(rest, durable)
    fs, root = fsspec.core.url_to_fs(url, **storage_options)
    return FsspecBackend(fs, root, url)
