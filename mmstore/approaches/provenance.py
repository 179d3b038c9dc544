"""Provenance (paper Section 3.4): a derived set stores how its changed models were trained, not their bytes.

The first set is a snapshot. A derived set stores the recipe and the environment fingerprint (each
content-addressed, so shared by every set that uses them), and one compact change list: per
changed model its recipe, its dataset reference and the digest of every tensor it changed.
Recovery re-trains the changed models from their base versions and checks each result bit for bit.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal, Union

import numpy as np
from pydantic import Field, TypeAdapter

from ..arch import import_trusted, source_digest
from ..diff import DIGEST_SIZE, diff, tensor_digests
from ..digest import digest_bytes
from ..blobs import BlobRef, Hex64
from ..errors import FormatError, MMStoreError, ReproductionError, TrainerChangedError
from ..layout import Layout
from ..manifest import MAX_DOCUMENT_BYTES, ApproachDocument, Manifest, canonical_json, parse_document, parse_json
from ..plugins import EXECUTORS
from ..modelset import ModelSet
from ..provenance_records import (
    ChangedModel, ChangeList, DatasetRoots, ProvenanceRecord, RecipeDocument, decode_changes, encode_changes, read_datasets,
)
from ..replay import TRAINER_KIND, Executor, ReplayJob, ReplayTask
from .base import Encoded, RecoveryContext, StoreAccess
from .baseline import check_params, read_snapshot, write_snapshot

__all__ = ["Provenance", "ProvenanceSnapshot", "ProvenanceReplay"]

_DIGEST = re.compile(f"[0-9a-f]{{{2 * DIGEST_SIZE}}}")
_MAX_CHAIN = 100_000
_ENTRY_BYTES = 8 << 10  # a dataset URI (at most 4 KiB), its digest, size and recipe name, with JSON syntax
_TENSOR_ENTRY_BYTES = 1100  # a tensor name (at most 1 KiB) and its digest


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


@dataclass(frozen=True)
class _Stored:
    """A derived set's own blobs, read and verified."""

    recipe: RecipeDocument
    environment: bytes
    changes: ChangeList


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
            recipe=store.blobs.put(canonical_json(_recipe_document(record, store))),
            environment=store.blobs.put(record.environment_bytes()),
            changes=store.blobs.put(encode_changes(changes)),
        ))

    def recover(self, manifest: Manifest, store: StoreAccess, models: np.ndarray | None,
                context: RecoveryContext) -> np.ndarray:
        """Recover the nearest snapshot's rows, re-train each version's changed models among `models`, check all.

        The chain is walked iteratively, newest to oldest, and every version's trainer, datasets and
        environment are checked before the first row is read: nothing trains on bad inputs.
        """
        if manifest.data.kind == "snapshot":
            return read_snapshot(manifest.data.params, manifest.n_models, store, models)
        cached = store.cached_rows(manifest.id)
        if cached is not None:
            return cached.copy() if models is None else cached[models]
        wanted = np.arange(manifest.n_models) if models is None else np.unique(models)
        executor = _executor(context, store, manifest.id)
        chain, start = _replay_chain(manifest, store)
        steps = [_prepare(m, store, wanted, context, executor) for m in chain]
        rows = store.recover_rows(start.id, RecoveryContext(None if models is None else wanted, executor, context.force,
                                                            context.dataset_options))
        if not rows.flags.writeable:
            rows = rows.copy()
        for step in reversed(steps):
            step.apply(rows, wanted, store, executor, complete=models is None)
        return rows if models is None else rows[np.searchsorted(wanted, models)]


@dataclass(frozen=True)
class _Step:
    """One version of a chain, ready to replay: its manifest, what it stores, the models to train, their data."""

    manifest: Manifest
    stored: _Stored
    todo: list[ChangedModel]
    datasets: list[bytes]

    def apply(self, rows: np.ndarray, wanted: np.ndarray, store: StoreAccess, executor: Executor, complete: bool) -> None:
        """Re-train this version's changed models in `rows` (the previous version's), checking every result."""
        if self.todo:
            at = np.searchsorted(wanted, [entry.model for entry in self.todo])
            rows[at] = _replay(rows[at], self.todo, self.datasets, self.stored.recipe, store, self.manifest, executor)
        if complete:
            if digest_bytes(rows) != self.manifest.data.content:
                raise ReproductionError(f"the replayed set {self.manifest.id[:12]} does not match its recorded content digest")
            store.remember(self.manifest.id, rows)


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


def _prepare(manifest: Manifest, store: StoreAccess, wanted: np.ndarray, context: RecoveryContext,
             executor: Executor) -> _Step:
    """Read and check one version's record, trainer, datasets and environment; nothing is trained yet."""
    stored = _read_stored(manifest, store, store.arch_document(manifest).layout)
    if not context.force:
        _check_trainer(stored.recipe, store)
    todo = [entry for entry in stored.changes.models if _contains(wanted, entry.model)]
    roots = DatasetRoots.of(store.url, store.settings)
    datasets = read_datasets([entry.dataset for entry in todo], roots, context.dataset_options)
    executor.check(stored.environment)
    return _Step(manifest, stored, todo, datasets)


def _recipe_document(record: ProvenanceRecord, store: StoreAccess) -> RecipeDocument:
    import_trusted(record.trainer, store.settings.allowed_prefixes(), TRAINER_KIND)
    digest = source_digest(record.trainer.partition(":")[0])
    return RecipeDocument(trainer=record.trainer, trainer_digest=digest, recipes=record.recipes)


def _digest_table(manifest: Manifest, layout: Layout, store: StoreAccess) -> np.ndarray:
    """The per-tensor digests of a set's rows, without re-training: replayed sets record theirs."""
    chain, start = _replay_chain(manifest, store)
    cached = store.cached_rows(start.id)
    table = tensor_digests(cached if cached is not None else store.recover_rows(start.id), layout).copy()
    names = {spec.name: t for t, spec in enumerate(layout.tensors)}
    for version in reversed(chain):
        for entry in _read_stored(version, store, layout).changes.models:
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
    return ChangeList(models=tuple(entries))


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


def _read_stored(manifest: Manifest, store: StoreAccess, layout: Layout) -> _Stored:
    """The set's recipe, fingerprint and change list, parsed and checked against the set they describe."""
    def blob(role: str) -> bytes:
        return store.blobs.get(manifest.blobs[role]).tobytes()

    what = f"the recipe of set {manifest.id[:12]}"
    recipe = parse_document(RecipeDocument, parse_json(blob("recipe"), what), what)
    # A change list entry holds a dataset reference and at most one digest per tensor: that bounds decoding.
    bound = min(manifest.data.changed * (_ENTRY_BYTES + len(layout.tensors) * _TENSOR_ENTRY_BYTES) + _ENTRY_BYTES,
                store.settings.max_set_bytes)
    changes = decode_changes(blob("changes"), manifest.id, bound)
    _check_changes(changes, recipe, manifest, layout)
    return _Stored(recipe, blob("environment"), changes)


def _check_changes(changes: ChangeList, recipe: RecipeDocument, manifest: Manifest, layout: Layout) -> None:
    """Models in range and ascending, recipes defined, tensor names of the layout, digests of 16 bytes."""
    models = [entry.model for entry in changes.models]
    names = {spec.name for spec in layout.tensors}
    bad = (
        len(models) != manifest.data.changed
        or any(not 0 <= m < manifest.n_models for m in models)
        or any(b <= a for a, b in zip(models, models[1:]))
        or any(e.recipe not in recipe.recipes or not set(e.tensors) <= names for e in changes.models)
        or any(not _DIGEST.fullmatch(d) for e in changes.models for d in e.tensors.values())
    )
    if bad:
        raise FormatError(f"the change list of set {manifest.id[:12]} does not fit its set; the store was forged or damaged")


def _check_trainer(recipe: RecipeDocument, store: StoreAccess) -> None:
    import_trusted(recipe.trainer, store.settings.allowed_prefixes(), TRAINER_KIND)
    current = source_digest(recipe.trainer.partition(":")[0])
    if current != recipe.trainer_digest:
        raise TrainerChangedError(
            f"the source of the training function {recipe.trainer} changed since the set was saved "
            f"(recorded digest {recipe.trainer_digest[:16]}, now {current[:16]}); restore that source, "
            "or pass force=True to replay anyway (results are still checked bit for bit)"
        )


def _executor(context: RecoveryContext, store: StoreAccess, set_id: str) -> Executor:
    """The context's executor object, or the registered one it (or the settings) names, built for this set."""
    chosen = context.executor if context.executor is not None else store.settings.replay_executor
    return EXECUTORS.get(chosen)(store, set_id) if isinstance(chosen, str) else chosen


def _contains(sorted_values: np.ndarray, value: int) -> bool:
    at = int(np.searchsorted(sorted_values, value))
    return at < len(sorted_values) and int(sorted_values[at]) == value


def _replay(start: np.ndarray, todo: list[ChangedModel], datasets: list[bytes], recipe: RecipeDocument,
            store: StoreAccess, manifest: Manifest, executor: Executor) -> np.ndarray:
    """Re-train the `todo` models from their `start` rows; every result is checked before it is returned."""
    doc = store.arch_document(manifest)
    jobs = [ReplayJob(e.model, row, data, recipe.recipes[e.recipe]) for e, row, data in zip(todo, start, datasets)]
    trained = executor.replay(ReplayTask(doc.arch, doc.layout, recipe.trainer, store.settings.allowed_prefixes()), jobs)
    _check_results(trained, start, todo, doc.layout)
    return trained


def _check_results(trained: np.ndarray, start: np.ndarray, todo: list[ChangedModel], layout: Layout) -> None:
    """Each replayed tensor must have its recorded digest, or, if unrecorded, its base bytes."""
    if trained.shape != start.shape:
        raise ReproductionError(f"the executor returned {trained.shape} rows of bytes for {start.shape}; it is broken")
    digests = tensor_digests(trained, layout)
    for k, entry in enumerate(todo):
        for t, spec in enumerate(layout.tensors):
            columns = slice(spec.offset, spec.offset + spec.nbytes)
            expected = entry.tensors.get(spec.name)
            same = digests[k, t].tobytes().hex() == expected if expected else np.array_equal(trained[k, columns], start[k, columns])
            if not same:
                raise ReproductionError(
                    f"replaying model {entry.model} gave another tensor {spec.name!r} than was recorded: "
                    "training is not reproducible here; replay in the recorded environment, or check the trainer"
                )
