"""Grouped training: which changed models trained together, in what order, with how many threads.

A group trainer trains k models in one call (stacked parameters, k datasets, one recipe). A model's
bits may depend on how it was grouped (measured: a group of one gives other bits than a group of several),
so a derived set records its grouping and replay runs exactly those groups.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from itertools import accumulate

from pydantic import BaseModel, ConfigDict, Field, StrictInt

from .errors import MMStoreError

__all__ = ["GroupPlan", "MAX_GROUP_MODELS", "MAX_THREADS", "plan_groups", "group_problem", "closure", "spans"]

# A group's datasets and stacked parameters are held in memory at once while it trains.
MAX_GROUP_MODELS = 4096
MAX_THREADS = 256


class GroupPlan(BaseModel):
    """Groups of model indices in training order, each trained by one call, with torch using `threads` threads."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    threads: StrictInt = Field(ge=1, le=MAX_THREADS)
    groups: tuple[tuple[StrictInt, ...], ...]

    def models(self) -> list[int]:
        """Every grouped model, in training order."""
        return [m for group in self.groups for m in group]


def plan_groups(recipe_of: Mapping[int, str], size: int, threads: int = 1) -> GroupPlan:
    """Models with one recipe in groups of at most `size` (ascending index), recipe after recipe."""
    if not 1 <= size <= MAX_GROUP_MODELS:
        raise MMStoreError(f"a training group holds 1 to {MAX_GROUP_MODELS} models, not {size}; choose a size in that range")
    groups: list[tuple[int, ...]] = []
    for recipe in sorted(set(recipe_of.values())):
        members = sorted(m for m, r in recipe_of.items() if r == recipe)
        # Sizes differ by at most one: no small remainder group trains at a fraction of the batched speed.
        count = -(-len(members) // size)
        bounds = [len(members) * i // count for i in range(count + 1)]
        groups.extend(tuple(members[a:b]) for a, b in zip(bounds, bounds[1:]))
    return GroupPlan(threads=threads, groups=tuple(groups))


def group_problem(plan: GroupPlan, recipe_of: Mapping[int, str]) -> str | None:
    """What makes `plan` disagree with the changed models and their recipes, or None when it fits."""
    models = plan.models()
    if any(not 1 <= len(group) <= MAX_GROUP_MODELS for group in plan.groups):
        return f"a group is empty or holds more than {MAX_GROUP_MODELS} models"
    if len(models) != len(set(models)):
        return "a model appears in more than one place of the grouping"
    if set(models) != set(recipe_of):
        missing, extra = sorted(set(recipe_of) - set(models)), sorted(set(models) - set(recipe_of))
        return f"the grouping misses changed models {missing[:10]} and names unchanged ones {extra[:10]}"
    if any(len({recipe_of[m] for m in group}) != 1 for group in plan.groups):
        return "a group mixes models of different recipes"
    return None


def closure(plan: GroupPlan, wanted: Iterable[int]) -> set[int]:
    """Every model that trains in a group with one of `wanted`: what replaying `wanted` must train."""
    chosen = set(wanted)
    return {m for group in plan.groups if chosen.intersection(group) for m in group}


def spans(sizes: Sequence[int]) -> list[tuple[int, int]]:
    """The [start, end) positions of consecutive groups of these sizes."""
    ends = list(accumulate(sizes))
    return list(zip([0, *ends[:-1]], ends))
