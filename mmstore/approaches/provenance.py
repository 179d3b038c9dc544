"""Provenance (paper Section 3.4): a derived set stores how its changed models were trained, not their bytes.

The first set is a snapshot. A derived set stores the recipe and the environment fingerprint (each
content-addressed, so shared by every set that uses them), and one compact change list: per
changed model its recipe, its dataset reference and the digest of every tensor it changed.
Recovery re-trains the changed models from their base versions and checks each result bit for bit.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Literal, Union

import numpy as np
from pydantic import Field, TypeAdapter

from ..arch import import_trusted, source_digest
from ..diff import diff, tensor_digests
from ..digest import digest_bytes
from ..blobs import BlobRef, Hex64
from ..errors import FormatError, MMStoreError
from ..groups import group_problem
from ..layout import Layout
from ..manifest import MAX_DOCUMENT_BYTES, ApproachDocument, Manifest, canonical_json
from ..modelset import ModelSet
from ..provenance_records import (
    ChangedModel, ChangeList, DatasetRoots, ProvenanceRecord, RecipeDocument, encode_changes, read_datasets,
)
from .base import Encoded, RecoveryContext, StoreAccess
from .baseline import check_params, read_snapshot, write_snapshot
from .provenance_replay import executor_for, prepare, read_stored, trainer_kind, widen

__all__ = ["Provenance", "ProvenanceSnapshot", "ProvenanceReplay"]

_MAX_CHAIN = 100_000


class ProvenanceSnapshot(ApproachDocument):
    """The first set of a provenance lineage: every row, as a baseline set."""

    kind: Literal["snapshot"] = "snapshot"
    params: BlobRef

    def check(self, n_models: int, layout: Layout) -> None:
        """The parameter blob's size agrees with the model count and layout."""
        check_params(self.params, n_models, layout)


class ProvenanceReplay(ApproachDocument):
    """A derived set: the recipe, the environment fingerprint and the change list, plus the content root."""

    kind: Literal["replay"] = "replay"
    changed: int = Field(ge=0)
    content: Hex64
    recipe: BlobRef
    environment: BlobRef
    changes: BlobRef

    def check(self, n_models: int, layout: Layout) -> None:
        """At most every model changed, and each document is of a document's size."""
        if self.changed > n_models or max(self.recipe.size, self.environment.size, self.changes.size) > MAX_DOCUMENT_BYTES:
            raise FormatError("a provenance set's change count or documents are out of bounds; the store was forged or damaged")


ProvenanceDocument = TypeAdapter(Annotated[Union[ProvenanceSnapshot, ProvenanceReplay], Field(discriminator="kind")])


class Provenance:
    """Snapshots first, then recipes, dataset references and expected digests; recovered by replay."""

    name: ClassVar[str] = "provenance"
    document: ClassVar[Any] = ProvenanceDocument

    def save(
        self, model_set: ModelSet, base: Manifest | None, store: StoreAccess,
        provenance: ProvenanceRecord | Mapping[str, Any] | None = None, **options: Any,
    ) -> Encoded:
        """A snapshot for a first set; for a derived set, the record of how its changed models were trained."""
        if base is None or len(_replay_chain(base, store, stop_at_cached=False)[0]) >= store.settings.max_replay_depth:
            # A snapshot bounds how many versions a recovery replays; the record is not needed to recover it.
            return Encoded(ProvenanceSnapshot(params=write_snapshot(model_set, store)))
        if provenance is None:
            raise MMStoreError("a derived provenance set needs provenance=ProvenanceRecord(...); or save it with approach='baseline'")
        record = ProvenanceRecord.model_validate(provenance)
        changes = _change_list(model_set, _digest_table(base, model_set.layout, store), record)
        read_datasets([entry.dataset for entry in changes.models], DatasetRoots.of(store.url, store.settings))
        return Encoded(ProvenanceReplay(
            changed=len(changes.models), content=digest_bytes(model_set.data),
            recipe=store.blobs.put(canonical_json(_recipe_document(record, changes, store))),
            environment=store.blobs.put(record.environment_bytes()),
            changes=store.blobs.put(encode_changes(changes)),
        ))

    def recover(self, manifest: Manifest, store: StoreAccess, models: np.ndarray | None,
                context: RecoveryContext) -> np.ndarray:
        """Recover the nearest snapshot's rows, re-train each version's changed models among `models`, check all.

        The chain is walked iteratively, newest to oldest, and every version's trainer, datasets and
        environment are checked before the first row is read: nothing trains on bad inputs. A version
        trained in groups replays whole groups, so `models` grows by their other members.
        """
        if manifest.data.kind == "snapshot":
            return read_snapshot(manifest.data.params, manifest.n_models, store, models)
        cached = store.cached_rows(manifest.id)
        if cached is not None:
            return cached.copy() if models is None else cached[models]
        wanted = np.arange(manifest.n_models) if models is None else np.unique(models)
        executor = executor_for(context, store, manifest.id)
        chain, start = _replay_chain(manifest, store)
        stored = [read_stored(m, store, store.arch_document(m).layout) for m in chain]
        wanted = wanted if models is None else widen(stored, wanted)
        steps = [prepare(m, s, store, wanted, context, executor) for m, s in zip(chain, stored)]
        rows = store.recover_rows(start.id, RecoveryContext(None if models is None else wanted, executor, context.force,
                                                            context.dataset_options))
        if not rows.flags.writeable:
            rows = rows.copy()
        for step in reversed(steps):
            step.apply(rows, wanted, store, executor, complete=models is None)
        return rows if models is None else rows[np.searchsorted(wanted, models)]


def _replay_chain(manifest: Manifest, store: StoreAccess, stop_at_cached: bool = True) -> tuple[list[Manifest], Manifest]:
    """The replayed versions from `manifest` down to (excluding) the first snapshot, cached or other set."""
    chain, current = [], manifest
    while current.approach == Provenance.name and current.data.kind == "replay":
        if stop_at_cached and store.cached_rows(current.id) is not None:
            break
        if len(chain) >= _MAX_CHAIN:
            raise FormatError(
                f"set {manifest.id[:12]} is more than {_MAX_CHAIN} replays from a snapshot; save a snapshot of it "
                "(approach='baseline') and derive from that"
            )
        chain.append(current)
        current = store.base_of(current)
    return chain, current


def _recipe_document(record: ProvenanceRecord, changes: ChangeList, store: StoreAccess) -> RecipeDocument:
    import_trusted(record.trainer, store.settings.allowed_prefixes(), trainer_kind(changes))
    digest = source_digest(record.trainer.partition(":")[0])
    return RecipeDocument(trainer=record.trainer, trainer_digest=digest, recipes=record.recipes)


def _digest_table(manifest: Manifest, layout: Layout, store: StoreAccess) -> np.ndarray:
    """The per-tensor digests of a set's rows, without re-training: replayed sets record theirs."""
    chain, start = _replay_chain(manifest, store)
    cached = store.cached_rows(start.id)
    table = tensor_digests(cached if cached is not None else store.recover_rows(start.id), layout).copy()
    names = {spec.name: t for t, spec in enumerate(layout.tensors)}
    for version in reversed(chain):
        for entry in read_stored(version, store, layout).changes.models:
            for name, digest in entry.tensors.items():
                table[entry.model, names[name]] = np.frombuffer(bytes.fromhex(digest), dtype=np.uint8)
    return table


def _change_list(model_set: ModelSet, base_table: np.ndarray, record: ProvenanceRecord) -> ChangeList:
    """The changed models with their new tensor digests; they must be exactly the recorded ones."""
    delta = diff(model_set.data, tensor_digests(model_set.data, model_set.layout), base_table, model_set.layout)
    changed = np.flatnonzero(delta.mask.any(axis=1))
    _check_recorded(set(changed.tolist()), record)
    names = [spec.name for spec in model_set.layout.tensors]
    digests = iter(delta.digests)
    entries = []
    for i in changed.tolist():
        recipe, dataset = record.changes[i]
        tensors = {names[t]: next(digests).tobytes().hex() for t in np.flatnonzero(delta.mask[i])}
        entries.append(ChangedModel(model=i, recipe=recipe, dataset=dataset, tensors=tensors))
    return ChangeList(models=tuple(entries), groups=record.groups)


def _check_recorded(changed: set[int], record: ProvenanceRecord) -> None:
    unrecorded, unchanged = sorted(changed - set(record.changes)), sorted(set(record.changes) - changed)
    if unrecorded or unchanged:
        raise MMStoreError(
            f"the provenance record does not match the set: models changed without a record {unrecorded[:10]}, "
            f"records for unchanged models {unchanged[:10]}; record exactly the models that were retrained"
        )
    unknown = sorted({recipe for recipe, _ in record.changes.values()} - set(record.recipes))
    if unknown:
        raise MMStoreError(f"the provenance record names recipes it does not define: {unknown}")
    problem = record.groups and group_problem(record.groups, {m: recipe for m, (recipe, _) in record.changes.items()})
    if problem:
        raise MMStoreError(f"the provenance record's training groups do not fit its changes: {problem}; "
                           "record every retrained model once, in groups of one recipe")
