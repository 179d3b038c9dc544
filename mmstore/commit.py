"""How sets are committed: blobs first, the manifest (the commit), the blobs re-checked; and group commit.

Group commit writes new versions of many lineages as one pack, their manifests, and one swap per lineage.
Saving a small set alone costs a constant dozen requests (its blobs, their re-check, the manifest,
the lineage's swap). A fleet's ingest commits thousands of small versions, so it commits them
together: every blob of the batch goes into one pack object, then each manifest is written, the
pack is re-checked once, and each lineage moves once, from the head its versions build on to the
newest of them. A lineage another writer moved meanwhile keeps its head; the batch's versions of it
are withdrawn (they were never reachable from any lineage) and reported as a conflict.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import JsonValue

from .approaches import get_approach
from .auto import AUTO, choose_approach
from .blobs import BlobRef
from .concurrency import each
from .digest import digest_bytes
from .errors import ArchitectureError, ConflictError, MMStoreError
from .manifest import ArchDocument, Manifest, canonical_json
from .modelset import ModelSet

__all__ = ["NewVersion", "LineageBatch", "Committing"]


@dataclass
class NewVersion:
    """One new version: its models, its metadata, and how it is saved (the approach and its options)."""

    models: ModelSet
    meta: dict[str, JsonValue] = field(default_factory=dict)
    approach: str = "update"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class LineageBatch:
    """New versions of one lineage, oldest first, to be committed on top of `head` (the lineage's set now)."""

    lineage: str
    head: str
    versions: list[NewVersion] = field(default_factory=list)


class Committing:
    """The writing half of `Store`: one set's commit, and `save_lineages` for many lineages' versions at once."""

    def _encode(self, model_set: ModelSet, approach: str, base_id: str | None, lineage: str | None,
                meta: dict[str, JsonValue] | None, options: dict[str, Any]) -> Manifest:
        """The set's manifest, its blobs written (or packed) on the way; nothing is committed yet."""
        # The head may have been re-based since it was read: its id then leads to the new set.
        base_manifest = self.documents.current(base_id) if base_id else None
        if approach == AUTO:
            approach = choose_approach(model_set, base_manifest, self, options).chosen
            options = {k: v for k, v in options.items() if k != "provenance" or approach == "provenance"}
        arch_doc = canonical_json(ArchDocument(arch=model_set.arch, layout=model_set.layout))
        if base_manifest is not None and digest_bytes(arch_doc) != base_manifest.arch.id:
            self._check_same_architecture(model_set, base_manifest)
        self.documents.mark()
        fields = {"base": base_id, "lineage": lineage, "created": self._clock(), "meta": meta or {}}
        return self._manifest_of(model_set, approach, base_manifest, arch_doc, fields, **options)

    def _manifest_of(self, model_set: ModelSet, approach: str, base: Manifest | None, arch_doc: bytes,
                     fields: dict[str, Any], **options: Any) -> Manifest:
        arch_ref = self._arch_blob(arch_doc, base)
        encoded = get_approach(approach).save(model_set, base, self, **options)
        return Manifest.build(approach=approach, arch=arch_ref, n_models=len(model_set), data=encoded.document, **fields)

    def _commit(self, model_set: ModelSet, approach: str, base: Manifest | None, arch_doc: bytes,
                fields: dict[str, Any], **options: Any) -> Manifest:
        """Write the set's blobs, then its manifest (the commit), then re-check the blobs."""
        with self.blobs.journal() as written:
            manifest = self._manifest_of(model_set, approach, base, arch_doc, fields, **options)
            self._write_manifests([manifest], written)
        return manifest

    def _write_manifests(self, manifests: Sequence[Manifest], written: list[tuple[str, memoryview]]) -> None:
        """Commit manifests whose blobs are written, then re-check those blobs."""
        each(lambda m: self.backend.put(f"sets/{m.id}.json", m.encode()[1], exclusive=True), manifests)
        # A concurrent gc may have collected a blob this save found present or wrote before the commit:
        # checked after the commit, each is either there or written again (docs/architecture.md).
        self.blobs.ensure(written)
        for manifest in manifests:
            self.documents.remember_manifest(manifest)

    def _arch_blob(self, arch_doc: bytes, base: Manifest | None) -> BlobRef:
        # The base's architecture document, read and verified in this process, is not written again (only re-checked).
        if base is not None and base.arch.id == digest_bytes(arch_doc) and self.documents.verified_arch(base.arch.id):
            return self.blobs.present(base.arch, arch_doc)
        return self.blobs.put(arch_doc)

    def _check_same_architecture(self, model_set: ModelSet, base: Manifest) -> None:
        # The source digest may change with harmless edits; the factory, kwargs and layout may not.
        doc = self.arch_document(base)
        if (doc.arch.factory, doc.arch.kwargs, doc.layout) != (model_set.arch.factory, model_set.arch.kwargs, model_set.layout):
            raise ArchitectureError(
                f"the set has another architecture or layout than its base {base.id[:12]}; "
                "start a new lineage for a new architecture"
            )

    def save_lineages(self, batches: Sequence[LineageBatch]) -> dict[str, list[str] | MMStoreError]:
        """Commit every batch's versions; per lineage, the new set ids (oldest first) or why nothing moved.

        The lineage's head is not read: the swap compares it. Each version's rows are kept at hand
        (`remember`), so the next one is a delta on them.
        """
        results: dict[str, list[str] | MMStoreError] = {}
        if not batches:
            return results
        planned: list[tuple[LineageBatch, list[Manifest]]] = []
        with self.blobs.journal() as written:
            with self.blobs.packing() as pack:
                for batch in batches:
                    if not batch.versions:
                        results[batch.lineage] = []
                        continue
                    try:
                        self._lineage_head(batch.lineage, read=False)
                        planned.append((batch, self._encode_versions(batch)))
                    except MMStoreError as exc:
                        results[batch.lineage] = exc
            self.blobs.write_pack(pack)
            self._write_manifests([m for _, manifests in planned for m in manifests], written)
        for (batch, manifests), moved in zip(planned, each(self._try_move, planned)):
            if isinstance(moved, ConflictError):
                self._withdraw(manifests)
                results[batch.lineage] = moved
            else:
                results[batch.lineage] = [m.id for m in manifests]
                # Only the newest rows stay at hand: the next versions build on them, not on those before.
                for set_id in [batch.head, *(m.id for m in manifests[:-1])]:
                    self.forget(set_id)
        return results

    def _try_move(self, planned: tuple[LineageBatch, list[Manifest]]) -> ConflictError | None:
        batch, manifests = planned
        try:
            self._move_lineage(batch.lineage, batch.head, manifests[-1].id)
        except ConflictError as exc:
            return exc
        return None

    def _encode_versions(self, batch: LineageBatch) -> list[Manifest]:
        manifests, base_id = [], batch.head
        try:
            for version in batch.versions:
                manifest = self._encode(version.models, version.approach, base_id, batch.lineage, version.meta, version.options)
                self.documents.remember_manifest(manifest)  # the next version's base, before it is stored
                self.remember(manifest.id, version.models.data)
                manifests.append(manifest)
                base_id = manifest.id
        except MMStoreError:
            self._forget(manifests)
            raise
        return manifests

    def _withdraw(self, manifests: list[Manifest]) -> None:
        # Newest first, as any deletion: no other writer can derive from a set no lineage ever named.
        for manifest in reversed(manifests):
            self.backend.delete(f"sets/{manifest.id}.json")
        self._forget(manifests)

    def _forget(self, manifests: list[Manifest]) -> None:
        for manifest in manifests:
            self.documents.forget_manifest(manifest.id)
            self.forget(manifest.id)
