"""The fleet catalog's documents and times: parsed strictly, bounded, versioned like every stored document.

`catalog/heads.json` holds every lineage's head; `catalog/lineages/<name>.json` a lineage's versions
as (time, set id), oldest first. Times are kept in one canonical form (ISO-8601, UTC, microseconds),
so comparing the strings compares the times.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, model_validator

from .blobs import Hex64
from .errors import FormatError, MMStoreError, NotFoundError
from .manifest import LINEAGE_PATTERN, LineageName, Manifest

__all__ = ["CATALOG_VERSION", "HEADS_KEY", "Head", "HeadsDocument", "LineageDocument", "Version", "is_lineage", "lineage_key", "to_time",
           "version_time"]

CATALOG_VERSION = 1


def to_time(value: str | datetime) -> str:
    """A time as the catalog keeps it: ISO-8601 in UTC with microseconds (a time without zone is taken as UTC)."""
    try:
        parsed = datetime.fromisoformat(value.strip()) if isinstance(value, str) else value
        if not isinstance(parsed, datetime):
            raise TypeError
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=timezone.utc)
        return parsed.astimezone(timezone.utc).isoformat(timespec="microseconds")
    except (ValueError, TypeError, OverflowError):
        raise MMStoreError(f"time {str(value)[:60]!r} is not ISO-8601; give e.g. 2026-11-25T14:00:00Z") from None


def version_time(manifest: Manifest) -> str:
    """A version's time: its `device_time` metadata when that is ISO-8601 with a zone, else its creation time."""
    device = manifest.meta.get("device_time")
    if isinstance(device, str) and len(device) <= 64:
        try:
            if datetime.fromisoformat(device).tzinfo is not None:
                return to_time(device)
        except (ValueError, MMStoreError):
            pass  # not a device time: the creation time stands in, as documented
    try:
        return to_time(manifest.created)
    except MMStoreError:
        raise FormatError(f"set {manifest.id[:12]} has no valid creation time; the store was forged or damaged") from None


def _canonical(value: str) -> str:
    try:
        same = to_time(value) == value
    except MMStoreError:
        same = False
    if not same:
        raise ValueError("not a UTC time in the catalog's form (YYYY-MM-DDTHH:MM:SS.ffffff+00:00)")
    return value


Time = Annotated[str, StringConstraints(max_length=32), AfterValidator(_canonical)]


class Head(BaseModel):
    """A lineage's entry in `catalog/heads.json`: newest version, its time, the latest time, the count."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    head: Hex64
    time: Time
    latest: Time
    versions: int = Field(ge=1, strict=True)


class HeadsDocument(BaseModel):
    """`catalog/heads.json`: every catalogued lineage's head."""

    model_config = ConfigDict(frozen=True, extra="forbid", regex_engine="python-re")

    schema_version: Literal[1] = CATALOG_VERSION
    lineages: dict[LineageName, Head] = {}


class LineageDocument(BaseModel):
    """`catalog/lineages/<name>.json`: a lineage's versions along its chain, oldest first, as (time, set id)."""

    model_config = ConfigDict(frozen=True, extra="forbid", regex_engine="python-re")

    schema_version: Literal[1] = CATALOG_VERSION
    lineage: LineageName
    versions: list[tuple[Time, Hex64]] = []

    @model_validator(mode="after")
    def _distinct(self) -> "LineageDocument":
        if len({set_id for _, set_id in self.versions}) != len(self.versions):
            raise ValueError("a set appears twice: a chain never loops")
        return self

    def head(self) -> Head | None:
        """The lineage's heads entry (None when it has no versions)."""
        if not self.versions:
            return None
        time_, head = self.versions[-1]
        return Head(head=head, time=time_, latest=max(t for t, _ in self.versions), versions=len(self.versions))


@dataclass(frozen=True)
class Version:
    """One version of a lineage: the set id and the version's time."""

    lineage: str
    id: str
    time: str


HEADS_KEY = "catalog/heads.json"
_LINEAGE = re.compile(LINEAGE_PATTERN)


def is_lineage(name: str) -> bool:
    """Whether `name` is a valid lineage name."""
    return isinstance(name, str) and bool(_LINEAGE.fullmatch(name))


def lineage_key(lineage: str) -> str:
    """Where a lineage's catalog document lives, for a valid lineage name."""
    if not isinstance(lineage, str) or not _LINEAGE.fullmatch(lineage):
        raise NotFoundError(f"{str(lineage)[:80]!r} is not a lineage name; list the fleet with `mmstore fleet ls`")
    return f"catalog/lineages/{lineage}.json"
