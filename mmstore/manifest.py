"""The manifest, format v2: one small canonical-JSON document per set; its digest is the set's id.

Everything read from a store is parsed here into strict, typed models before it is used: ids are
64 lowercase hex characters, sizes and counts bounded, lineage names whole-matched, and the
approach's own fields parsed by the document type that approach registered. A v1 manifest is
migrated on reading (its id stays the digest of its stored bytes); a newer one is refused with
"upgrade", not reported as damage.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

import pydantic_core
from pydantic import (BaseModel, ConfigDict, Field, JsonValue, PrivateAttr, SerializeAsAny, StringConstraints, ValidationError,
                      model_validator)

from .arch import ArchSpec
from .blobs import BlobRef, Hex64
from .digest import digest_bytes
from .errors import FormatError, IntegrityError, NewerFormatError
from .layout import Layout
from .plugins import APPROACHES

__all__ = [
    "FORMAT_VERSION", "MAX_DOCUMENT_BYTES", "LINEAGE_PATTERN", "parse_versioned", "LineageName", "ArchDocument", "ApproachDocument",
    "Manifest", "canonical_json", "parse_json", "parse_document",
]

FORMAT_VERSION = 2
# A manifest naming packed blobs is marked 3, so a reader without packs asks for an upgrade instead of failing.
PACKED_VERSION = 3
# Manifests, architecture documents, recipes and fingerprints are small; a bigger one is not ours.
MAX_DOCUMENT_BYTES = 4 << 20
# Whole-string match; names ending like the store's own files (".lock", ".tmp-…") are refused.
LINEAGE_PATTERN = r"\A[A-Za-z0-9](?:[A-Za-z0-9_-]|\.(?!lock\Z|tmp-)){0,127}\Z"
LineageName = Annotated[str, StringConstraints(pattern=LINEAGE_PATTERN)]
_MAX_MODELS = 1 << 31


def canonical_json(obj: BaseModel) -> bytes:
    """Sorted keys, no whitespace, UTF-8: the same data always gives the same bytes."""
    return json.dumps(obj.model_dump(mode="json"), sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def parse_json(data: bytes, what: str) -> Any:
    """JSON from stored bytes, bounded in size and nesting; FormatError instead of any parser failure."""
    if len(data) > MAX_DOCUMENT_BYTES:
        raise FormatError(f"{what} is {len(data)} bytes, more than a document may have; the store was forged or damaged")
    try:
        return pydantic_core.from_json(data, allow_inf_nan=False)
    except ValueError as exc:
        raise FormatError(f"{what} is not valid JSON ({str(exc)[:120]}); the store was forged or damaged") from None


def parse_document(model: Any, obj: Any, what: str) -> Any:
    """Parse `obj` with a pydantic model or TypeAdapter; FormatError naming the first problem otherwise."""
    try:
        validate = model.validate_python if hasattr(model, "validate_python") else model.model_validate
        return validate(obj)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(map(str, first["loc"])) or "document"
        raise FormatError(f"{what} is invalid at {where[:120]}: {first['msg'][:160]}; the store was forged or damaged") from None


def parse_versioned(data: bytes, model: Any, version: int, what: str, format_name: str) -> Any:
    """A stored document of a format now at `version`: "upgrade" if a newer mmstore wrote it, else parsed strictly."""
    obj = parse_json(data, what)
    found = obj.get("schema_version") if isinstance(obj, dict) else None
    if isinstance(found, int) and not isinstance(found, bool) and found > version:
        raise NewerFormatError(f"{what} was written by a newer mmstore ({format_name} format {found}); upgrade mmstore")
    return parse_document(model, obj, what)


class ArchDocument(BaseModel):
    """Architecture and layout: identical for every set of one architecture, so stored once."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: Literal[1, 2] = FORMAT_VERSION
    arch: ArchSpec
    layout: Layout


class ApproachDocument(BaseModel):
    """The approach's own part of a manifest; each approach registers its document type."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    def blob_refs(self) -> dict[str, BlobRef]:
        """Every blob this document names, by role."""
        return {name: value for name, value in self if isinstance(value, BlobRef)}

    def check(self, n_models: int, layout: Layout) -> None:
        """Raise FormatError unless the document's sizes agree with the set's model count and layout."""


class Manifest(BaseModel):
    """What a set is: approach, architecture, base, lineage, and the approach's typed document."""

    # Python's engine: the lineage pattern needs a look-ahead; every pattern here is anchored with \A...\Z.
    model_config = ConfigDict(frozen=True, extra="forbid", regex_engine="python-re")

    schema_version: Literal[2, 3] = FORMAT_VERSION
    approach: Annotated[str, StringConstraints(pattern=r"\A[a-z][a-z0-9-]{0,63}\Z")]
    arch: BlobRef
    n_models: int = Field(ge=1, le=_MAX_MODELS, strict=True)  # strict: JSON true is not a model count
    base: Hex64 | None = None
    lineage: LineageName | None = None
    created: Annotated[str, StringConstraints(pattern=r"\A[0-9T:.+Z-]{10,40}\Z")]
    meta: dict[Annotated[str, StringConstraints(max_length=256)], JsonValue] = {}
    data: SerializeAsAny[ApproachDocument]
    _id: str | None = PrivateAttr(default=None)

    @property
    def id(self) -> str:
        """The set id: the digest of the manifest's stored bytes."""
        if self._id is None:
            self._id = self.encode()[0]
        return self._id

    @property
    def blobs(self) -> dict[str, BlobRef]:
        """The approach's blobs by role (the architecture document not included)."""
        return self.data.blob_refs()

    @model_validator(mode="after")
    def _version_matches_packs(self) -> "Manifest":
        if (self.schema_version == PACKED_VERSION) != self._packed():
            raise ValueError("format 3 marks exactly the manifests that name packed blobs")
        return self

    def _packed(self) -> bool:
        return any(ref.pack is not None for ref in (self.arch, *self.blobs.values()))

    @classmethod
    def build(cls, **fields: Any) -> "Manifest":
        """A new manifest, marked with the format its blobs need."""
        manifest = cls.model_construct(**fields)
        return cls(**fields, schema_version=PACKED_VERSION if manifest._packed() else FORMAT_VERSION)

    def encode(self) -> tuple[str, bytes]:
        """The set id and the manifest's bytes."""
        data = canonical_json(self)
        return digest_bytes(data), data

    @classmethod
    def decode(cls, set_id: str, data: bytes) -> "Manifest":
        """Parse manifest bytes after checking them against the set id; v1 manifests are migrated."""
        if digest_bytes(data) != set_id:
            raise IntegrityError(f"the manifest of set {set_id} does not match its id: it was altered or damaged")
        what = f"the manifest of set {set_id[:12]}"
        obj = parse_json(data, what)
        if not isinstance(obj, dict):
            raise FormatError(f"{what} is not a JSON object; the store was forged or damaged")
        version = obj.get("schema_version")
        if isinstance(version, int) and not isinstance(version, bool) and version > PACKED_VERSION:
            raise NewerFormatError(
                f"set {set_id[:12]} was written by a newer mmstore (format {version}; this one reads up to "
                f"{PACKED_VERSION}); upgrade mmstore to read it"
            )
        if version == 1:
            obj = _migrate_v1(obj, what)
        elif version not in (FORMAT_VERSION, PACKED_VERSION) or isinstance(version, bool):
            raise FormatError(f"{what} has no valid format version ({str(version)[:20]}); the store was forged or damaged")
        approach = APPROACHES.get(obj.get("approach")) if isinstance(obj.get("approach"), str) else None
        if approach is None:
            raise FormatError(f"{what} names no approach; the store was forged or damaged")
        document = parse_document(approach.document, obj.get("data"), f"{what} ({approach.name} part)")
        manifest = parse_document(cls, {**obj, "data": document}, what)
        manifest._id = set_id
        return manifest


def _migrate_v1(obj: dict, what: str) -> dict:
    """A v1 manifest's fields in v2 form: the approach's `extra` fields and blob roles become its document."""
    blobs, extra = obj.get("blobs", {}), obj.get("extra", {})
    if not isinstance(blobs, dict) or not isinstance(extra, dict):
        raise FormatError(f"{what} (format 1) has malformed blobs or extra fields; the store was forged or damaged")
    rest = {k: v for k, v in obj.items() if k not in ("blobs", "extra", "schema_version")}
    return {**rest, "schema_version": FORMAT_VERSION, "data": {**extra, **blobs}}
