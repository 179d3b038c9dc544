"""Small FFNN-48 fleets retrained on small datasets, with the provenance records that describe them."""

from __future__ import annotations

import uuid

import numpy as np
import torch

from envs.fingerprint import capture
from mmstore import ModelSet, ProvenanceRecord, Store, register_trainer
from mmstore.replay import InProcessExecutor
from mmstore.arch import import_trusted
from workloads.datasets import encode_arrays, write_datasets
from workloads.models import FFNN48, seeded_model
from workloads.training import TrainRecipe, train_from_bytes

__all__ = ["TRAINER", "RECIPES", "initial_set", "retrain", "provenance_chain", "drifting_train", "SpyExecutor"]

TRAINER = "workloads.training:train_from_bytes"
RECIPES = {
    "full": TrainRecipe(epochs=1, batch_size=16, seed=5).model_dump(mode="json"),
    "partial": TrainRecipe(epochs=2, batch_size=16, seed=6, trainable=FFNN48.last_layers).model_dump(mode="json"),
}


def initial_set(n: int, seed: int) -> ModelSet:
    """n freshly initialised FFNN-48 models, each drawn from its own seed."""
    return ModelSet.from_modules([seeded_model(FFNN48, seed * 10_000 + i) for i in range(n)])


def _arrays(rng: np.random.Generator, samples: int) -> dict[str, np.ndarray]:
    x = rng.standard_normal((samples, FFNN48.in_features), dtype=np.float32)
    return {"x": x, "y": x[:, :1] * 0.5 + rng.standard_normal((samples, 1), dtype=np.float32) * 0.1}


def retrain(
    model_set: ModelSet, plan: dict[int, str], root: str, cycle: int, seed: int, trainer: str = TRAINER, samples: int = 48
) -> tuple[ModelSet, ProvenanceRecord]:
    """Retrain the models in `plan` (index -> recipe name) with `trainer` on fresh datasets under `root`."""
    train = import_trusted(trainer, None, "training function")
    rng = np.random.default_rng([seed, cycle])
    arrays = {cell: _arrays(rng, samples) for cell in sorted(plan)}
    refs = write_datasets(root, cycle, arrays)
    data = model_set.data.copy()
    for cell, name in plan.items():
        trained = train(model_set.model(cell), encode_arrays(arrays[cell]), RECIPES[name])
        data[cell] = ModelSet.from_modules([trained]).data[0]
    record = ProvenanceRecord(
        trainer=trainer, recipes=RECIPES, changes={cell: (name, refs[cell]) for cell, name in plan.items()},
        environment=capture().to_json(),
    )
    return ModelSet(model_set.arch, model_set.layout, data), record


def provenance_chain():
    """A conformance scenario: each version retrains one model fully and one partially (datasets in memory)."""

    def scenario(store: Store, n: int, versions: int, seed: int) -> tuple[list[str], list[ModelSet]]:
        root = f"memory://provenance-datasets/{uuid.uuid4().hex}"
        sets = [initial_set(n, seed)]
        ids = [store.save(sets[0], approach="provenance", lineage="fleet")]
        rng = np.random.default_rng(seed)
        for v in range(1, versions):
            full, partial = rng.choice(n, size=2, replace=False).tolist()
            derived, record = retrain(sets[-1], {full: "full", partial: "partial"}, root, v, seed)
            ids.append(store.save(derived, approach="provenance", lineage="fleet", provenance=record))
            sets.append(derived)
        return ids, sets

    return scenario


_CALLS = [0]


@register_trainer
def drifting_train(model, dataset: bytes, recipe: dict):
    """A deliberately non-reproducible trainer: each call nudges `net.4.bias` by a different amount."""
    _CALLS[0] += 1
    trained = train_from_bytes(model, dataset, recipe)
    with torch.no_grad():
        trained.net[4].bias.add_(1e-3 * _CALLS[0])
    return trained


class SpyExecutor(InProcessExecutor):
    """Replays in this process and remembers which models it was asked to train."""

    def __init__(self) -> None:
        self.trained: list[int] = []

    def replay(self, task, jobs):
        """Record the jobs, then train them."""
        self.trained += [job.model for job in jobs]
        return super().replay(task, jobs)
