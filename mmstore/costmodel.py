"""The cost model: what a version costs to send, to keep and to get back, and which way to store it.

Each way of storing a version is an `Option` with three measured or estimated quantities: bytes
on the wire W, bytes stored S and seconds to recover it R. With an operator's prices (upload p_u
per GB, storage p_s per GB-month, kept for h months) an option costs

    cost = p_u * W / 1e9 + p_s * h * S / 1e9

and is feasible when R <= R_max. The cheapest feasible option wins; when none is feasible, the one
that recovers fastest. Recovery times (docs/architecture.md, "Cost model"):

    snapshot of B bytes:            R = B / r
    delta at depth d over it:       R = (B + d * D) / r + d * t_step       (D: a delta's bytes)
    provenance replaying models:    R = R_base + sum over the models of t_replay(recipe)

with r the read throughput, t_step the fixed cost of applying one delta and t_replay(recipe) the
seconds one model's training with that recipe took where it was measured (a replay repeats it),
else the `replay_seconds_per_model` setting. The deepest delta chain that still recovers in time
is the snapshot policy: `max_delta_depth`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict

from .settings import Settings

__all__ = ["Option", "Priced", "Choice", "choose", "snapshot_seconds", "delta_seconds", "max_delta_depth", "replay_seconds"]

_GB = 1e9


@dataclass(frozen=True)
class Option:
    """One way to store a version: its name, bytes on the wire, bytes stored and seconds to recover."""

    name: str
    wire_bytes: int
    stored_bytes: int
    recover_seconds: float


class Priced(BaseModel):
    """An option with its price and whether it recovers within the limit."""

    model_config = ConfigDict(frozen=True)

    name: str
    wire_bytes: int
    stored_bytes: int
    recover_seconds: float
    cost: float
    feasible: bool


class Choice(BaseModel):
    """The chosen option, every option priced, and why the choice fell as it did."""

    model_config = ConfigDict(frozen=True)

    chosen: str
    reason: str
    options: tuple[Priced, ...]

    def table(self) -> str:
        """The options as aligned text lines, the chosen one marked."""
        lines = [f"{'':2}{'option':12}{'wire bytes':>14}{'stored bytes':>14}{'recover s':>11}{'cost':>12}"]
        for o in self.options:
            mark = "* " if o.name == self.chosen else ("  " if o.feasible else "x ")
            lines.append(f"{mark}{o.name:12}{o.wire_bytes:>14,}{o.stored_bytes:>14,}{o.recover_seconds:>11.3f}{o.cost:>12.3g}")
        return "\n".join([*lines, self.reason])


def choose(options: list[Option], settings: Settings) -> Choice:
    """Price every option and pick the cheapest that recovers within `settings.max_recover_seconds`."""
    months = settings.retention_months
    priced = tuple(
        Priced(name=o.name, wire_bytes=o.wire_bytes, stored_bytes=o.stored_bytes, recover_seconds=o.recover_seconds,
               cost=settings.upload_price_gb * o.wire_bytes / _GB + settings.storage_price_gb_month * months * o.stored_bytes / _GB,
               feasible=o.recover_seconds <= settings.max_recover_seconds)
        for o in options
    )
    feasible = [p for p in priced if p.feasible]
    if feasible:
        best = min(feasible, key=lambda p: (p.cost, p.recover_seconds))
        reason = f"{best.name}: the cheapest way that recovers within {settings.max_recover_seconds:g} s"
    else:
        best = min(priced, key=lambda p: (p.recover_seconds, p.cost))
        reason = f"{best.name}: no way recovers within {settings.max_recover_seconds:g} s; this one recovers fastest"
    return Choice(chosen=best.name, reason=reason, options=priced)


def snapshot_seconds(snapshot_bytes: int, settings: Settings) -> float:
    """Seconds to read and check a snapshot of `snapshot_bytes`."""
    return snapshot_bytes / settings.read_bytes_per_second


def delta_seconds(snapshot_bytes: int, delta_bytes: int, depth: int, settings: Settings) -> float:
    """Seconds to recover a version `depth` deltas of `delta_bytes` each above a snapshot."""
    return snapshot_seconds(snapshot_bytes + depth * delta_bytes, settings) + depth * settings.delta_step_seconds


def replay_seconds(base_seconds: float, recipes: Sequence[str], measured: Mapping[str, float], settings: Settings) -> float:
    """Seconds to recover a provenance version: its base, then one replay per retrained model (by its recipe's name).

    A replay takes what the model's training took: `measured` seconds per model by recipe where known,
    `replay_seconds_per_model` for a recipe nobody timed.
    """
    return base_seconds + sum(measured.get(recipe, settings.replay_seconds_per_model) for recipe in recipes)


def max_delta_depth(snapshot_bytes: int, delta_bytes: int, settings: Settings) -> int:
    """The deepest chain of such deltas that still recovers within the limit (0: snapshot every version)."""
    per_step = delta_bytes / settings.read_bytes_per_second + settings.delta_step_seconds
    spare = settings.max_recover_seconds - snapshot_seconds(snapshot_bytes, settings)
    return max(0, math.floor(spare / per_step)) if per_step > 0 else settings.max_chain_depth
