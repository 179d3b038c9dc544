"""Forging a saved local store the way an attacker with write access would: every forgery is re-hashed.

A forged manifest is written under its own digest and a lineage is pointed at it; a forged
architecture document or blob is stored under its digest and the manifest names it. Digests
therefore always match, and only parsing and bounds checks stand between the forgery and a reader.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zstandard

from mmstore import ModelSet, Store
from mmstore.backend import LocalBackend
from mmstore.blobs import BlobStore, blob_key
from mmstore.digest import digest_bytes

from .archs import Small
from .conftest import TEST_SETTINGS

N_MODELS = 4


def canonical(obj: Any) -> bytes:
    """The bytes mmstore writes for a JSON document: sorted keys, no whitespace, UTF-8."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def small_set(n: int = N_MODELS, seed: int = 0) -> ModelSet:
    """`n` seeded `tests.archs:Small` models as a set."""
    torch.manual_seed(seed)
    return ModelSet.from_modules([Small() for _ in range(n)])


def build_store(root: Path) -> dict[str, str]:
    """Save one lineage per approach at `root`; returns the role -> set id of what was saved.

    Lineages: `base` (baseline), `upd` (update snapshot, then a delta changing one model's first
    bytes), `upd3` (an update snapshot of 3 models) and `prov` (a provenance snapshot).
    """
    store = Store.open(str(root), TEST_SETTINGS)
    first = small_set()
    changed = first.data.copy()
    changed[1, :8] ^= 0xFF  # a few bytes of one row: the delta is small, so it stays a delta
    ids = {
        "base": store.save(first, lineage="base"),
        "snapshot": store.save(first, approach="update", lineage="upd"),
        "delta": store.save(ModelSet(first.arch, first.layout, changed), approach="update", lineage="upd"),
        "upd3": store.save(small_set(3, seed=1), approach="update", lineage="upd3"),
        "prov": store.save(first, approach="provenance", lineage="prov"),
    }
    assert store.manifest(ids["delta"]).data.kind == "delta"
    return ids


def head(root: Path, lineage: str) -> str:
    """The set id a lineage's ref file holds."""
    return (root / "refs" / lineage).read_bytes().decode()


def read_manifest(root: Path, set_id: str) -> dict:
    """A stored manifest as a JSON object."""
    return json.loads((root / "sets" / f"{set_id}.json").read_bytes())


def write_manifest(root: Path, document: Any, lineage: str | None = None) -> str:
    """Store a manifest (an object, or raw bytes) under its digest, point `lineage` at it; returns the id."""
    data = document if isinstance(document, bytes) else canonical(document)
    set_id = digest_bytes(data)
    (root / "sets" / f"{set_id}.json").write_bytes(data)
    if lineage is not None:
        point(root, lineage, set_id.encode())
    return set_id


def point(root: Path, lineage: str, content: bytes) -> None:
    """Overwrite a lineage's ref file with `content`."""
    (root / "refs").mkdir(exist_ok=True)
    (root / "refs" / lineage).write_bytes(content)


def put_blob(root: Path, data: bytes) -> dict:
    """Store `data` as a blob named by its digest; returns its ref as a manifest holds it."""
    return BlobStore(LocalBackend(str(root), durable=False)).put(data).model_dump(mode="json")


def read_blob(root: Path, ref: dict) -> bytes:
    """The stored bytes of a blob ref."""
    return (root / blob_key(ref["id"])).read_bytes()


def forge_manifest(root: Path, lineage: str, mutate: Callable[[dict], Any]) -> str:
    """Re-hash the lineage head's manifest after `mutate` (which edits it in place or returns a replacement)."""
    obj = read_manifest(root, head(root, lineage))
    result = mutate(obj)
    return write_manifest(root, obj if result is None else result, lineage)


def forge_arch(root: Path, lineage: str, mutate: Callable[[dict], Any]) -> str:
    """Re-hash the head's architecture document after `mutate`, and the manifest that names it."""
    def swap(manifest: dict) -> None:
        doc = json.loads(read_blob(root, manifest["arch"]))
        result = mutate(doc)
        manifest["arch"] = put_blob(root, canonical(doc if result is None else result))

    return forge_manifest(root, lineage, swap)


def forge_blob(root: Path, lineage: str, role: str, content: bytes, **fields: Any) -> str:
    """Store `content` as a new blob, name it as the head's `data.<role>` (with `fields` overriding the ref)."""
    ref = {**put_blob(root, content), **fields}
    return forge_manifest(root, lineage, lambda m: m["data"].__setitem__(role, ref))


def zstd_bomb(decoded_bytes: int = 1 << 30) -> bytes:
    """A zstd frame of `decoded_bytes` zeros that does not declare its size (about 32 KB per GiB)."""
    compressor = zstandard.ZstdCompressor(level=3, write_content_size=False).compressobj()
    zeros = bytes(1 << 20)
    parts = [compressor.compress(zeros) for _ in range(decoded_bytes >> 20)]
    parts.append(compressor.flush())
    return b"".join(parts)


def deep_json(depth: int) -> bytes:
    """`[[[...]]]` nested `depth` deep, built without recursion."""
    return b"[" * depth + b"]" * depth


def files(root: Path) -> dict[str, tuple[int, int]]:
    """Every path below `root` (symlinks not followed) with its size and modification time in ns."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            st = os.lstat(os.path.join(dirpath, name))
            out[os.path.relpath(os.path.join(dirpath, name), root)] = (st.st_size, st.st_mtime_ns)
    return out


def mutated(obj: Any, path: tuple, action: str, value: Any = None) -> Any:
    """A copy of `obj` with the node at `path` replaced (`set`), deleted (`delete`) or given a key (`add`)."""
    obj = copy.deepcopy(obj)
    if not path:
        return value if action == "set" else obj
    parent = obj
    for key in path[:-1]:
        parent = parent[key]
    last = path[-1]
    if action == "set":
        parent[last] = value
    elif action == "delete":
        del parent[last]
    elif action == "add" and isinstance(parent[last], dict):
        parent[last][value[0]] = value[1]
    return obj


def node_paths(obj: Any, prefix: tuple = ()) -> list[tuple]:
    """The path of every node of a JSON document, the root included."""
    paths = [prefix]
    if isinstance(obj, dict):
        for key in sorted(obj):
            paths += node_paths(obj[key], prefix + (key,))
    elif isinstance(obj, list):
        for i, item in enumerate(obj):
            paths += node_paths(item, prefix + (i,))
    return paths


def rows_equal(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two sets' byte matrices are identical."""
    return a.shape == b.shape and bool(np.array_equal(a, b))


def replay_blobs(root: Path, models: list | None = None, trainer: str = "tests.provenance_fleet:drifting_train") -> dict:
    """Recipe, environment and change-list blobs of a provenance replay set (no models changed by default)."""
    recipe = {"schema_version": 1, "trainer": trainer, "trainer_digest": "0" * 64, "recipes": {}}
    changes = zstandard.ZstdCompressor().compress(canonical({"schema_version": 1, "models": models or []}))
    return {"recipe": put_blob(root, canonical(recipe)), "environment": put_blob(root, b"{}"),
            "changes": put_blob(root, changes)}


def replay_manifest(root: Path, base_id: str, content: str, changed: int = 0, **blobs: Any) -> dict:
    """A provenance replay manifest deriving from `base_id`, built from the `prov` head's fields."""
    template = read_manifest(root, head(root, "prov"))
    data = {"kind": "replay", "changed": changed, "content": content, **(blobs or replay_blobs(root))}
    return {**template, "base": base_id, "data": data}


def zero_width_arch(root: Path, manifest: dict, names: str = "abcd", factory: str | None = None) -> dict:
    """The ref of an architecture document like `manifest`'s whose layout is `names` empty uint8 tensors (row 0)."""
    doc = json.loads(read_blob(root, manifest["arch"]))
    if factory is not None:
        doc["arch"] = {"factory": factory, "kwargs": {}, "source_digest": ""}
    doc["layout"] = {"tensors": [{"name": n, "dtype": "uint8", "shape": [0], "offset": 0} for n in names],
                     "row_nbytes": 0, "ties": {}}
    return put_blob(root, canonical(doc))
