"""Content-addressed blobs: put/get by digest, every read verified; knows nothing about models."""

from __future__ import annotations

import io
import re
import secrets
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Annotated

import numpy as np
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_serializer, model_validator

from .backend import Backend
from .concurrency import each
from .digest import CHUNK_SIZE, chunk_digest_future, chunk_digests, chunk_ranges, root_digest
from .errors import FormatError, IntegrityError, NotFoundError, ResourceLimitError

__all__ = ["Hex64", "BlobRef", "BlobStore", "Pack", "blob_key", "check_id"]

_HEX64 = re.compile(r"[0-9a-f]{64}")
_MAX_BLOB = 1 << 48


def _hex64(value: str) -> str:
    if not _HEX64.fullmatch(value):
        raise ValueError("not a digest (64 lowercase hex characters)")
    return value


# Checked with fullmatch, whichever regex engine the enclosing model uses.
Hex64 = Annotated[str, AfterValidator(_hex64)]


def check_id(value: str, what: str = "id") -> str:
    """`value` if it is 64 lowercase hex characters (a digest), else FormatError: ids never become odd paths."""
    if not isinstance(value, str) or not _HEX64.fullmatch(value):
        raise FormatError(f"{what} {str(value)[:80]!r} is not a digest (64 lowercase hex characters)")
    return value


class BlobRef(BaseModel):
    """A blob's identity: root digest, size, (for multi-chunk blobs) each chunk's digest, and the pack holding it if any.

    A packed blob is the `size` bytes at `offset` of the pack object `blobs/<pack>`, which many sets'
    blobs share; its `id` is still the digest of its own bytes, so it is verified like any blob.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: Hex64
    size: int = Field(ge=0, le=_MAX_BLOB)
    chunks: tuple[Hex64, ...] = ()
    pack: Hex64 | None = None
    offset: int = Field(default=0, ge=0, le=_MAX_BLOB)

    @model_validator(mode="after")
    def _chunk_count(self) -> "BlobRef":
        count = max(1, -(-self.size // CHUNK_SIZE))
        if (count > 1 and len(self.chunks) != count) or (count == 1 and self.chunks):
            raise ValueError(f"a blob of {self.size} bytes has {count} chunk(s), not {len(self.chunks) or 1}")
        if self.pack is None and self.offset:
            raise ValueError("an offset without a pack")
        return self

    @model_serializer(mode="wrap")
    def _omit_unpacked(self, handler):
        # A blob of its own is written as before packs existed, so its manifests keep their bytes and ids.
        out = handler(self)
        if self.pack is None:
            out.pop("pack", None)
            out.pop("offset", None)
        return out

    @property
    def object_id(self) -> str:
        """The name of the object holding the bytes: the pack's, or the blob's own."""
        return self.pack or self.id


def blob_key(blob_id: str) -> str:
    """Where a blob lives below the store's root."""
    check_id(blob_id, "blob id")
    return f"blobs/{blob_id[:2]}/{blob_id[2:]}"


class BlobStore:
    """Blobs on a backend, named by the Merkle root of their chunks.

    A journal or a pack belongs to the thread that opened it, so threads may save through one store at once.
    """

    def __init__(self, backend: Backend, max_bytes: int = _MAX_BLOB):
        self.backend = backend
        self.max_bytes = max_bytes
        self._local = threading.local()
        # Packs being filled, by id, for every thread: a set committed later in the same batch reads
        # the blobs of one encoded before it (a snapshot's digest table) before the pack is written.
        self._open_packs: dict[str, Pack] = {}

    @property
    def _journal(self) -> list[tuple[str, memoryview]] | None:
        return getattr(self._local, "journal", None)

    @property
    def _pack(self) -> Pack | None:
        return getattr(self._local, "pack", None)

    def put(self, data: bytes | memoryview | np.ndarray) -> BlobRef:
        """Store `data` and return its ref; an existing blob with the digest is reused if its size is right.

        A blob of the wrong size (truncated, or replaced) is rewritten: saving the data again heals it.
        Inside `packing`, the bytes join the pack instead and are written with it.
        """
        view = memoryview(data).cast("B") if not isinstance(data, np.ndarray) else memoryview(data.reshape(-1).view(np.uint8))
        digests = chunk_digests(view)
        ref = BlobRef(
            id=root_digest(digests, len(view)),
            size=len(view),
            chunks=tuple(d.hex() for d in digests) if len(digests) > 1 else (),
        )
        if self._pack is not None:
            return self._pack.add(ref, view)
        key = blob_key(ref.id)
        if not self.backend.put(key, view, exclusive=True) and self._stored_size(key) != ref.size:
            self.backend.put(key, view, exclusive=False)
        if self._journal is not None:
            self._journal.append((ref.id, view))
        return ref

    def present(self, ref: BlobRef, data: bytes | memoryview) -> BlobRef:
        """A blob known to be stored whole (verified on reading): recorded for `ensure` like a put, not written."""
        if self._journal is not None:
            self._journal.append((ref.id, memoryview(data)))
        return ref

    def _stored_size(self, key: str) -> int | None:
        # A collection may remove the blob between finding it present and asking its size: then it is written again.
        try:
            return self.backend.size(key)
        except NotFoundError:
            return None

    @contextmanager
    def journal(self) -> Iterator[list[tuple[str, memoryview]]]:
        """Record every object put inside the block (its blob or pack id and bytes), so a writer can re-check them."""
        self._local.journal = []
        try:
            yield self._local.journal
        finally:
            self._local.journal = None

    @contextmanager
    def packing(self) -> Iterator["Pack"]:
        """Every blob put inside the block goes into one new pack, which the caller writes with `write_pack`."""
        pack = self._local.pack = Pack()
        self._open_packs[pack.id] = pack
        try:
            yield pack
        finally:
            self._local.pack = None
            self._open_packs.pop(pack.id, None)

    def write_pack(self, pack: "Pack") -> None:
        """Write a pack's object (one request however many blobs it holds), recording it for `ensure`."""
        data = pack.data()
        if pack.refs:
            self.backend.put(blob_key(pack.id), data, exclusive=False)
            if self._journal is not None:
                self._journal.append((pack.id, memoryview(data)))

    def ensure(self, written: list[tuple[str, memoryview]]) -> int:
        """Write again every recorded blob or pack that is gone (collected since it was put); how many were."""
        unique = {blob_key(blob_id): view for blob_id, view in written}
        present = each(self.backend.exists, unique)
        missing = [(key, view) for (key, view), found in zip(unique.items(), present) if not found]
        for key, view in missing:
            self.backend.put(key, view, exclusive=True)
        return len(missing)

    def get(self, ref: BlobRef) -> np.ndarray:
        """The blob's bytes as a uint8 array, verified chunk by chunk while reading."""
        self._check_limit(ref.size, ref)
        if ref.pack is not None:
            return self._get_packed(ref)
        ranges = chunk_ranges(ref.size)
        with self._open(ref) as f:
            out = np.empty(ref.size, dtype=np.uint8)
            view = memoryview(out)
            pending = []
            for start, stop in ranges:
                _read_exactly(f, view[start:stop], ref)
                # Hash this chunk on the pool while the next one is read.
                pending.append(chunk_digest_future(view[start:stop]))
            if f.read(1):
                raise IntegrityError(f"blob {ref.id} is longer than recorded; run `mmstore verify` and restore it")
        self._check([p.result() for p in pending], list(range(len(ranges))), ref)
        return out

    def _get_packed(self, ref: BlobRef) -> np.ndarray:
        """A packed blob: one ranged read of its pack, after checking the pack holds the range; verified whole."""
        unwritten = self._unwritten(ref)
        if unwritten is not None:
            return self._verified(np.frombuffer(unwritten, dtype=np.uint8).copy(), ref)
        key = blob_key(ref.object_id)
        try:
            stored = self.backend.size(key)
        except NotFoundError:
            raise NotFoundError(f"pack {ref.object_id} is missing from {self.backend.url}; the store is damaged: "
                                "restore it from a backup") from None
        if ref.offset + ref.size > stored:
            raise IntegrityError(f"pack {ref.object_id[:12]} holds {stored} bytes, too few for blob {ref.id[:12]} at "
                                 f"{ref.offset}; run `mmstore verify` and restore the store from a backup")
        data = self.backend.get(key, at_most=ref.size, offset=ref.offset) if ref.size else b""
        if len(data) != ref.size:
            raise IntegrityError(f"blob {ref.id} is truncated in pack {ref.object_id[:12]}; restore the store from a backup")
        return self._verified(np.frombuffer(bytearray(data), dtype=np.uint8), ref)

    def _verified(self, out: np.ndarray, ref: BlobRef) -> np.ndarray:
        digests = chunk_digests(memoryview(out))
        self._check(digests, list(range(len(digests))), ref)
        return out

    def _unwritten(self, ref: BlobRef) -> memoryview | None:
        """The bytes of a blob in a pack still being filled (by any thread), if it is one."""
        pack = self._open_packs.get(ref.pack or "")
        return pack.view(ref) if pack is not None else None

    def get_ranges(self, ref: BlobRef, ranges: Sequence[tuple[int, int]]) -> list[np.ndarray]:
        """Only the byte ranges asked for, reading and verifying just the chunks that hold them."""
        if ref.pack is not None:  # packed blobs are small: read and verified whole
            whole = self.get(ref)
            return [whole[a:b] for a, b in ranges]
        chunk_ids = sorted({c for a, b in ranges for c in range(a // CHUNK_SIZE, max(a, b - 1) // CHUNK_SIZE + 1)})
        all_ranges = chunk_ranges(ref.size)
        buffers = {}
        with self._open(ref) as f:
            for c in chunk_ids:
                start, stop = all_ranges[c]
                buffers[c] = np.empty(stop - start, dtype=np.uint8)
                f.seek(start)
                _read_exactly(f, memoryview(buffers[c]), ref)
        self._check([chunk_digests(buffers[c])[0] for c in chunk_ids], chunk_ids, ref)
        return [_slice(buffers, a, b) for a, b in ranges]

    def read_unverified(self, ref: BlobRef, start: int, length: int) -> np.ndarray:
        """`length` bytes of the blob from `start`, in one ranged read; the caller verifies them against its own digest."""
        if start < 0 or length < 0 or start + length > ref.size:
            raise FormatError(f"bytes {start}..{start + length} lie outside blob {ref.id[:12]} of {ref.size} bytes; "
                              "the store was forged or damaged")
        self._check_limit(length, ref)
        unwritten = self._unwritten(ref)
        if unwritten is not None:
            return np.frombuffer(unwritten[start : start + length], dtype=np.uint8).copy()
        try:
            data = self.backend.get(blob_key(ref.object_id), at_most=length, offset=ref.offset + start) if length else b""
        except NotFoundError:
            raise NotFoundError(f"blob {ref.object_id} is missing from {self.backend.url}; the store is damaged: "
                                "restore it from a backup") from None
        if len(data) != length:
            raise IntegrityError(f"blob {ref.id[:12]} is truncated; run `mmstore verify` and restore the store from a backup")
        return np.frombuffer(bytearray(data), dtype=np.uint8)

    def read_object(self, object_id: str) -> bytes:
        """A blob's or pack's stored bytes as they are, unverified, bounded by the size limit."""
        key = blob_key(object_id)
        size = self.backend.size(key)
        if size > self.max_bytes:
            raise ResourceLimitError(f"object {object_id[:12]} holds {size} bytes, more than the limit of {self.max_bytes}; "
                                     "raise MMSTORE_MAX_SET_BYTES if you trust this store")
        return self.backend.get(key, at_most=size)

    def exists(self, blob_id: str) -> bool:
        """Whether the blob is present (not verified)."""
        return self.backend.exists(blob_key(blob_id))

    def delete(self, blob_id: str) -> None:
        """Remove a blob (callers make sure no set references it)."""
        self.backend.delete(blob_key(blob_id))

    def stored_size(self, ref: BlobRef) -> int:
        """Bytes the blob occupies in the backend (a packed blob: its share of the pack)."""
        return ref.size if ref.pack is not None else self.backend.size(blob_key(ref.id))

    def _check_limit(self, size: int, ref: BlobRef) -> None:
        if size > self.max_bytes:
            raise ResourceLimitError(
                f"blob {ref.id[:12]} is recorded as {size} bytes, more than the limit of {self.max_bytes}; "
                "raise MMSTORE_MAX_SET_BYTES if you trust this store"
            )

    def _open(self, ref: BlobRef):
        """The blob's file, after checking its stored size against the recorded one: nothing is allocated before."""
        key = blob_key(ref.id)
        try:
            stored = self.backend.size(key)
        except NotFoundError:
            raise NotFoundError(
                f"blob {ref.id} is missing from {self.backend.url}; the store is damaged: restore it from a backup"
            ) from None
        if stored != ref.size:
            raise IntegrityError(
                f"blob {ref.id[:12]} is truncated or corrupt: it holds {stored} bytes, its reference says "
                f"{ref.size}; run `mmstore verify` and restore the store from a backup"
            )
        if ref.size == 0:  # nothing to read: never open it, a named pipe in its place would block the reader
            return io.BytesIO(b"")
        return self.backend.open(key)

    @staticmethod
    def _check(digests: list[bytes], chunk_ids: list[int], ref: BlobRef) -> None:
        expected = ref.chunks or (None,)
        for c, d in zip(chunk_ids, digests):
            ok = (d.hex() == expected[c]) if ref.chunks else (root_digest([d], ref.size) == ref.id)
            if not ok:
                raise IntegrityError(
                    f"blob {ref.id} is corrupt (chunk {c} does not match its digest); "
                    "restore the store from a backup or re-save the set"
                )
        if ref.chunks and root_digest([bytes.fromhex(c) for c in ref.chunks], ref.size) != ref.id:
            raise IntegrityError(f"the chunk list recorded for blob {ref.id} does not match its id; the manifest was altered")


class Pack:
    """Blobs gathered to be written as one object: many small sets committed together cost one write."""

    def __init__(self) -> None:
        # Not content-addressed: the name is fixed before the bytes are, so refs to it are final at once.
        self.id = secrets.token_hex(32)
        self.refs: dict[str, BlobRef] = {}
        self._parts: list[memoryview] = []
        self._views: dict[str, memoryview] = {}
        self._size = 0

    def add(self, ref: BlobRef, view: memoryview) -> BlobRef:
        """The packed ref of `view` (the same one for the same bytes)."""
        if ref.id not in self.refs:
            self.refs[ref.id] = ref.model_copy(update={"pack": self.id, "offset": self._size})
            self._parts.append(view)
            self._views[ref.id] = view
            self._size += len(view)
        return self.refs[ref.id]

    def view(self, ref: BlobRef) -> memoryview | None:
        """The bytes this pack holds for `ref` (None if it holds no such blob at that place)."""
        mine = self.refs.get(ref.id)
        return self._views[ref.id] if mine is not None and (mine.offset, mine.size) == (ref.offset, ref.size) else None

    def data(self) -> bytes:
        """The pack's bytes: its blobs one after another."""
        return b"".join(self._parts)


def _read_exactly(f, view: memoryview, ref: BlobRef) -> None:
    done = 0
    while done < len(view):
        n = f.readinto(view[done:])
        if not n:
            raise IntegrityError(f"blob {ref.id} is truncated; restore the store from a backup or re-save the set")
        done += n


def _slice(buffers: dict[int, np.ndarray], start: int, stop: int) -> np.ndarray:
    parts = []
    for c in range(start // CHUNK_SIZE, max(start, stop - 1) // CHUNK_SIZE + 1):
        base = c * CHUNK_SIZE
        parts.append(buffers[c][max(start - base, 0) : min(stop - base, len(buffers[c]))])
    return parts[0] if len(parts) == 1 else np.concatenate(parts)
