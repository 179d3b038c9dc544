"""Store URLs checked, and storage failures turned into one-line MMStoreErrors at the backend boundary."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import IO, Any
from urllib.parse import urlsplit

import fsspec

from .errors import (
    AccessDeniedError,
    MMStoreError,
    NotFoundError,
    StorageError,
    StoreUnreachableError,
    StoreURLError,
)

__all__ = ["open_filesystem", "configured_endpoint", "missing", "local_errors", "remote_errors", "GuardedFile"]

REMOTE_SCHEMES = ("s3", "s3a", "memory")
_KINDS = "give a local directory, file://path, s3://bucket/prefix or memory://name"


def _s3_fail_fast() -> dict[str, Any]:
    # Without these, a dead endpoint costs botocore's 60 s connect timeout times its retries; a store
    # that cannot be reached should say so in seconds. A fresh dict each time: botocore edits it.
    return {"connect_timeout": 5, "retries": {"max_attempts": 2, "mode": "standard"}}


_CREDENTIALS = "check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (or the key= and secret= storage options)"


def _check_url(url: str, protocol: str, rest: str) -> None:
    if protocol in ("http", "https"):
        raise StoreURLError(f"{url} is a web address, but a store must be a directory or an object store bucket; "
                            f"{_KINDS}")
    if protocol not in REMOTE_SCHEMES:
        raise StoreURLError(f"store URL scheme {protocol!r} (in {url}) is not supported; {_KINDS}")
    if not rest.split("/", 1)[0]:
        raise StoreURLError(f"{url} names no bucket or store name; {_KINDS}")


def _fail_fast(protocol: str, options: dict[str, Any]) -> dict[str, Any]:
    if protocol not in ("s3", "s3a"):
        return options
    # Other writers add objects at any time; s3fs answers `info` and `exists` from a cached listing, which would hide them.
    return {"use_listings_cache": False, **options, "config_kwargs": {**_s3_fail_fast(), **options.get("config_kwargs", {})}}


def open_filesystem(url: str, protocol: str, rest: str, options: dict[str, Any]) -> tuple[Any, str]:
    """The fsspec filesystem and root path of a remote store URL, or a StoreURLError saying what to give."""
    _check_url(url, protocol, rest)
    try:
        return fsspec.core.url_to_fs(url, **_fail_fast(protocol, options))
    except (ValueError, ImportError) as exc:
        raise StoreURLError(f"cannot open the store at {url} ({_reason(exc)}); {_KINDS}") from exc


def configured_endpoint(fs: Any) -> str:
    """The S3 endpoint a filesystem talks to, as configured, for messages."""
    client_kwargs = getattr(fs, "client_kwargs", None) or {}
    return (getattr(fs, "endpoint_url", None) or client_kwargs.get("endpoint_url")
            or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or "AWS's default endpoint")


def missing(url: str, key: str) -> NotFoundError:
    """The error for an object the store was asked for but does not hold."""
    return NotFoundError(f"{key} does not exist in the store at {url}; check the id or the store URL")


def _reason(exc: BaseException) -> str:
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return " ".join(text.split())


def _local(exc: OSError, root: str, path: str, action: str) -> MMStoreError:
    reason = _reason(exc)
    if isinstance(exc, PermissionError):
        return AccessDeniedError(f"permission denied to {action} {path} ({reason}); "
                                 f"check the owner and mode of {root} or use another store")
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StorageError(f"no space left to {action} {path} ({reason}); "
                            f"free space on the disk holding {root} or use another store, then retry")
    if exc.errno == errno.EROFS:
        return StorageError(f"cannot {action} {path}: the store at {root} is on a read-only file system; "
                            "remount it read-write or use another store")
    if exc.errno == errno.ENOTDIR:
        return StoreURLError(f"cannot {action} {path}: part of that path is a file, not a directory; "
                             "the store URL must name a directory")
    return StorageError(f"cannot {action} {path} ({reason}); check the disk holding {root} and retry")


@contextmanager
def local_errors(root: str, path: str, action: str) -> Iterator[None]:
    """Turn an OSError raised in the block into an MMStoreError that says what to do."""
    try:
        yield
    except MMStoreError:
        raise
    except OSError as exc:
        raise _local(exc, root, path, action) from exc


def _endpoint(exc: BaseException, configured: str) -> str:
    # botocore names the URL it tried; that is the one to check, whatever the configuration says.
    details = getattr(exc, "kwargs", None)
    raised = details.get("endpoint_url") if isinstance(details, dict) else None
    if not raised:
        return configured
    parts = urlsplit(raised)
    return f"{parts.scheme}://{parts.netloc}"


def _network_errors() -> tuple[type[BaseException], ...]:
    # Imported here: only object stores need them, and `import mmstore` stays fast.
    import aiohttp
    from botocore import exceptions as boto

    return boto.ConnectionError, boto.HTTPClientError, aiohttp.ClientConnectionError, ConnectionError, TimeoutError


def _remote(exc: Exception, where: str, action: str, endpoint: str) -> MMStoreError | None:
    from botocore import exceptions as boto

    reason = _reason(exc)
    if isinstance(exc, (boto.NoCredentialsError, boto.PartialCredentialsError)):
        return AccessDeniedError(f"no usable credentials to {action} {where} ({reason}); {_CREDENTIALS}")
    if isinstance(exc, _network_errors()):
        return StoreUnreachableError(f"cannot reach the S3 endpoint at {_endpoint(exc, endpoint)} ({reason}); "
                                     "check AWS_ENDPOINT_URL and the network")
    if isinstance(exc, PermissionError):
        return AccessDeniedError(f"access to {where} was denied ({reason}); {_CREDENTIALS}")
    if isinstance(exc, FileNotFoundError):
        return NotFoundError(f"cannot {action} {where} ({reason}); create the bucket or correct the store URL")
    if isinstance(exc, boto.ParamValidationError):
        return StoreURLError(f"cannot {action} {where} ({reason}); use s3://bucket/prefix with a valid bucket name")
    if isinstance(exc, (OSError, boto.BotoCoreError, boto.ClientError)):
        return StorageError(f"cannot {action} {where} ({reason}); check the object store and retry")
    return None


@contextmanager
def remote_errors(url: str, key: str, action: str, endpoint: str) -> Iterator[None]:
    """Turn an fsspec, botocore or aiohttp failure raised in the block into an MMStoreError."""
    try:
        yield
    except MMStoreError:
        raise
    except Exception as exc:
        mapped = _remote(exc, f"{url.rstrip('/')}/{key}" if key else url, action, endpoint)
        if mapped is None:
            raise
        raise mapped from exc


class GuardedFile:
    """A binary file for ranged reads whose failures arrive as MMStoreErrors."""

    def __init__(self, file: IO[bytes], guard: Callable[[], AbstractContextManager[None]]):
        self._file, self._guard = file, guard

    def read(self, size: int = -1) -> bytes:
        """Up to `size` bytes (all with -1)."""
        with self._guard():
            return self._file.read(size)

    def readinto(self, buffer: Any) -> int | None:
        """Fill `buffer`; returns the number of bytes read."""
        with self._guard():
            return self._file.readinto(buffer)

    def seek(self, offset: int, whence: int = 0) -> int:
        """Move to `offset`."""
        with self._guard():
            return self._file.seek(offset, whence)

    def tell(self) -> int:
        """The current position."""
        return self._file.tell()

    def close(self) -> None:
        """Release the file."""
        self._file.close()

    def __enter__(self) -> "GuardedFile":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
