"""A store on a local disk: temp file + fsync + atomic link/rename + directory fsync."""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import stat
import uuid
from typing import IO

from .backend_errors import GuardedFile, local_errors, missing
from .backend import Buffer, Entry
from .errors import ConflictError, FormatError, StoreURLError

__all__ = ["LocalBackend"]

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

    def get(self, key: str, at_most: int | None = None, offset: int = 0) -> bytes:
        path = self._contained(key)
        with self._guard(path, "read"):
            try:
                with open(path, "rb") as f:
                    f.seek(offset)
                    return f.read(-1 if at_most is None else at_most)
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

    def delete_many(self, keys: list[str]) -> None:
        for key in keys:
            self.delete(key)

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



    def scan(self, prefix: str) -> list[Entry]:
        top = self._path(prefix)
        entries = []
        with self._guard(top, "list"):
            for directory, _, names in os.walk(top):
                for name in names:
                    path = os.path.join(directory, name)
                    with contextlib.suppress(FileNotFoundError):  # removed meanwhile: nothing to report
                        info = os.lstat(path)
                        key = os.path.relpath(path, self.root).replace(os.sep, "/")
                        entries.append(Entry(key, info.st_size, info.st_mtime))
        return entries

    def move(self, key: str, target: str) -> bool:
        source, destination = self._path(key), self._path(target)
        with self._guard(source, "rename"):
            self._make_dirs(os.path.dirname(destination))
            try:
                os.link(source, destination)  # never replaces what is at `target`
            except FileNotFoundError:
                return False
            except FileExistsError:
                pass
            with contextlib.suppress(FileNotFoundError):  # another process finished the same move
                os.unlink(source)
            self._fsync_dir(os.path.dirname(source))
            if os.path.dirname(source) != os.path.dirname(destination):
                self._fsync_dir(os.path.dirname(destination))
        return True

    def abort_uploads(self, older_than: float) -> int:
        return 0  # local writes go through temporary files, which a scan sees
