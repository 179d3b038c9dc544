"""Per approach, how to save a chain of versions for the conformance suite."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from mmstore import ModelSet, Store

from .factories import adversarial_set
from .provenance_fleet import provenance_chain

Scenario = Callable[[Store, int, int, int], tuple[list[str], list[ModelSet]]]


def derive(model_set: ModelSet, seed: int) -> ModelSet:
    """A new version: a tenth of the models get new bytes in one tensor, one model changes fully."""
    rng = np.random.default_rng(seed)
    data = model_set.data.copy()
    spec = model_set.layout.tensors[0]
    changed = rng.choice(len(model_set), size=max(1, len(model_set) // 10), replace=False)
    data[changed, spec.offset : spec.offset + spec.nbytes] = rng.integers(0, 256, (len(changed), spec.nbytes), dtype=np.uint8)
    data[changed[0]] = adversarial_set(1, seed).data[0]
    return ModelSet(model_set.arch, model_set.layout, data)


def parameter_chain(approach: str) -> Scenario:
    """Adversarial bit patterns, each version derived from the previous, saved into lineage 'fleet'."""

    def scenario(store: Store, n: int, versions: int, seed: int) -> tuple[list[str], list[ModelSet]]:
        sets = [adversarial_set(n, seed)]
        for v in range(1, versions):
            sets.append(derive(sets[-1], seed + v))
        return [store.save(ms, approach=approach, lineage="fleet") for ms in sets], sets

    return scenario


SCENARIOS: dict[str, Scenario] = {
    "baseline": parameter_chain("baseline"),
    "update": parameter_chain("update"),
    "provenance": provenance_chain(),
}
