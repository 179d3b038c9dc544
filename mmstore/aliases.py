"""Aliases: the id a set had before it was re-based still leads to the set, with the same content.

A set's id is the digest of its manifest, which names its base; re-basing a set (prune, compact)
therefore gives it a new id. `aliases/<old-id>` records the new id, the content digest and the old
manifest's own bytes, so a reader can check that the alias belongs to the old id and that the new
set holds exactly what the old one held. Aliases are written once (exclusively) and parsed as
untrusted input like every other document (docs/architecture.md, "Aliases").
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict

from .blobs import Hex64, check_id
from .errors import FormatError, IntegrityError, MMStoreError, NewerFormatError, NotFoundError, ResourceLimitError
from .manifest import MAX_DOCUMENT_BYTES, Manifest, canonical_json, parse_document, parse_json

if TYPE_CHECKING:
    from .documents import StoreDocuments

__all__ = ["ALIASES", "ALIAS_VERSION", "MAX_HOPS", "AliasDocument", "Aliases", "content_of"]

ALIASES = "aliases"
ALIAS_VERSION = 1
# Each re-basing of a set adds one hop; a store re-based more often than this was forged.
MAX_HOPS = 64
_HEX64 = re.compile(r"[0-9a-f]{64}")


def content_of(manifest: Manifest) -> str:
    """The root digest of a set's whole (n, row) byte matrix, whatever its approach."""
    return getattr(manifest.data, "content", None) or manifest.data.params.id


class AliasDocument(BaseModel):
    """Where a re-based set went: its new id, its content digest and its old manifest's bytes."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: Literal[1] = ALIAS_VERSION
    target: Hex64
    content: Hex64
    manifest: str


class Aliases:
    """The alias documents of a store, each parsed and checked against its name before use."""

    def __init__(self, documents: StoreDocuments):
        self.documents = documents
        self._parsed: dict[str, AliasDocument] = {}  # an alias is written once, so a parsed one never goes stale

    def names(self) -> list[str]:
        """The old ids that have an alias; other names in `aliases/` are not aliases and are left out."""
        return [name for name in self.documents.backend.list(ALIASES) if _HEX64.fullmatch(name)]

    def write(self, old: Manifest, old_bytes: bytes, target: Manifest) -> None:
        """Record that `old` now lives as `target` (same content); an identical alias already there is fine."""
        if content_of(old) != content_of(target) or old.id == target.id:
            raise IntegrityError(f"set {target.id[:12]} does not hold the content of {old.id[:12]}; nothing was aliased")
        doc = AliasDocument(target=target.id, content=content_of(old), manifest=old_bytes.decode("utf-8"))
        data = canonical_json(doc)
        if len(data) > MAX_DOCUMENT_BYTES:
            raise ResourceLimitError(f"the manifest of set {old.id[:12]} is too large to re-base; shrink its metadata first")
        key = f"{ALIASES}/{old.id}"
        if not self.documents.backend.put(key, data, exclusive=True) and self.documents.backend.get(key) != data:
            if content_of(self.follow(old.id)) != doc.content:
                raise IntegrityError(f"{key} exists and leads elsewhere; run `mmstore verify`")

    def read(self, old_id: str) -> AliasDocument:
        """The parsed alias of `old_id`, checked against the old manifest it carries; NotFoundError if none."""
        if old_id in self._parsed:
            return self._parsed[old_id]
        key = f"{ALIASES}/{check_id(old_id, 'alias name')}"
        what = f"the alias of set {old_id[:12]}"
        if not self.documents.backend.exists(key):
            raise NotFoundError(f"no set or alias {old_id[:12]} in {self.documents.backend.url}; list sets with `mmstore ls`")
        obj = parse_json(self.documents.bounded(key, MAX_DOCUMENT_BYTES, what), what)
        version = obj.get("schema_version") if isinstance(obj, dict) else None
        if isinstance(version, int) and not isinstance(version, bool) and version > ALIAS_VERSION:
            raise NewerFormatError(f"{what} was written by a newer mmstore (alias format {version}); upgrade mmstore")
        doc = parse_document(AliasDocument, obj, what)
        old = Manifest.decode(old_id, doc.manifest.encode("utf-8", "surrogatepass"))
        if content_of(old) != doc.content or doc.target == old_id:
            raise FormatError(f"{what} disagrees with the manifest it carries; the store was forged or damaged")
        self._parsed[old_id] = doc
        return doc

    def follow(self, set_id: str) -> Manifest:
        """The manifest `set_id` names now: its own, or the one its aliases lead to, holding the same content."""
        try:
            return self.documents.manifest(set_id)
        except NotFoundError as missing:
            if not self.documents.backend.exists(f"{ALIASES}/{check_id(set_id, 'set id')}"):
                raise missing from None
        content, current, seen = None, set_id, set()
        for _ in range(MAX_HOPS):
            doc = self._hop(set_id, current)
            if content not in (None, doc.content):
                raise FormatError(f"the aliases of set {set_id[:12]} disagree about its content; the store was forged or damaged")
            content, current = doc.content, doc.target
            if current in seen or current == set_id:
                raise FormatError(f"the aliases of set {set_id[:12]} loop; the store was forged or damaged")
            seen.add(current)
            try:
                manifest = self.documents.manifest(current)
            except NotFoundError:
                continue
            if content_of(manifest) != content:
                raise FormatError(f"the alias of set {set_id[:12]} leads to a set with other content; the store was forged or damaged")
            return manifest
        raise FormatError(f"set {set_id[:12]} has more than {MAX_HOPS} aliases in a row; the store was forged or damaged")

    def _hop(self, start: str, current: str) -> AliasDocument:
        try:
            return self.read(current)
        except NotFoundError:
            raise NotFoundError(
                f"set {start[:12]} was re-based into {current[:12]}, which has been deleted; list sets with `mmstore ls`"
            ) from None

    def leads_to(self, old_id: str, target: str) -> bool:
        """Whether `old_id`'s aliases name `target`, whether or not `target` exists right now."""
        current = old_id
        for _ in range(MAX_HOPS):
            try:
                current = self.read(current).target
            except MMStoreError:
                return False
            if current == target:
                return True
        return False

    def pointing_at(self, target: str) -> list[str]:
        """The old ids whose alias names `target` directly (an alias that does not parse names nothing)."""
        found = []
        for name in self.names():
            try:
                if self.read(name).target == target:
                    found.append(name)
            except MMStoreError:
                continue
        return found

    def remove(self, old_id: str) -> None:
        """Delete an alias (its set is being deleted; nothing derives from it any more)."""
        self.documents.backend.delete(f"{ALIASES}/{check_id(old_id, 'alias name')}")
        self._parsed.pop(old_id, None)
