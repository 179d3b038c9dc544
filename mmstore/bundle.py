"""Bundles: what a device sends so that its new version is known centrally.

A bundle is one object, named by the digest of its bytes: a magic line, a length-prefixed JSON
header, the packed change mask, then one encoded segment per tensor. `delta` bundles carry the
changed tensors XORed with the base the device started from; `full` bundles carry every tensor.
Encoding and decoding are pure functions; on arrival a bundle is untrusted input, parsed and
bounded like every stored document before any byte of its payload is decoded.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Annotated, Literal

import numpy as np
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_serializer

from . import codecs
from .blobs import Hex64
from .digest import digest_bytes
from .errors import FormatError, IntegrityError
from .layout import Layout
from .manifest import MAX_DOCUMENT_BYTES, LineageName, parse_document, parse_json

__all__ = ["BundleHeader", "Bundle", "BUNDLE_SUFFIX", "encode_bundle", "frame", "parse_bundle", "change_mask", "apply_bundle", "bundle_time"]

MAGIC = b"MMSTORE-BUNDLE\n"
BUNDLE_SUFFIX = ".mmb"
_LENGTH = struct.Struct(">I")
_MAX_TENSORS = 1 << 16


class BundleHeader(BaseModel):
    """What a bundle claims: whose it is, what it starts from, what it holds and how it is encoded."""

    model_config = ConfigDict(frozen=True, extra="forbid", regex_engine="python-re")

    schema_version: Literal[1] = 1
    device: LineageName
    kind: Literal["delta", "full", "provenance"]
    base_set: Hex64 | None = None
    base_content: Hex64
    content: Hex64
    arch: Hex64
    n_models: int = Field(ge=1, le=1 << 24)
    row_nbytes: int = Field(ge=0, le=1 << 32)
    device_time: AwareDatetime
    codec: str = Field(max_length=64)
    segments: tuple[int, ...] = Field((), max_length=_MAX_TENSORS)
    # A provenance bundle holds no tensors: its training record, then the datasets the server lacks.
    record_bytes: int = Field(0, ge=0, le=MAX_DOCUMENT_BYTES)
    datasets: tuple[Annotated[int, Field(ge=0, le=1 << 40)], ...] = Field((), max_length=1 << 16)

    @model_serializer(mode="wrap")
    def _omit_no_record(self, handler):
        # Tensor bundles keep the exact header bytes they had before provenance bundles existed.
        out = handler(self)
        if self.kind != "provenance":
            out.pop("record_bytes", None)
            out.pop("datasets", None)
        return out

    def mask_bytes(self) -> int:
        """Length of the packed change mask: one bit per (model, tensor)."""
        return (self.n_models * len(self.segments) + 7) // 8


@dataclass(frozen=True)
class Bundle:
    """A parsed bundle: its digest (its name), header, change mask and raw segments, not yet decoded."""

    digest: str
    header: BundleHeader
    mask: np.ndarray
    segments: tuple[memoryview, ...]
    nbytes: int


def change_mask(new: np.ndarray, base: np.ndarray, layout: Layout) -> np.ndarray:
    """mask[i, t]: tensor t of model i differs between `new` and `base` (byte for byte)."""
    mask = np.zeros((new.shape[0], len(layout.tensors)), dtype=bool)
    for t, spec in enumerate(layout.tensors):
        columns = slice(spec.offset, spec.offset + spec.nbytes)
        mask[:, t] = np.any(new[:, columns] != base[:, columns], axis=1)
    return mask


def encode_bundle(header: BundleHeader, new: np.ndarray, base: np.ndarray, layout: Layout) -> bytes:
    """The bundle's bytes for rows `new` against `base`; the header's segments are filled in here."""
    full = header.kind == "full"
    if full and codecs.CODECS.get(header.codec).xor:
        raise FormatError(f"a full bundle cannot use the XOR codec {header.codec!r}; it must decode without a base")
    mask = np.ones((new.shape[0], len(layout.tensors)), dtype=bool) if full else change_mask(new, base, layout)
    segments = []
    for t, spec in enumerate(layout.tensors):
        columns, rows = slice(spec.offset, spec.offset + spec.nbytes), mask[:, t]
        base_values = None if full else base[rows, columns].reshape(-1)
        segments.append(codecs.encode(new[rows, columns].reshape(-1), spec.itemsize, header.codec, base_values))
    header = header.model_copy(update={"segments": tuple(len(s) for s in segments)})
    return frame(header, np.packbits(mask.reshape(-1), bitorder="little").tobytes(), *segments)


def frame(header: BundleHeader, *parts: bytes) -> bytes:
    """A bundle's bytes: the magic line, the header's length and JSON, then its parts."""
    text = header.model_dump_json().encode()
    return b"".join([MAGIC, _LENGTH.pack(len(text)), text, *parts])


def parse_bundle(data: bytes, name_digest: str, device: str, layout: Layout, what: str) -> Bundle:
    """Check a received bundle's digest, framing, header and sizes against the device and layout; decode nothing."""
    if digest_bytes(data) != name_digest:
        raise IntegrityError(f"{what} does not match its name's digest: it was cut off or altered on the way")
    if not data.startswith(MAGIC) or len(data) < len(MAGIC) + _LENGTH.size:
        raise FormatError(f"{what} is not an mmstore bundle")
    (length,) = _LENGTH.unpack_from(data, len(MAGIC))
    start = len(MAGIC) + _LENGTH.size
    if length > min(MAX_DOCUMENT_BYTES, len(data) - start):
        raise FormatError(f"{what} claims a header of {length} bytes, more than it holds")
    header = parse_document(BundleHeader, parse_json(data[start : start + length], f"the header of {what}"), f"the header of {what}")
    if header.device != device:
        raise FormatError(f"{what} names device {header.device!r} but arrived in the inbox of {device!r}")
    codecs.CODECS.get(header.codec)
    if header.kind == "provenance":
        return _provenance_parts(data, name_digest, header, start + length, layout, what)
    if header.record_bytes or header.datasets:
        raise FormatError(f"{what} is a {header.kind} bundle that carries a training record")
    if len(header.segments) != len(layout.tensors) or header.row_nbytes != layout.row_nbytes:
        raise FormatError(f"{what} was made for another architecture than the lineage's ({len(header.segments)} tensors, "
                          f"rows of {header.row_nbytes} bytes)")
    cursor = start + length + header.mask_bytes()
    if min(header.segments, default=0) < 0 or cursor + sum(header.segments) != len(data):
        raise FormatError(f"{what}'s segments do not add up to its size")
    cells = header.n_models * len(layout.tensors)
    packed = np.frombuffer(data, dtype=np.uint8, count=header.mask_bytes(), offset=start + length)
    mask = np.unpackbits(packed, count=cells, bitorder="little").astype(bool).reshape(header.n_models, -1)
    if header.kind == "full" and (not mask.all() or codecs.CODECS.get(header.codec).xor):
        raise FormatError(f"{what} is a full bundle that leaves tensors out or needs a base")
    views, view = [], memoryview(data)
    for size in header.segments:
        views.append(view[cursor : cursor + size])
        cursor += size
    return Bundle(name_digest, header, mask, tuple(views), len(data))


def _provenance_parts(data: bytes, name_digest: str, header: BundleHeader, cursor: int, layout: Layout, what: str) -> Bundle:
    """A provenance bundle's record and datasets as views, once their sizes add up to the bundle's."""
    if header.segments or header.row_nbytes != layout.row_nbytes or header.codec != "raw":
        raise FormatError(f"{what} is a provenance bundle with tensor segments, another row size or a codec")
    if header.record_bytes == 0 or cursor + header.record_bytes + sum(header.datasets) != len(data):
        raise FormatError(f"{what}'s record and datasets do not add up to its size")
    views, view = [], memoryview(data)
    for size in (header.record_bytes, *header.datasets):
        views.append(view[cursor : cursor + size])
        cursor += size
    return Bundle(name_digest, header, np.zeros((header.n_models, 0), dtype=bool), tuple(views), len(data))


def apply_bundle(bundle: Bundle, base: np.ndarray, layout: Layout) -> np.ndarray:
    """The device's new rows (read-only): `base` with the bundle's tensors decoded in, checked against the header's content."""
    header = bundle.header
    if base.shape != (header.n_models, layout.row_nbytes) or digest_bytes(base) != header.base_content:
        raise IntegrityError(f"bundle {bundle.digest[:12]} was not made against these base models")
    rows, codec = base.copy(), codecs.CODECS.get(header.codec)
    for t, (spec, segment) in enumerate(zip(layout.tensors, bundle.segments)):
        changed = bundle.mask[:, t]
        columns = slice(spec.offset, spec.offset + spec.nbytes)
        values = codec.decode(segment, int(changed.sum()) * spec.nbytes, spec.itemsize).reshape(-1, spec.nbytes)
        rows[changed, columns] = np.bitwise_xor(rows[changed, columns], values) if codec.xor else values
    if digest_bytes(rows) != header.content:
        raise IntegrityError(f"bundle {bundle.digest[:12]} decodes to other models than it claims")
    rows.setflags(write=False)  # checked content: a store may keep these rows as they are, without a copy
    return rows


def bundle_time(header: BundleHeader) -> str:
    """The device time as the ISO-8601 text versions are indexed by."""
    return header.device_time.isoformat(timespec="milliseconds")
