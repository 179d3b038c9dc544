"""Content digests: BLAKE3 over fixed-size chunks, combined into one Merkle root.

A root lets a reader verify any byte range by hashing only the chunks it touches, and lets a
writer hash chunks on both cores at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from functools import lru_cache

import blake3

__all__ = ["CHUNK_SIZE", "chunk_ranges", "chunk_digests", "chunk_digest_future", "root_digest", "digest_bytes", "Hasher"]

CHUNK_SIZE = 4 << 20
_ROOT_DOMAIN = b"mmstore/chunked-blake3/v1"


@lru_cache(maxsize=1)
def _pool() -> ThreadPoolExecutor:
    # BLAKE3 releases the GIL, so two threads hash two chunks at once on this 2-core class of machine.
    return ThreadPoolExecutor(max_workers=2, thread_name_prefix="mmstore-hash")


def _hash_one(chunk: memoryview) -> bytes:
    return blake3.blake3(chunk).digest()


def chunk_ranges(size: int, chunk_size: int = CHUNK_SIZE) -> list[tuple[int, int]]:
    """The (start, stop) byte ranges of the chunks of a blob of `size` bytes."""
    if size == 0:
        return [(0, 0)]
    return [(start, min(start + chunk_size, size)) for start in range(0, size, chunk_size)]


def chunk_digests(data: memoryview | bytes, chunk_size: int = CHUNK_SIZE) -> list[bytes]:
    """BLAKE3 digest of each chunk of `data`, hashed in parallel."""
    view = memoryview(data).cast("B")
    chunks = [view[a:b] for a, b in chunk_ranges(len(view), chunk_size)]
    if len(chunks) == 1:
        return [_hash_one(chunks[0])]
    return list(_pool().map(_hash_one, chunks))


def root_digest(digests: Sequence[bytes], size: int, chunk_size: int = CHUNK_SIZE) -> str:
    """The hex root that names a blob, computed from its chunk digests."""
    h = blake3.blake3(_ROOT_DOMAIN)
    h.update(size.to_bytes(8, "little"))
    h.update(chunk_size.to_bytes(8, "little"))
    for d in digests:
        h.update(d)
    return h.hexdigest()


def digest_bytes(data: memoryview | bytes) -> str:
    """The hex root digest of a whole in-memory buffer."""
    view = memoryview(data).cast("B")
    return root_digest(chunk_digests(view), len(view))


class Hasher:
    """Incremental root digest for data that arrives in pieces (files, streams)."""

    def __init__(self, chunk_size: int = CHUNK_SIZE) -> None:
        self.chunk_size = chunk_size
        self.size = 0
        self._digests: list[bytes] = []
        self._pending = bytearray()

    def update(self, data: bytes | memoryview) -> None:
        """Feed the next piece of the data."""
        self._pending += data
        self.size += len(data)
        while len(self._pending) >= self.chunk_size:
            self._digests.append(_hash_one(memoryview(self._pending)[: self.chunk_size]))
            del self._pending[: self.chunk_size]

    def hexdigest(self) -> str:
        """The root digest of everything fed so far."""
        digests = list(self._digests)
        if self._pending or not digests:
            digests.append(_hash_one(memoryview(bytes(self._pending))))
        return root_digest(digests, self.size, self.chunk_size)



def chunk_digest_future(chunk: memoryview | bytes) -> Future[bytes]:
    """Start hashing one chunk on the hashing threads; the caller may read the next meanwhile."""
    return _pool().submit(_hash_one, memoryview(chunk).cast("B"))
