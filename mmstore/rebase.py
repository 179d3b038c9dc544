"""Pruning and compacting a lineage: sets are re-based into snapshots before anything they need is deleted.

Mixed into `Store`. The order of every step, and why a crash or a concurrent writer at any point
leaves every kept set recoverable, is in docs/architecture.md ("Pruning and compaction").
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from .errors import ConflictError, InUseError, MMStoreError, NotFoundError
from .lifecycle import DEFAULT_GRACE
from .manifest import MAX_DOCUMENT_BYTES, Manifest
from .modelset import ModelSet
from .retention import CompactReport, PruneReport, RetentionPolicy, parse_created, select_kept

if TYPE_CHECKING:
    from .store import SetInfo

__all__ = ["Rebasing"]


class Rebasing:
    """Retention (`prune`) and chain compaction (`compact`) of a `Store`'s lineages."""

    def prune(self, lineage: str, policy: RetentionPolicy, dry_run: bool = False,
              grace: float | None = DEFAULT_GRACE) -> PruneReport:
        """Remove the sets of a lineage's chain the policy does not keep, then collect garbage older than `grace` s.

        A set that stays (kept, or outside the chain) and derives from a removed one is first re-based
        into a snapshot with the same content; its old id stays resolvable through an alias. Sets any
        lineage points at are always kept. With `grace=None` the caller collects garbage (once for many lineages).
        """
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
        report.rebased = self._rebase_all(needing, lambda set_id: self._kept_ancestor(set_id, doomed))
        for set_id in report.removed:  # newest first: a set goes only once nothing derives from it
            try:
                report.manifest_bytes += self.delete(set_id)
            except InUseError:  # a set derived from it meanwhile: it stays, and so do its bases
                report.in_use.append(set_id)
            except NotFoundError:  # deleted by another writer meanwhile
                continue
        report.gc = None if grace is None else self.collect_garbage(grace)
        return report

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
