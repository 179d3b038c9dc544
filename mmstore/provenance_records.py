"""The provenance approach's records: what a caller declares, what a derived set stores, dataset checks."""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Annotated, Any, Literal, NamedTuple

import fsspec
import zstandard
from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError, field_validator, model_serializer

from .codecs import decompress_bounded
from .digest import digest_bytes
from .errors import DatasetError, FormatError, MMStoreError
from .groups import GroupPlan
from .manifest import canonical_json
from .settings import Settings

__all__ = [
    "DatasetRef",
    "ProvenanceRecord",
    "RecipeDocument",
    "ChangedModel",
    "ChangeList",
    "encode_changes",
    "decode_changes",
    "DatasetRoots",
    "DatasetLocation",
    "check_dataset",
    "read_datasets",
]

_FROZEN = ConfigDict(frozen=True, extra="forbid")
# Reading datasets is I/O-bound: on object stores, many requests in flight hide the latency.
_READERS = 8
# The only kinds of location a dataset is ever read from; never a URL that makes a request elsewhere.
_SCHEMES = ("file", "memory", "s3")
_SCHEME = re.compile(r"\A([A-Za-z][A-Za-z0-9+.-]*)://")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class DatasetRef(BaseModel):
    """A dataset outside the store: its fsspec URI and the digest and size its bytes must have."""

    # from_attributes: a workload's own DatasetRef (same fields) is accepted as is.
    model_config = ConfigDict(frozen=True, extra="forbid", from_attributes=True)

    uri: str = Field(min_length=1, max_length=4096)
    digest: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=0)

    @field_validator("uri")
    @classmethod
    def _printable(cls, value: str) -> str:
        if _CONTROL.search(value):
            raise ValueError("a dataset URI must not contain control characters")
        return value


class ProvenanceRecord(BaseModel):
    """How a derived set's changed models were trained: `Store.save(..., provenance=record)`.

    `trainer` is `"package.module:function"`, called as `function(model, dataset_bytes, recipe)`;
    `recipes` maps a name to the recipe (hyper-parameters, seed, trainable layers, determinism);
    `changes` maps each changed model's index to its recipe's name and its dataset; `environment`
    is the fingerprint (JSON) of the environment the training ran in. With `groups`, the trainer is
    a group trainer (`register_group_trainer`) and the plan says which models trained together.
    `seconds` (not stored) is what training one model took per recipe, for `approach="auto"`'s
    estimate of replaying them.
    """

    model_config = _FROZEN

    trainer: str
    recipes: dict[str, dict[str, JsonValue]]
    changes: dict[int, tuple[str, DatasetRef]]
    environment: str
    groups: GroupPlan | None = None
    seconds: dict[str, Annotated[float, Field(ge=0)]] = Field(default_factory=dict)

    @field_validator("environment", mode="before")
    @classmethod
    def _text(cls, value: Any) -> Any:
        return value.decode() if isinstance(value, bytes) else value

    def environment_bytes(self) -> bytes:
        """The fingerprint as stored, after checking it is a JSON object."""
        try:
            if isinstance(json.loads(self.environment), dict):
                return self.environment.encode()
        except ValueError:
            pass
        raise MMStoreError("the provenance record's environment is not a JSON object; pass a fingerprint's to_json()")


class RecipeDocument(BaseModel):
    """The stored recipe of a derived set: trainer, its source digest, the named recipes."""

    model_config = _FROZEN

    schema_version: Literal[1] = 1
    trainer: str
    trainer_digest: str
    recipes: dict[str, dict[str, JsonValue]]


class ChangedModel(BaseModel):
    """One retrained model: its recipe, its dataset, and the 16-byte digest of every tensor it changed.

    Tensors not listed are bit-identical to the model's base version.
    """

    model_config = _FROZEN

    model: int
    recipe: str
    dataset: DatasetRef
    tensors: dict[str, str]


class ChangeList(BaseModel):
    """Every changed model of a derived set, by ascending model index, and how they trained together."""

    model_config = _FROZEN

    schema_version: Literal[1] = 1
    models: tuple[ChangedModel, ...]
    # Absent in sets trained one model per call, which are stored byte for byte as before grouping existed.
    groups: GroupPlan | None = None

    @model_serializer(mode="wrap")
    def _without_absent_groups(self, handler: Any) -> Any:
        data = handler(self)
        if data.get("groups") is None:
            data.pop("groups", None)
        return data


def encode_changes(changes: ChangeList) -> bytes:
    """Canonical JSON, zstd-compressed: the URIs and names repeat from model to model."""
    return zstandard.ZstdCompressor(level=19).compress(canonical_json(changes))


def decode_changes(data: bytes, set_id: str, max_bytes: int) -> ChangeList:
    """The change list of set `set_id` from its stored bytes, decoded into at most `max_bytes`."""
    what = f"the change list of set {set_id[:12]}"
    raw = decompress_bounded(data, max_bytes, what, at_most=True)
    try:
        return ChangeList.model_validate_json(raw)
    except ValidationError as exc:
        raise FormatError(f"{what} is not valid ({str(exc)[:160]}); the store was forged or damaged") from None


@dataclass(frozen=True)
class DatasetRoots:
    """Where a store's datasets may be read from, and the largest dataset a record may name."""

    roots: tuple[str, ...]
    max_bytes: int

    @classmethod
    def of(cls, store_url: str, settings: Settings) -> "DatasetRoots":
        """The roots `settings` names; by default only the store's own dataset location, its URL + '-datasets'."""
        return cls(settings.dataset_roots or (store_url.rstrip("/") + "-datasets",), settings.max_dataset_bytes)


class DatasetLocation(NamedTuple):
    """A checked dataset reference: the reference, its scheme (file, memory or s3) and its normalised path."""

    ref: DatasetRef
    scheme: str
    path: str


def check_dataset(ref: DatasetRef, roots: DatasetRoots) -> DatasetLocation:
    """Where `ref` lies, once it is well formed, small enough and below one of `roots`; nothing is opened."""
    ref = _validated(ref)
    scheme, path = _split(ref.uri, f"dataset {ref.uri}")
    if not any(scheme == root_scheme and path.startswith(root_path.rstrip("/") + "/")
               for root_scheme, root_path in (_split(root, f"the dataset root {root}") for root in roots.roots)):
        raise DatasetError(
            f"dataset {ref.uri} lies outside the dataset roots {list(roots.roots)}; "
            "set MMSTORE_DATASET_ROOTS to include it if you trust this store"
        )
    if ref.size > roots.max_bytes:
        raise DatasetError(
            f"dataset {ref.uri} is recorded as {ref.size} bytes, more than max_dataset_bytes ({roots.max_bytes}); "
            "set MMSTORE_MAX_DATASET_BYTES higher if you trust this store"
        )
    return DatasetLocation(ref, scheme, path)


def read_datasets(
    refs: Sequence[DatasetRef], roots: DatasetRoots, storage_options: Mapping[str, Any] | None = None,
) -> list[bytes]:
    """Every dataset's bytes, each checked against the roots, its size and its digest before it is returned."""
    # Every reference is checked before any dataset is opened.
    located = [check_dataset(ref, roots) for ref in refs]
    if not located:
        return []
    with ThreadPoolExecutor(min(_READERS, len(located))) as pool:
        return list(pool.map(lambda where: _read_dataset(where, storage_options or {}), located))


def _validated(ref: DatasetRef) -> DatasetRef:
    # Validated again: a caller's own reference type, or a constructed one, skipped the field checks.
    try:
        return DatasetRef.model_validate({"uri": ref.uri, "digest": ref.digest, "size": ref.size})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise DatasetError(
            f"a dataset reference is malformed ({problems}); the store's change list is forged or damaged, "
            "recover from a trusted copy"
        ) from None


def _split(uri: str, what: str) -> tuple[str, str]:
    """The scheme (file, memory or s3) and the normalised path of a dataset URI or root."""
    match = _SCHEME.match(uri)
    scheme = match.group(1).lower() if match else "file"
    rest = uri[match.end():] if match else uri
    if scheme not in _SCHEMES:
        raise DatasetError(
            f"{what} is a {scheme}:// location, which mmstore never reads; "
            "keep datasets on local paths, memory:// or s3:// under MMSTORE_DATASET_ROOTS"
        )
    segments = rest.strip("/").split("/")
    if ".." in segments or (scheme != "file" and ("" in segments or "." in segments)):
        raise DatasetError(f"{what} has '..', '.' or empty path segments; name the file by its plain path")
    if scheme == "file":
        # Symbolic links resolved: a link inside a root that points outside it lies outside.
        return scheme, os.path.realpath(rest)
    return scheme, ("/" if scheme == "memory" else "") + "/".join(segments)


def _read_dataset(where: DatasetLocation, storage_options: Mapping[str, Any]) -> bytes:
    ref = where.ref
    try:
        data = _read_local(where) if where.scheme == "file" else _read_fs(where, storage_options)
    except FileNotFoundError:
        raise DatasetError(f"dataset {ref.uri} is missing; restore it (digest {ref.digest}) to recover these models") from None
    except OSError as exc:
        raise DatasetError(f"dataset {ref.uri} cannot be read ({exc}); make it readable to recover these models") from None
    if len(data) != ref.size or digest_bytes(data) != ref.digest:
        raise _changed(ref)
    return data


def _read_local(where: DatasetLocation) -> bytes:
    _check_file(where.ref, os.stat(where.path))
    # No following a link swapped in since the check, no blocking on a FIFO; the open file is checked again.
    fd = os.open(where.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as file:
        _check_file(where.ref, os.fstat(file.fileno()))
        return file.read(where.ref.size)


def _check_file(ref: DatasetRef, status: os.stat_result) -> None:
    if not stat.S_ISREG(status.st_mode):
        raise DatasetError(f"dataset {ref.uri} is not a regular file; restore the original file (digest {ref.digest})")
    if status.st_size != ref.size:
        raise _changed(ref)


def _read_fs(where: DatasetLocation, storage_options: Mapping[str, Any]) -> bytes:
    fs = fsspec.filesystem(where.scheme, **storage_options)
    info = fs.info(where.path)
    if info.get("type") != "file":
        raise DatasetError(f"dataset {where.ref.uri} is not a file; restore the original file (digest {where.ref.digest})")
    if info.get("size") != where.ref.size:
        raise _changed(where.ref)
    # At most the recorded size is read, even if the object grew since its size was asked for.
    return fs.cat_file(where.path, start=0, end=where.ref.size) if where.ref.size else b""


def _changed(ref: DatasetRef) -> DatasetError:
    return DatasetError(
        f"dataset {ref.uri} changed since the set was saved (expected {ref.size} bytes with digest "
        f"{ref.digest}); restore the original file to recover these models"
    )
