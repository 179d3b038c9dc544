"""Provenance recovery's replay side: read and check one version's record, re-train its models, check the bits.

A version trained one model per call replays model by model; a version with a grouping replays
exactly its recorded groups (a model's bits may depend on its group), so recovering some models
trains every model of their groups.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from ..arch import GROUP_TRAINER_KIND, TRAINER_KIND, import_trusted, source_digest
from ..diff import DIGEST_SIZE, tensor_digests
from ..digest import digest_bytes
from ..errors import FormatError, ReproductionError, TrainerChangedError
from ..groups import GroupPlan, closure, group_problem
from ..layout import Layout
from ..manifest import Manifest, parse_document, parse_json
from ..plugins import EXECUTORS
from ..provenance_records import ChangedModel, ChangeList, DatasetRoots, RecipeDocument, decode_changes, read_datasets
from ..replay import Executor, ReplayJob, ReplayTask, grouped
from .base import RecoveryContext, StoreAccess

__all__ = ["Stored", "Step", "read_stored", "prepare", "executor_for", "trainer_kind", "widen"]

_DIGEST = re.compile(f"[0-9a-f]{{{2 * DIGEST_SIZE}}}")
_ENTRY_BYTES = 8 << 10  # a dataset URI (at most 4 KiB), its digest, size and recipe name, with JSON syntax
_TENSOR_ENTRY_BYTES = 1100  # a tensor name (at most 1 KiB) and its digest
_GROUP_ENTRY_BYTES = 24  # one model index of the grouping, with JSON syntax


@dataclass(frozen=True)
class Stored:
    """A derived set's own blobs, read and verified."""

    recipe: RecipeDocument
    environment: bytes
    changes: ChangeList


@dataclass(frozen=True)
class Step:
    """One version of a chain, ready to replay: its manifest, what it stores, the models to train, their data."""

    manifest: Manifest
    stored: Stored
    todo: list[ChangedModel]
    datasets: list[bytes]

    def apply(self, rows: np.ndarray, wanted: np.ndarray, store: StoreAccess, executor: Executor, complete: bool) -> None:
        """Re-train this version's changed models in `rows` (the previous version's), checking every result."""
        if self.todo:
            at = np.searchsorted(wanted, [entry.model for entry in self.todo])
            rows[at] = _replay(rows[at], self, store, executor)
        if complete:
            if digest_bytes(rows) != self.manifest.data.content:
                raise ReproductionError(f"the replayed set {self.manifest.id[:12]} does not match its recorded content digest")
            store.remember(self.manifest.id, rows)


def trainer_kind(changes: ChangeList) -> str:
    """The kind of training function a version's record names: a group trainer when it records groups."""
    return TRAINER_KIND if changes.groups is None else GROUP_TRAINER_KIND


def widen(versions: list[Stored], wanted: np.ndarray) -> np.ndarray:
    """`wanted` (sorted) with every model that trains in a group with a wanted one, in any of `versions`."""
    plans = [stored.changes.groups for stored in versions if stored.changes.groups is not None]
    chosen = set(wanted.tolist())
    # A model added for one version's group may share a group with others in another version.
    while plans:
        grown = set().union(chosen, *(closure(plan, chosen) for plan in plans))
        if grown == chosen:
            break
        chosen = grown
    return np.array(sorted(chosen), dtype=wanted.dtype)


def prepare(manifest: Manifest, stored: Stored, store: StoreAccess, wanted: np.ndarray, context: RecoveryContext,
            executor: Executor) -> Step:
    """Check one version's trainer, datasets and environment; nothing is trained yet."""
    if not context.force:
        _check_trainer(stored, store)
    todo = [entry for entry in stored.changes.models if _contains(wanted, entry.model)]
    if stored.changes.groups is not None:
        # Recorded training order: each group's members consecutive, as they trained.
        position = {m: i for i, m in enumerate(stored.changes.groups.models())}
        todo.sort(key=lambda entry: position[entry.model])
    roots = DatasetRoots.of(store.url, store.settings)
    datasets = read_datasets([entry.dataset for entry in todo], roots, context.dataset_options)
    executor.check(stored.environment)
    return Step(manifest, stored, todo, datasets)


def read_stored(manifest: Manifest, store: StoreAccess, layout: Layout) -> Stored:
    """The set's recipe, fingerprint and change list, parsed and checked against the set they describe."""
    def blob(role: str) -> bytes:
        return store.blobs.get(manifest.blobs[role]).tobytes()

    what = f"the recipe of set {manifest.id[:12]}"
    recipe = parse_document(RecipeDocument, parse_json(blob("recipe"), what), what)
    # A change list entry holds a dataset reference, at most one digest per tensor and its place in
    # the grouping: that bounds decoding.
    per_entry = _ENTRY_BYTES + len(layout.tensors) * _TENSOR_ENTRY_BYTES + _GROUP_ENTRY_BYTES
    bound = min(manifest.data.changed * per_entry + _ENTRY_BYTES, store.settings.max_set_bytes)
    changes = decode_changes(blob("changes"), manifest.id, bound)
    _check_changes(changes, recipe, manifest, layout)
    return Stored(recipe, blob("environment"), changes)


def executor_for(context: RecoveryContext, store: StoreAccess, set_id: str) -> Executor:
    """The context's executor object, or the registered one it (or the settings) names, built for this set."""
    chosen = context.executor if context.executor is not None else store.settings.replay_executor
    return EXECUTORS.get(chosen)(store, set_id) if isinstance(chosen, str) else chosen


def _check_changes(changes: ChangeList, recipe: RecipeDocument, manifest: Manifest, layout: Layout) -> None:
    """Models in range and ascending, recipes defined, tensor names of the layout, digests of 16 bytes, groups fit."""
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
    if changes.groups is not None:
        problem = group_problem(changes.groups, {e.model: e.recipe for e in changes.models})
        if problem:
            raise FormatError(f"the training groups of set {manifest.id[:12]} do not fit its changes ({problem}); "
                              "the store was forged or damaged")


def _check_trainer(stored: Stored, store: StoreAccess) -> None:
    recipe = stored.recipe
    import_trusted(recipe.trainer, store.settings.allowed_prefixes(), trainer_kind(stored.changes))
    current = source_digest(recipe.trainer.partition(":")[0])
    if current != recipe.trainer_digest:
        raise TrainerChangedError(
            f"the source of the training function {recipe.trainer} changed since the set was saved "
            f"(recorded digest {recipe.trainer_digest[:16]}, now {current[:16]}); restore that source, "
            "or pass force=True to replay anyway (results are still checked bit for bit)"
        )


def _contains(sorted_values: np.ndarray, value: int) -> bool:
    at = int(np.searchsorted(sorted_values, value))
    return at < len(sorted_values) and int(sorted_values[at]) == value


def _replay(start: np.ndarray, step: Step, store: StoreAccess, executor: Executor) -> np.ndarray:
    """Re-train the step's models from their `start` rows; every result is checked before it is returned."""
    doc, recipe, todo = store.arch_document(step.manifest), step.stored.recipe, step.todo
    jobs = [ReplayJob(e.model, row, data, recipe.recipes[e.recipe]) for e, row, data in zip(todo, start, step.datasets)]
    task = ReplayTask(doc.arch, doc.layout, recipe.trainer, store.settings.allowed_prefixes())
    plan = step.stored.changes.groups
    if plan is not None:
        chosen = {e.model for e in todo}
        # Whole groups only (`widen` saw to that), in their recorded order, as `prepare` sorted the jobs.
        task, jobs = grouped(task, jobs, GroupPlan(threads=plan.threads, groups=[g for g in plan.groups if g[0] in chosen]))
    trained = executor.replay(task, jobs)
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
