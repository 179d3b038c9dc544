"""The provenance approach's records: what a caller declares, what a derived set stores, dataset checks."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

import fsspec
import zstandard
from pydantic import BaseModel, ConfigDict, JsonValue, ValidationError, field_validator

from .digest import digest_bytes
from .errors import DatasetError, IntegrityError, MMStoreError
from .manifest import canonical_json

__all__ = [
    "DatasetRef",
    "ProvenanceRecord",
    "RecipeDocument",
    "ChangedModel",
    "ChangeList",
    "encode_changes",
    "decode_changes",
    "read_datasets",
]

_FROZEN = ConfigDict(frozen=True, extra="forbid")
# Reading datasets is I/O-bound: on object stores, many requests in flight hide the latency.
_READERS = 8


class DatasetRef(BaseModel):
    """A dataset outside the store: its fsspec URI and the digest and size its bytes must have."""

    # from_attributes: a workload's own DatasetRef (same fields) is accepted as is.
    model_config = ConfigDict(frozen=True, extra="forbid", from_attributes=True)

    uri: str
    digest: str
    size: int


class ProvenanceRecord(BaseModel):
    """How a derived set's changed models were trained: `Store.save(..., provenance=record)`.

    `trainer` is `"package.module:function"`, called as `function(model, dataset_bytes, recipe)`;
    `recipes` maps a name to the recipe (hyper-parameters, seed, trainable layers, determinism);
    `changes` maps each changed model's index to its recipe's name and its dataset; `environment`
    is the fingerprint (JSON) of the environment the training ran in.
    """

    model_config = _FROZEN

    trainer: str
    recipes: dict[str, dict[str, JsonValue]]
    changes: dict[int, tuple[str, DatasetRef]]
    environment: str

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
    """Every changed model of a derived set, by ascending model index."""

    model_config = _FROZEN

    schema_version: Literal[1] = 1
    models: tuple[ChangedModel, ...]


def encode_changes(changes: ChangeList) -> bytes:
    """Canonical JSON, zstd-compressed: the URIs and names repeat from model to model."""
    return zstandard.ZstdCompressor(level=19).compress(canonical_json(changes))


def decode_changes(data: bytes, set_id: str) -> ChangeList:
    """The change list of set `set_id` from its stored bytes."""
    try:
        return ChangeList.model_validate_json(zstandard.ZstdDecompressor().decompress(data))
    except (zstandard.ZstdError, ValidationError) as exc:
        raise IntegrityError(f"the change list of set {set_id[:12]} is not readable ({exc}); the store is damaged") from exc


def read_datasets(refs: Sequence[DatasetRef], storage_options: Mapping[str, Any] | None = None) -> list[bytes]:
    """Every dataset's bytes, each checked against its recorded size and digest before it is returned."""
    if not refs:
        return []
    with ThreadPoolExecutor(min(_READERS, len(refs))) as pool:
        return list(pool.map(lambda ref: _read_dataset(ref, storage_options or {}), refs))


def _read_dataset(ref: DatasetRef, storage_options: Mapping[str, Any]) -> bytes:
    fs, path = fsspec.core.url_to_fs(ref.uri, **storage_options)
    try:
        data = fs.cat_file(path)
    except FileNotFoundError:
        raise DatasetError(f"dataset {ref.uri} is missing; restore it (digest {ref.digest}) to recover these models") from None
    if len(data) != ref.size or digest_bytes(data) != ref.digest:
        raise DatasetError(
            f"dataset {ref.uri} changed since the set was saved (expected {ref.size} bytes with digest "
            f"{ref.digest}); restore the original file to recover these models"
        )
    return data
