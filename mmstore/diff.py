"""Diffs between versions of a set as plain data: per-tensor digests, change masks, changed bytes.

Pure functions: nothing here touches storage, so round trips are easy to test.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import xxhash

from .layout import Layout

__all__ = ["DIGEST_SIZE", "Delta", "tensor_digests", "diff", "apply", "restrict"]

DIGEST_SIZE = 16


def tensor_digests(data: np.ndarray, layout: Layout) -> np.ndarray:
    """XXH3-128 of every tensor of every model: an (n, tensors, 16) uint8 table.

    A fast non-cryptographic hash only finds what changed; what is stored is still named and
    verified by BLAKE3 roots, and each version records the BLAKE3 root of its whole content.
    """
    n, spans = data.shape[0], [(t.offset, t.offset + t.nbytes) for t in layout.tensors]
    flat = memoryview(np.ascontiguousarray(data)).cast("B")
    row, digest = layout.row_nbytes, xxhash.xxh3_128_digest
    out = bytearray()
    for base in range(0, n * row, row):
        for a, b in spans:
            out += digest(flat[base + a : base + b])
    return np.frombuffer(bytes(out), dtype=np.uint8).reshape(n, len(spans), DIGEST_SIZE)


@dataclass(frozen=True)
class Delta:
    """What changed between two versions: mask[i, t] says tensor t of model i changed."""

    mask: np.ndarray
    digests: np.ndarray
    values: tuple[np.ndarray, ...]

    @property
    def nbytes(self) -> int:
        """Bytes of changed tensor data."""
        return sum(v.nbytes for v in self.values)


def diff(data: np.ndarray, digests: np.ndarray, base_digests: np.ndarray, layout: Layout) -> Delta:
    """The changed tensors of `data` (with table `digests`) against a base with table `base_digests`."""
    mask = np.any(digests != base_digests, axis=2)
    values = tuple(
        data[mask[:, t], spec.offset : spec.offset + spec.nbytes] for t, spec in enumerate(layout.tensors)
    )
    return Delta(mask=mask, digests=digests[mask], values=values)


def apply(data: np.ndarray, layout: Layout, mask: np.ndarray, values: tuple[np.ndarray, ...], xor: bool = False) -> None:
    """Write (or XOR in) the changed tensors of `data` in place: one vectorised step per tensor."""
    for t, spec in enumerate(layout.tensors):
        if values[t].size:
            columns = slice(spec.offset, spec.offset + spec.nbytes)
            rows = mask[:, t]
            data[rows, columns] = np.bitwise_xor(data[rows, columns], values[t]) if xor else values[t]


def restrict(mask: np.ndarray, values: tuple[np.ndarray, ...], models: np.ndarray) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
    """The part of a delta that concerns the rows `models` (unique, in the order given)."""
    kept = []
    for t, v in enumerate(values):
        changed = np.flatnonzero(mask[:, t])
        kept.append(v[np.isin(changed, models)])
    return mask[models], tuple(kept)
