"""Update (paper Section 3.3): a derived set stores only its changed tensors, found by digest.

A snapshot stores every row plus the per-tensor digest table. A delta stores the change mask, the
new digests of changed tensors (so the next version finds its changes without reading parameters)
and the changed bytes. Chains are cut by a snapshot when they grow deeper than `max_chain_depth` or
than the cost model lets a version recover in time, or when a delta grows too large.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from typing import Annotated, Any, ClassVar, Literal, Union

import numpy as np
import zstandard
from pydantic import Field, TypeAdapter

from .. import codecs
from ..blobs import BlobRef, Hex64
from ..costmodel import max_delta_depth
from ..diff import DIGEST_SIZE, Delta, apply, diff, restrict, tensor_digests
from ..digest import digest_bytes
from ..errors import FormatError, IntegrityError
from ..layout import Layout
from ..manifest import ApproachDocument, Manifest
from ..modelset import ModelSet
from .base import Encoded, RecoveryContext, StoreAccess
from .baseline import check_params, read_snapshot, write_snapshot

__all__ = ["Update", "UpdateSnapshot", "UpdateDelta", "UpdateSlice"]

_MAX_DEPTH = 1 << 20
_HASH_CACHED_BYTES = 16 << 20


class UpdateSnapshot(ApproachDocument):
    """Every row (`params`) and the per-tensor digest table (`digests`); `content` is the params blob's id."""

    kind: Literal["snapshot"] = "snapshot"
    depth: Literal[0] = 0
    content: Hex64
    params: BlobRef
    digests: BlobRef

    def check(self, n_models: int, layout: Layout) -> None:
        """Both blobs have the sizes the model count and layout imply."""
        check_params(self.params, n_models, layout)
        if self.content != self.params.id or self.digests.size != n_models * len(layout.tensors) * DIGEST_SIZE:
            raise FormatError("an update snapshot's content or digest table disagrees with its set; the store was forged or damaged")


class UpdateDelta(ApproachDocument):
    """The changed tensors against the base: a change list and the encoded values, or neither."""

    kind: Literal["delta"] = "delta"
    depth: int = Field(ge=1, le=_MAX_DEPTH)
    content: Hex64
    codec: str | None = None
    segments: tuple[Annotated[int, Field(ge=0)], ...] | None = None
    changes: BlobRef | None = None
    values: BlobRef | None = None

    def check(self, n_models: int, layout: Layout) -> None:
        """Change list, values and segments come together, and the segments add up to the values blob."""
        if self.changes is None and self.values is None and self.segments is None:
            return
        if self.changes is None or self.values is None or self.segments is None or self.codec is None:
            raise FormatError("an update delta names only part of its change list, values and segments; the store was forged or damaged")
        codecs.CODECS.get(self.codec)
        if len(self.segments) != len(layout.tensors) or sum(self.segments) != self.values.size:
            raise FormatError("an update delta's segments do not add up to its values; the store was forged or damaged")


class UpdateSlice(ApproachDocument):
    """Consecutive models of a larger set (the base), stored as nothing but where they start there.

    A device's lineage starts as a slice of the centrally deployed fleet set, so the store holds the
    deployed parameters once and each device only its own changes.
    """

    kind: Literal["slice"] = "slice"
    depth: Literal[0] = 0
    start: int = Field(ge=0, le=1 << 40)
    content: Hex64

    def check(self, n_models: int, layout: Layout) -> None:
        """Nothing to check without the base: `slice_rows` checks the range and the content."""


UpdateDocument = TypeAdapter(Annotated[Union[UpdateSnapshot, UpdateDelta, UpdateSlice], Field(discriminator="kind")])


def _kind(manifest: Manifest) -> str:
    return manifest.data.kind if manifest.approach == Update.name else "foreign"


class Update:
    """Deltas of changed tensors against a base, recovered by walking the chain to a snapshot."""

    name: ClassVar[str] = "update"
    document: ClassVar[Any] = UpdateDocument

    def save(self, model_set: ModelSet, base: Manifest | None, store: StoreAccess, **options: Any) -> Encoded:
        """A delta against `base` when the policy allows, else a snapshot; `slice_start=` a slice of `base`."""
        if "slice_start" in options:
            return self._slice(model_set, base, int(options["slice_start"]), store)
        if base is None or _kind(base) == "foreign" or base.data.depth + 1 > store.settings.max_chain_depth:
            return self._snapshot(model_set, tensor_digests(model_set.data, model_set.layout), store)
        # BLAKE3 of the content runs on other threads while this one computes the digest table.
        content = _work_pool().submit(digest_bytes, model_set.data)
        digests = tensor_digests(model_set.data, model_set.layout)
        delta = diff(model_set.data, digests, self._base_digests(base, model_set, store), model_set.layout)
        too_deep = base.data.depth + 1 > max_delta_depth(model_set.nbytes, delta.nbytes, store.settings)
        if delta.nbytes > store.settings.max_delta_fraction * model_set.nbytes or too_deep:
            return self._snapshot(model_set, digests, store)
        return self._delta(model_set, delta, base, content.result(), store)

    def _slice(self, model_set: ModelSet, base: Manifest | None, start: int, store: StoreAccess) -> Encoded:
        if base is None:
            raise FormatError("a slice needs the set it is cut from as its base")
        content = digest_bytes(model_set.data)
        document = UpdateSlice(start=start, content=content)
        slice_rows(base, document, len(model_set), model_set.layout, store)
        return Encoded(document)

    def _snapshot(self, model_set: ModelSet, digests: np.ndarray, store: StoreAccess) -> Encoded:
        params = write_snapshot(model_set, store)
        return Encoded(UpdateSnapshot(content=params.id, params=params, digests=store.blobs.put(digests)))

    def _delta(self, model_set: ModelSet, delta: Delta, base: Manifest, content: str, store: StoreAccess) -> Encoded:
        depth = base.data.depth + 1
        if not delta.mask.any():
            return Encoded(UpdateDelta(depth=depth, content=content))
        base_rows = store.cached_rows(base.id)
        codec = _choose_codec(store.settings.update_codec, base_rows is not None)
        segments = list(_work_pool().map(
            lambda t, spec, v: codecs.encode(v.reshape(-1), spec.itemsize, codec, _base_values(base_rows, delta.mask, t, spec)),
            range(len(delta.values)), model_set.layout.tensors, delta.values,
        ))
        changes = np.packbits(delta.mask.reshape(-1), bitorder="little").tobytes() + delta.digests.tobytes()
        return Encoded(UpdateDelta(
            depth=depth, content=content, codec=codec, segments=tuple(len(s) for s in segments),
            changes=store.blobs.put(zstandard.ZstdCompressor(level=3).compress(changes)),
            values=store.blobs.put(b"".join(segments)),
        ))

    def _base_digests(self, base: Manifest, model_set: ModelSet, store: StoreAccess) -> np.ndarray:
        rows = store.cached_rows(base.id)
        # A small base at hand is hashed faster than its chain's change lists are read (one request each on S3).
        if rows is not None and _kind(base) != "snapshot" and rows.nbytes <= _HASH_CACHED_BYTES:
            return tensor_digests(rows, model_set.layout)
        return self._digest_table(base, model_set.layout, store)

    def _digest_table(self, manifest: Manifest, layout: Layout, store: StoreAccess) -> np.ndarray:
        chain, snapshot = _chain(manifest, store)
        shape = (snapshot.n_models, len(layout.tensors), DIGEST_SIZE)
        if _kind(snapshot) == "slice":
            table = tensor_digests(_start_rows(snapshot, store, None), layout).copy()
        else:
            table = store.blobs.get(snapshot.data.digests).reshape(shape).copy()
        for delta in reversed(chain):
            if delta.data.changes is not None:
                mask, digests = _read_changes(delta, shape, store)
                table[mask] = digests
        return table

    def recover(self, manifest: Manifest, store: StoreAccess, models: np.ndarray | None,
                context: RecoveryContext) -> np.ndarray:
        """Start from the nearest snapshot (or a cached version) and apply each delta, oldest first."""
        layout = store.arch_document(manifest).layout
        wanted = None if models is None else np.unique(models)
        chain, start = _chain(manifest, store, stop_at_cached=True)
        shape = (manifest.n_models, len(layout.tensors), DIGEST_SIZE)
        # Deltas are read, verified and decoded on worker threads while the snapshot is read.
        pending = [_work_pool().submit(_decode_delta, d, layout, shape, store) for d in reversed(chain) if d.data.changes]
        data = _start_rows(start, store, wanted)
        for future in pending:
            mask, values, xor = future.result()
            if wanted is not None:
                mask, values = restrict(mask, values, wanted)
            apply(data, layout, mask, values, xor=xor)
        if wanted is None:
            # A snapshot's blob digest already proves its content; applied deltas are checked here.
            if chain and digest_bytes(data) != manifest.data.content:
                raise IntegrityError("the recovered set does not match its recorded content digest; run `mmstore verify`")
            store.remember(manifest.id, data)
            return data
        return data[np.searchsorted(wanted, models)]


def _choose_codec(setting: str, base_at_hand: bool) -> str:
    if setting != "auto":
        return setting if base_at_hand or not codecs.CODECS.get(setting).xor else "group-zstd"
    # Measured: byte grouping halves a fleet's deltas but costs ~40 ms per save and ~10 ms per delta
    # on recovery; without the base's values, raw keeps saves well under half a snapshot's time.
    return "xor-group-zstd" if base_at_hand else "raw"


def _base_values(base_rows: np.ndarray | None, mask: np.ndarray, t: int, spec) -> np.ndarray | None:
    if base_rows is None:
        return None
    return base_rows[mask[:, t], spec.offset : spec.offset + spec.nbytes].reshape(-1)


def _chain(manifest: Manifest, store: StoreAccess, stop_at_cached: bool = False) -> tuple[list[Manifest], Manifest]:
    """The deltas from `manifest` down to (excluding) the snapshot or cached set they build on."""
    chain, current = [], manifest
    while _kind(current) == "delta":
        if stop_at_cached and store.cached_rows(current.id) is not None:
            break
        if len(chain) > _MAX_DEPTH:
            raise FormatError(f"the chain of set {manifest.id[:12]} is longer than any valid chain; the store was forged")
        chain.append(current)
        current = store.base_of(current)
    if chain and _kind(current) not in ("snapshot", "slice") and store.cached_rows(current.id) is None:
        # A save over a set of another approach writes a snapshot, so a delta's base is always an update set.
        raise FormatError(f"set {chain[-1].id[:12]} is a delta over a {current.approach} set; the store was forged or damaged")
    return chain, current


def _start_rows(start: Manifest, store: StoreAccess, wanted: np.ndarray | None) -> np.ndarray:
    cached = store.cached_rows(start.id)
    if cached is not None:
        return cached.copy() if wanted is None else cached[wanted]
    if _kind(start) == "slice":
        layout = store.arch_document(start).layout
        return slice_rows(store.manifest(start.base or ""), start.data, start.n_models, layout, store, wanted)
    return read_snapshot(start.data.params, start.n_models, store, wanted)


def slice_rows(base: Manifest, document: UpdateSlice, n_models: int, layout: Layout, store: StoreAccess,
               wanted: np.ndarray | None = None) -> np.ndarray:
    """The rows a slice names, read from its base (only `wanted` of them if given), checked against the slice."""
    if store.arch_document(base).layout != layout or document.start + n_models > base.n_models:
        raise FormatError(f"a slice of set {base.id[:12]} does not fit it (other layout, or past its "
                          f"{base.n_models} models); the store was forged or damaged")
    if wanted is None and store.cached_rows(base.id) is None and _kind(base) == "snapshot":
        # The slice's own digest verifies its bytes: one ranged read of exactly them, not of the chunks around them.
        row = layout.row_nbytes
        rows = store.blobs.read_unverified(base.data.params, document.start * row, n_models * row).reshape(n_models, row)
    else:
        picked = np.arange(n_models) if wanted is None else wanted
        rows = store.recover_rows(base.id, RecoveryContext(models=(document.start + picked).tolist()))
    if wanted is None and digest_bytes(rows) != document.content:
        raise IntegrityError(f"the models of set {base.id[:12]} from {document.start} on are not the slice's content; "
                             "save the slice again from the models the device holds")
    return rows


def _read_changes(delta: Manifest, shape: tuple[int, int, int], store: StoreAccess) -> tuple[np.ndarray, np.ndarray]:
    cells = shape[0] * shape[1]
    packed = (cells + 7) // 8
    # The mask and at most one digest per cell: decoding is bounded by the set's shape, not by the payload.
    what = f"the change list of set {delta.id[:12]}"
    raw = codecs.decompress_bounded(store.blobs.get(delta.data.changes), packed + cells * shape[2], what, at_most=True)
    if len(raw) < packed:
        raise FormatError(f"{what} is shorter than its change mask; the store was forged or damaged")
    mask = np.unpackbits(np.frombuffer(raw[:packed], dtype=np.uint8), count=cells, bitorder="little").astype(bool)
    digests = np.frombuffer(raw[packed:], dtype=np.uint8)
    if digests.size != int(mask.sum()) * shape[2]:
        raise FormatError(f"{what} is malformed; the store was forged or damaged")
    return mask.reshape(shape[:2]), digests.reshape(-1, shape[2])


@lru_cache(maxsize=1)
def _work_pool() -> ThreadPoolExecutor:
    # zstd, BLAKE3 and large numpy copies release the GIL: two threads use both cores.
    return ThreadPoolExecutor(max_workers=2, thread_name_prefix="mmstore-update")


def _decode_delta(delta: Manifest, layout: Layout, shape, store: StoreAccess) -> tuple[np.ndarray, tuple[np.ndarray, ...], bool]:
    """A delta's change mask, its changed bytes per tensor, and whether they are XORed with the base."""
    mask, _ = _read_changes(delta, shape, store)
    payload = store.blobs.get(delta.data.values)
    codec, values, cursor = delta.data.codec, [], 0
    for t, (spec, size) in enumerate(zip(layout.tensors, delta.data.segments)):
        rows = int(mask[:, t].sum())
        flat = codecs.decode(payload[cursor : cursor + int(size)], rows * spec.nbytes, spec.itemsize, codec)
        values.append(flat.reshape(rows, spec.nbytes))
        cursor += int(size)
    return mask, tuple(values), codecs.CODECS.get(codec).xor
