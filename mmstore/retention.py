"""Retention policies (like borg's and restic's `prune`) and what pruning and compaction report."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from pydantic import BaseModel, ConfigDict, Field

from .errors import FormatError
from .gc import GcReport

__all__ = ["RetentionPolicy", "PruneReport", "CompactReport", "select_kept", "parse_created"]

# Calendar periods, newest first: a set is kept as the newest of its period.
_PERIODS: dict[str, Callable[[datetime], str]] = {
    "keep_daily": lambda t: t.strftime("%Y-%m-%d"),
    "keep_weekly": lambda t: "%d-%02d" % t.isocalendar()[:2],
    "keep_monthly": lambda t: t.strftime("%Y-%m"),
    "keep_yearly": lambda t: t.strftime("%Y"),
}


class RetentionPolicy(BaseModel):
    """Which sets of a lineage to keep; the lineage's head is always kept, and an empty policy keeps everything."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    keep_last: int = Field(0, ge=0, description="Keep the newest N sets")
    keep_within: float = Field(0.0, ge=0, description="Keep every set this many seconds older than the newest or younger")
    keep_daily: int = Field(0, ge=0, description="Keep the newest set of each of the last N days that have one")
    keep_weekly: int = Field(0, ge=0, description="Keep the newest set of each of the last N ISO weeks that have one")
    keep_monthly: int = Field(0, ge=0, description="Keep the newest set of each of the last N months that have one")
    keep_yearly: int = Field(0, ge=0, description="Keep the newest set of each of the last N years that have one")

    @property
    def empty(self) -> bool:
        """True if the policy names nothing to keep, which means: prune nothing."""
        return not any(value for value in self.model_dump().values())


def parse_created(created: str, set_id: str) -> datetime:
    """A manifest's `created` time as an aware UTC datetime."""
    try:
        when = datetime.fromisoformat(created)
    except ValueError:
        raise FormatError(f"set {set_id[:12]} has no valid creation time ({created[:40]!r}); the store was forged or damaged") from None
    return when.replace(tzinfo=when.tzinfo or timezone.utc).astimezone(timezone.utc)


def select_kept(chain: Sequence[tuple[str, datetime]], policy: RetentionPolicy) -> set[str]:
    """The ids the policy keeps from a chain of (id, created), newest first; always the newest one.

    As borg does: each calendar rule walks the chain newest first and keeps the first set of each
    period it meets, a set kept by an earlier rule still marking its period but not counting.
    """
    if not chain:
        return set()
    if policy.empty:
        return {set_id for set_id, _ in chain}
    kept: set[str] = set()
    newest = chain[0][1]
    if policy.keep_within:
        kept.update(set_id for set_id, when in chain if newest - when <= timedelta(seconds=policy.keep_within))
    kept.update(set_id for set_id, _ in chain[: policy.keep_last])
    for rule, period_of in _PERIODS.items():
        wanted, counted, last = getattr(policy, rule), 0, None
        for set_id, when in chain:
            if counted >= wanted:
                break
            period = period_of(when)
            if period == last:
                continue
            last = period
            if set_id not in kept:
                kept.add(set_id)
                counted += 1
    return kept | {chain[0][0]}


@dataclass
class PruneReport:
    """What pruning a lineage removed (or, in a dry run, would remove), re-based and freed."""

    lineage: str
    dry_run: bool
    kept: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    rebased: dict[str, str | None] = field(default_factory=dict)
    in_use: list[str] = field(default_factory=list)
    manifest_bytes: int = 0
    gc: GcReport | None = None

    @property
    def freed(self) -> int:
        """Bytes freed: the removed manifests and what the collection afterwards removed."""
        return self.manifest_bytes + (self.gc.freed if self.gc else 0)


@dataclass
class CompactReport:
    """Which sets of a lineage compaction turned (or, in a dry run, would turn) into snapshots: old id -> new id."""

    lineage: str
    dry_run: bool
    max_depth: int | None
    rebased: dict[str, str | None] = field(default_factory=dict)
