"""The manifest: one small canonical-JSON document per set; its digest is the set's id."""

from __future__ import annotations

import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, JsonValue, ValidationError

from .arch import ArchSpec
from .blobs import BlobRef
from .digest import digest_bytes
from .errors import IntegrityError
from .layout import Layout

__all__ = ["SCHEMA_VERSION", "ArchDocument", "Manifest", "canonical_json"]

SCHEMA_VERSION = 1


def canonical_json(obj: BaseModel) -> bytes:
    """Sorted keys, no whitespace, UTF-8: the same data always gives the same bytes."""
    return json.dumps(obj.model_dump(mode="json"), sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


class ArchDocument(BaseModel):
    """Architecture and layout: identical for every set of one architecture, so stored once."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: Literal[1] = SCHEMA_VERSION
    arch: ArchSpec
    layout: Layout


class Manifest(BaseModel):
    """What a set is: approach, architecture, base, blobs and approach-specific fields."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: Literal[1] = SCHEMA_VERSION
    approach: str
    arch: BlobRef
    n_models: int
    base: str | None = None
    lineage: str | None = None
    created: str
    meta: dict[str, JsonValue] = {}
    blobs: dict[str, BlobRef] = {}
    extra: dict[str, JsonValue] = {}

    @property
    def id(self) -> str:
        """The set id: the digest of this manifest's canonical bytes."""
        return self.encode()[0]

    def encode(self) -> tuple[str, bytes]:
        """The set id and the manifest's bytes."""
        data = canonical_json(self)
        return digest_bytes(data), data

    @classmethod
    def decode(cls, set_id: str, data: bytes) -> "Manifest":
        """Parse manifest bytes after checking them against the set id."""
        if digest_bytes(data) != set_id:
            raise IntegrityError(f"the manifest of set {set_id} does not match its id: it was altered or damaged")
        try:
            return cls.model_validate_json(data)
        except ValidationError as exc:
            raise IntegrityError(f"the manifest of set {set_id} is not a schema-1 manifest: {exc}") from exc
