"""Pruning and compacting a lineage: sets are re-based into snapshots before anything they need is deleted.

Mixed into `Store`. The order of every step, and why a crash or a concurrent writer at any point
leaves every kept set recoverable, is in docs/architecture.md ("Pruning and compaction").
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict

from .blobs import Hex64
from .errors import ConflictError, InUseError, MMStoreError, NotFoundError
from .gc import restore_set_aside
from .lifecycle import DEFAULT_GRACE
from .manifest import MAX_DOCUMENT_BYTES, LineageName, Manifest, canonical_json, parse_document, parse_json
from .modelset import ModelSet
from .retention import CompactReport, PruneReport, RetentionPolicy, parse_created, select_kept

if TYPE_CHECKING:
    from .store import SetInfo

__all__ = ["Rebasing", "PrunePlan", "PLANS"]

PLANS = "plans"
_PLAN = re.compile(r"[0-9a-f]{32}\.json")


class PrunePlan(BaseModel):
    """The sets a running prune removes, newest first, so that a later prune finishes the work after a crash."""

    model_config = ConfigDict(frozen=True, extra="forbid", regex_engine="python-re")

    schema_version: Literal[1] = 1
    lineage: LineageName
    remove: tuple[Hex64, ...]


class Rebasing:
    """Retention (`prune`) and chain compaction (`compact`) of a `Store`'s lineages."""

    def prune(self, lineage: str, policy: RetentionPolicy, dry_run: bool = False,
              grace: float | None = DEFAULT_GRACE) -> PruneReport:
        """Remove the sets of a lineage's chain the policy does not keep, then collect garbage older than `grace` s.

        A set that stays (kept, or outside the chain) and derives from a removed one is first re-based
        into a snapshot with the same content; its old id stays resolvable through an alias. Sets any
        lineage points at are always kept. With `grace=None` the caller collects garbage (once for many lineages).
        """
        if not dry_run:
            self._finish_plans(lineage)
        chain = self._chain_of(lineage)
        heads = set(self.lineages().values())
        kept = select_kept([(info.id, parse_created(info.created, info.id)) for info in chain], policy)
        kept |= heads & {info.id for info in chain}
        report = PruneReport(lineage, dry_run, kept=[i.id for i in chain if i.id in kept],
                             removed=[i.id for i in chain if i.id not in kept])
        doomed = set(report.removed)
        needing = [info.id for info in self.list()
                   if info.id not in doomed and info.base is not None and self.documents.current(info.base).id in doomed]
        if dry_run:
            report.rebased = dict.fromkeys(needing)
            return report
        # The plan outlives a crash: once a removed set is gone, the older ones are no longer on the chain.
        plan = f"{PLANS}/{uuid.uuid4().hex}.json"
        self.backend.put(plan, canonical_json(PrunePlan(lineage=lineage, remove=tuple(report.removed))), exclusive=True)
        report.rebased = self._rebase_all(needing, lambda set_id: self._kept_ancestor(set_id, doomed))
        report.manifest_bytes, report.in_use = self._remove(report.removed)
        self.backend.delete(plan)
        report.gc = None if grace is None else self.collect_garbage(grace)
        return report

    def _remove(self, set_ids: Sequence[str], planned_for: str | None = None) -> tuple[int, list[str]]:
        """Delete the sets, newest first (a set goes only once nothing derives from it); bytes freed, sets in use.

        Sets read from a plan (`planned_for` its lineage) are deleted only if they were saved into that
        lineage and no lineage points at them: a forged plan cannot remove another lineage's sets.
        """
        freed, in_use, heads = 0, [], set(self.lineages().values())
        for set_id in set_ids:
            try:
                if planned_for is not None and (self.manifest(set_id).lineage != planned_for or set_id in heads):
                    continue
                freed += self.delete(set_id)
            except InUseError:  # a set derived from it meanwhile: it stays, and so do its bases
                in_use.append(set_id)
            except NotFoundError:  # deleted already
                continue
        return freed, in_use

    def _finish_plans(self, lineage: str) -> None:
        """Complete what an earlier prune of the lineage planned and did not finish."""
        restore_set_aside(self)  # a deletion that stopped half way comes back, to be deleted again
        for name in self.backend.list(PLANS):
            if _PLAN.fullmatch(name):
                what = f"the prune plan {PLANS}/{name}"
                raw = self.documents.bounded(f"{PLANS}/{name}", MAX_DOCUMENT_BYTES, what)
                doc = parse_document(PrunePlan, parse_json(raw, what), what)
                if doc.lineage == lineage:
                    self._remove(doc.remove, planned_for=lineage)
                    self.backend.delete(f"{PLANS}/{name}")

    def compact(self, lineage: str, max_depth: int | None = None, dry_run: bool = False) -> CompactReport:
        """Snapshot the sets of a lineage's chain that are more than `max_depth` steps from a snapshot.

        Without `max_depth`, the store's settings decide: `max_chain_depth` deltas for update sets,
        `max_replay_depth` replays for provenance sets. Sets derived from a snapshotted one recover
        through its alias, so each is at most `max_depth` steps from a snapshot afterwards.
        """
        if max_depth is not None and (not isinstance(max_depth, int) or max_depth < 0):
            raise MMStoreError(f"the maximum depth must be a whole number of at least 0; got {str(max_depth)[:40]}")
        depth, chosen = 0, []
        for info in reversed(self._chain_of(lineage)):  # oldest first: each depth counts from the set below
            manifest = self.manifest(info.id)
            depth = depth + 1 if getattr(manifest.data, "kind", None) in ("delta", "replay") else 0
            if depth > (self._depth_limit(manifest) if max_depth is None else max_depth):
                chosen.append(info.id)
                depth = 0
        report = CompactReport(lineage, dry_run, max_depth)
        report.rebased = dict.fromkeys(chosen) if dry_run else self._rebase_all(chosen, self._current_base)
        return report

    def _chain_of(self, lineage: str) -> list[SetInfo]:
        """The chain from the lineage's head to its root, newest first."""
        if self._lineage_head(lineage) is None:
            raise NotFoundError(f"there is no lineage {lineage!r} in {self.url}; list lineages with `mmstore ls`")
        return self.log(lineage)

    def _depth_limit(self, manifest: Manifest) -> int:
        if manifest.approach == "provenance":
            return self.settings.max_replay_depth
        return self.settings.max_chain_depth

    def _kept_ancestor(self, set_id: str, doomed: set[str]) -> str | None:
        """The nearest set below `set_id` that is not being removed: the re-based set's new base keeps the lineage linked."""
        base = self.manifest(set_id).base
        for _ in range(len(doomed) + 1):  # each step passes a doomed set: a longer walk loops
            if base is None:
                return None
            manifest = self.documents.current(base)
            if manifest.id not in doomed:
                return manifest.id
            base = manifest.base
        raise MMStoreError(f"the chain below set {set_id[:12]} loops; the store was forged: run `mmstore verify`")

    def _current_base(self, set_id: str) -> str | None:
        base = self.manifest(set_id).base
        return None if base is None else self.documents.current(base).id

    def _rebase_all(self, set_ids: list[str], new_base: Callable[[str], str | None]) -> dict[str, str | None]:
        """Re-base each set (oldest first), then remove the old manifests, newest first; old id -> new id."""
        moved: dict[str, str | None] = {}
        for set_id in set_ids:
            base = new_base(set_id)
            moved[set_id] = self._rebase(set_id, moved.get(base) or base)
        for set_id in reversed(set_ids):
            # Its alias is written and the lineages moved: readers of the old id reach the new set.
            self.backend.delete(f"sets/{set_id}.json")
            self.documents.forget_manifest(set_id)
        return moved

    def _rebase(self, set_id: str, base: str | None) -> str:
        """Write a snapshot holding the set's content on `base`, then the alias from the old id, then move the lineages."""
        old = self.manifest(set_id)
        old_bytes = self.documents.bounded(f"sets/{set_id}.json", MAX_DOCUMENT_BYTES, f"the manifest of set {set_id[:12]}")
        doc = self.arch_document(old)
        model_set = ModelSet(doc.arch, doc.layout, self.recover_rows(set_id))
        # The same creation time and metadata: time-based retention still sees the set as it was saved.
        fields = {"base": base, "lineage": old.lineage, "created": old.created, "meta": {**old.meta, "rebased_from": set_id}}
        new = self._commit(model_set, old.approach, None, self.blobs.get(old.arch).tobytes(), fields)
        self.documents.aliases.write(old, old_bytes, new)
        for name, head in self.lineages().items():
            if head == set_id:
                try:
                    self.backend.swap(f"refs/{name}", set_id.encode(), new.id.encode())
                except ConflictError:  # moved on by a save meanwhile: its new head leads to the old id's alias
                    continue
        return new.id
