"""A store on any fsspec file system; on S3, creates are conditional and swaps compare ETags."""

from __future__ import annotations

import contextlib
import errno
import hashlib
from typing import IO, Any

import fsspec

from .backend_errors import GuardedFile, configured_endpoint, missing, remote_errors
from .backend import Buffer, Entry
from .errors import ConflictError

__all__ = ["FsspecBackend"]

_ASK_FIRST_BYTES = 1 << 20


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
            # On S3 the create is conditional anyway; asking first only saves uploading what is large.
            if exclusive and (not self._is_s3 or len(data) > _ASK_FIRST_BYTES) and self.fs.exists(path):
                return False
            try:
                self.fs.pipe_file(path, bytes(data), **kwargs)
            except FileExistsError:
                return False
        return True

    def get(self, key: str, at_most: int | None = None, offset: int = 0) -> bytes:
        with self._guard(key, "read"):
            try:
                # With a bound, one ranged GET: the size is known from what comes back, without a HEAD first.
                end = None if at_most is None else offset + at_most
                return self.fs.cat_file(self._path(key), start=offset if offset or end is not None else None, end=end)
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
        with self._guard(key, "delete"), contextlib.suppress(FileNotFoundError):
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
        # A plain PUT's ETag is the MD5 of its bytes: one conditional PUT on that ETag is the whole swap.
        if self._put_if_match(path, new, f'"{hashlib.md5(expected).hexdigest()}"'):
            return
        # Another ETag: moved meanwhile, or written in a way whose ETag is not the MD5; the content decides.
        info = self.fs.info(path, refresh=True)
        if self.get(key) != expected or not self._put_if_match(path, new, info["ETag"]):
            raise ConflictError(f"{key} was moved by another writer; read it again and retry")

    def _put_if_match(self, path: str, data: bytes, etag: str) -> bool:
        try:
            self.fs.pipe_file(path, data, IfMatch=etag)
        except OSError as exc:
            if exc.errno != errno.EINVAL:  # s3fs maps only HTTP 412 Precondition Failed to EINVAL
                raise
            return False
        return True



    def scan(self, prefix: str) -> list[Entry]:
        with self._guard(prefix, "list"):
            try:
                found = self.fs.find(self._path(prefix), detail=True)
            except FileNotFoundError:
                return []
        root = self.root.lstrip("/") + "/"  # memory paths start with "/", S3 paths with the bucket
        return [Entry(path.lstrip("/").removeprefix(root), int(info.get("size") or 0), _mtime(info))
                for path, info in found.items() if info.get("type", "file") == "file"]

    def delete_many(self, keys: list[str]) -> None:
        if not self._is_s3:
            for key in keys:
                self.delete(key)
            return
        if keys:
            with self._guard(keys[0], "delete"):
                self.fs.rm([self._path(key) for key in keys])  # DeleteObjects: absent keys are no error

    def move(self, key: str, target: str) -> bool:
        with self._guard(key, "rename"):
            try:
                self.fs.copy(self._path(key), self._path(target))  # server-side on S3
            except FileNotFoundError:
                return False
            self.fs.rm_file(self._path(key))
        return True

    def abort_uploads(self, older_than: float) -> int:
        if not self._is_s3:
            return 0
        bucket, _, prefix = self.root.partition("/")
        aborted = 0
        with self._guard("", "list uploads"):
            for upload in self.fs.list_multipart_uploads(bucket):
                if upload["Key"].startswith(prefix.rstrip("/") + "/") and upload["Initiated"].timestamp() < older_than:
                    self.fs.call_s3("abort_multipart_upload", Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
                    aborted += 1
        return aborted


def _mtime(info: dict) -> float:
    """Modification time of an fsspec entry: S3 reports `LastModified`, the memory file system `created`."""
    stamp = info.get("LastModified") or info.get("mtime") or info.get("created") or 0.0
    return stamp.timestamp() if hasattr(stamp, "timestamp") else float(stamp)
