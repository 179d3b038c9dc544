"""The evaluation's version sequences (U1 -> U3 -> U3 -> U3), generated once per variant and cached.

FFNN variants retrain for real, through the code path of `flows.fleet_update`: drift selection,
datasets written outside the store, training in groups of at most `GROUP_SIZE` models of one recipe
through `LocalExecutor(2).replay`. The conv net has no per-cell fleet, so its U3 retrains are
simulated by perturbing parameters (seeded).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from envs.executors import LocalExecutor
from envs.fingerprint import capture
from mmstore import ArchSpec, DatasetRef, ModelSet, ProvenanceRecord, Settings
from mmstore.groups import GroupPlan, plan_groups
from mmstore.layout import Layout
from mmstore.replay import ReplayJob, ReplayTask, grouped
from workloads.datasets import encode_arrays, write_datasets
from workloads.drift import model_errors, select_updates
from workloads.fleet import Fleet, initial_fleet_params
from workloads.images import image_dataset
from workloads.models import ARCHITECTURES, seeded_model
from workloads.training import TrainRecipe, train

__all__ = ["Variant", "VARIANTS", "Sequence", "load_sequence", "USE_CASES", "TRAINER", "GROUP_TRAINER", "GROUP_SIZE",
           "CACHE", "recipes"]

TRAINER = "workloads.training:train_from_bytes"
GROUP_TRAINER = "workloads.training:train_group"
# The fleet-update flow's default group size.
GROUP_SIZE = 128
CACHE = Path("build") / "eval-cache"
CYCLES = 3
USE_CASES = ("U1", *(f"U3-{k}" for k in range(1, CYCLES + 1)))
SEED = 0
# The paper's reduced setting for provenance replay: one epoch on every 4th sample of a cell's cycle.
REDUCED = {"epochs": 1, "batch_size": 64}
STRIDE = 4


@dataclass(frozen=True)
class Variant:
    """One experiment: an architecture, and the share of models retrained per U3 (half fully, half partly)."""

    name: str
    arch: str
    rate: float

    @property
    def trained(self) -> bool:
        """Whether U3 retrains for real (FFNN fleets) or is simulated by perturbation (conv net)."""
        return self.arch != "cifar"


VARIANTS = {v.name: v for v in (
    Variant("ffnn48", "ffnn48", 0.10), Variant("ffnn48-r20", "ffnn48", 0.20), Variant("ffnn48-r30", "ffnn48", 0.30),
    Variant("ffnn69", "ffnn69", 0.10), Variant("cifar", "cifar", 0.10),
)}


def recipes(arch: str, cycle: int, reduced: bool = True) -> dict[str, dict]:
    """The full and the last-layer recipe of a cycle, seeded by the cycle (the paper's reduced setting by default)."""
    extra = REDUCED if reduced else {}
    last = list(ARCHITECTURES[arch].last_layers)
    return {name: TrainRecipe(seed=cycle, trainable=trainable, **extra).model_dump(mode="json")
            for name, trainable in (("full", None), ("partial", last))}


@dataclass
class Sequence:
    """A variant's sets U1..U3-3 and, per U3, how each changed model was trained (and grouped, if it trained)."""

    variant: Variant
    sets: list[ModelSet]
    changes: list[dict[int, tuple[str, DatasetRef]]]
    groups: list[GroupPlan | None]

    def record(self, k: int) -> ProvenanceRecord:
        """The provenance record of set k >= 1, built as a caller would build it at save time."""
        plan = self.groups[k - 1]
        return ProvenanceRecord(trainer=TRAINER if plan is None else GROUP_TRAINER, recipes=recipes(self.variant.arch, k),
                                changes=self.changes[k - 1], environment=capture().to_json(), groups=plan)

    def settings(self, *more_roots: str) -> Settings:
        """Settings under which stores may read this sequence's datasets (and those under `more_roots`) for replay."""
        # A dataset lives at <root>/cycle-NNNN/cell-NNNNN.npz.
        roots = {ref.uri.rsplit("/", 2)[0] for cycle in self.changes for _, ref in cycle.values()}
        return Settings(dataset_roots=(*sorted(roots), *more_roots))


def load_sequence(variant: Variant, n: int) -> tuple[Sequence, float]:
    """The cached sequence of `variant` for `n` models (generated and cached first if needed), and generation seconds."""
    # Sequences trained in groups have bits of their own: they are cached apart from per-model ones.
    stem = CACHE / f"{variant.name}-{n}-g{GROUP_SIZE}"
    if not stem.with_suffix(".json").exists():
        _generate(variant, n, stem)
    meta = json.loads(stem.with_suffix(".json").read_text())
    arch = ARCHITECTURES[variant.arch]
    spec, layout = ArchSpec.of(arch), Layout.of(arch().state_dict())
    with np.load(stem.with_suffix(".npz")) as arrays:
        sets = [ModelSet(spec, layout, arrays[f"set{k}"]) for k in range(len(USE_CASES))]
    changes = [{int(m): (r, DatasetRef(**ref)) for m, (r, ref) in cycle.items()} for cycle in meta["changes"]]
    groups = [None if plan is None else GroupPlan.model_validate(plan) for plan in meta["groups"]]
    return Sequence(variant, sets, changes, groups), meta["generation_s"]


def _generate(variant: Variant, n: int, stem: Path) -> None:
    start = time.perf_counter()
    stem.parent.mkdir(parents=True, exist_ok=True)
    datasets = str(stem.resolve()) + "-datasets"
    sets, changes, groups = [_shared_initial(variant.arch, n)], [], []
    step = _retrain if variant.trained else _perturb
    for cycle in range(1, CYCLES + 1):
        new, plan, grouping = step(variant, sets[-1], cycle, datasets)
        sets.append(new)
        changes.append({str(m): (r, ref.model_dump()) for m, (r, ref) in plan.items()})
        groups.append(None if grouping is None else grouping.model_dump(mode="json"))
    np.savez(stem.with_suffix(".npz"), **{f"set{k}": s.data for k, s in enumerate(sets)})
    meta = {"changes": changes, "groups": groups, "generation_s": time.perf_counter() - start}
    stem.with_suffix(".json").write_text(json.dumps(meta))


def _shared_initial(arch_name: str, n: int) -> ModelSet:
    """U1, cached apart from the variants: those of one architecture (update rates) start from the same models."""
    path = CACHE / f"{arch_name}-{n}-u1.npy"
    if not path.exists():
        np.save(path, _initial(arch_name, n).data)
    arch = ARCHITECTURES[arch_name]
    return ModelSet(ArchSpec.of(arch), Layout.of(arch().state_dict()), np.load(path))


def _initial(arch_name: str, n: int) -> ModelSet:
    """U1: the fleet's trained initial models; for the conv net, one trained net, perturbed per model."""
    arch = ARCHITECTURES[arch_name]
    layout = Layout.of(arch().state_dict())
    if arch_name != "cifar":
        return ModelSet.from_stacked(initial_fleet_params(n, SEED, arch), ArchSpec.of(arch), layout)
    reference = train(seeded_model(arch, SEED), image_dataset(SEED, 0, 0, 512), TrainRecipe(epochs=2, seed=SEED))
    row = ModelSet.from_modules([reference]).data
    values = np.repeat(row, n, axis=0).view(np.float32)
    values += 0.01 * np.random.default_rng(SEED).standard_normal(values.shape, dtype=np.float32)
    return ModelSet(ArchSpec.of(arch), layout, values.view(np.uint8))


def _plan(full: np.ndarray, partial: np.ndarray) -> dict[int, str]:
    return {**{int(c): "full" for c in full}, **{int(c): "partial" for c in partial}}


def _retrain(variant: Variant, base: ModelSet, cycle: int, root: str) -> tuple[ModelSet, dict, GroupPlan]:
    """One U3 cycle as `flows.fleet_update` runs it: drift -> datasets -> training in groups through the executor."""
    data = Fleet(SEED, len(base), ARCHITECTURES[variant.arch]).cycle_data(cycle)
    errors = model_errors(ARCHITECTURES[variant.arch], base.tensors(), data["x"], data["y"])
    plan = _plan(*select_updates(errors, variant.rate / 2, variant.rate / 2))
    cells = sorted(plan)
    arrays = {c: {"x": data["x"][c, ::STRIDE], "y": data["y"][c, ::STRIDE]} for c in cells}
    refs = write_datasets(root, cycle, arrays)
    named = recipes(variant.arch, cycle)
    jobs = [ReplayJob(c, base.data[c], encode_arrays(arrays[c]), named[plan[c]]) for c in cells]
    groups = plan_groups(plan, GROUP_SIZE)
    task, ordered = grouped(ReplayTask(base.arch, base.layout, GROUP_TRAINER, Settings().allowed_prefixes()), jobs, groups)
    new = base.data.copy()
    new[[job.model for job in ordered]] = LocalExecutor(2).replay(task, ordered)
    return ModelSet(base.arch, base.layout, new), {c: (plan[c], refs[c]) for c in cells}, groups


def _perturb(variant: Variant, base: ModelSet, cycle: int, root: str) -> tuple[ModelSet, dict, None]:
    """A simulated U3: seeded noise on every tensor (full) or on the last layer (partial) of random models."""
    rng = np.random.default_rng([SEED, cycle])
    picked = rng.choice(len(base), size=2 * round(len(base) * variant.rate / 2), replace=False)
    half = len(picked) // 2
    plan = _plan(np.sort(picked[:half]), np.sort(picked[half:]))
    values = base.data.copy().view(np.float32)
    last = ARCHITECTURES[variant.arch].last_layers
    head = [slice(t.offset // 4, (t.offset + t.nbytes) // 4) for t in base.layout.tensors if t.name.startswith(last)]
    for cell, kind in plan.items():
        for columns in [slice(None)] if kind == "full" else head:
            values[cell, columns] += 0.01 * rng.standard_normal(values[cell, columns].shape, dtype=np.float32)
    # Real image datasets back the provenance record, so its storage is what a trained cycle would store.
    refs = write_datasets(root, cycle, {c: image_dataset(SEED, c, cycle, 64) for c in sorted(plan)})
    return ModelSet(base.arch, base.layout, values.view(np.uint8)), {c: (plan[c], refs[c]) for c in sorted(plan)}, None
