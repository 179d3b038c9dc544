"""Timing one approach over a variant's sequence: a fresh store directory per repeat, a fresh `Store` per operation."""

from __future__ import annotations

import shutil
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from envs.executors import LocalExecutor
from mmstore import ModelSet, Settings, Store
from mmstore.provenance_records import DatasetRoots, read_datasets
from mmstore.replay import ReplayJob, ReplayTask

from . import eval_permodel
from .common import dir_bytes, timed
from .eval_sequence import TRAINER, USE_CASES, Sequence, recipes

__all__ = ["APPROACHES", "Subject", "StoreSubject", "FilesSubject", "measure", "subjects", "warm_pool"]

APPROACHES = ("baseline", "update", "provenance")


class Subject(Protocol):
    """A way of storing the sequence: saves set k under `target`, recovers it, reports its storage."""

    name: str
    seq: Sequence

    def prepare(self) -> None:
        """Untimed set-up before the first run."""

    def save(self, target: Path, k: int) -> Any:
        """Persist set k; returns what `recover` needs."""

    def recover(self, target: Path, handle: Any, k: int) -> ModelSet | None:
        """Recover set k, or None where it cannot be recovered (simulated retrains cannot be replayed)."""

    def size(self, target: Path, handle: Any) -> int:
        """Bytes set k adds to the storage."""


@dataclass
class StoreSubject:
    """One of mmstore's approaches; provenance recovery replays with `workers` processes."""

    name: str
    seq: Sequence
    workers: int = 2
    storage_options: dict[str, Any] = field(default_factory=dict)

    def _open(self, target: Path | str) -> Store:
        return Store.open(str(target), self.seq.settings(), **self.storage_options)

    def prepare(self) -> None:
        """Start the replay workers, so that recoveries measure replay, not interpreter start-up."""
        if self.name == "provenance" and self.seq.variant.trained:
            warm_pool(self.seq, self.workers)

    def save(self, target: Path, k: int) -> str:
        """Through a freshly opened store; provenance builds its record (fingerprint included) inside the timing."""
        options = {"provenance": self.seq.record(k)} if self.name == "provenance" and k else {}
        return self._open(target).save(self.seq.sets[k], approach=self.name, lineage="fleet", **options)

    def recover(self, target: Path, handle: str, k: int) -> ModelSet | None:
        """Through a freshly opened store; provenance replays in the (already started) worker processes."""
        if self.name != "provenance" or k == 0:
            return self._open(target).recover(handle)
        if not self.seq.variant.trained:
            return None
        return self._open(target).recover(handle, executor=LocalExecutor(self.workers))

    def size(self, target: Path, handle: str) -> int:
        """`Store.size`: the manifest and the blobs no older set of its chain holds."""
        return self._open(target).size(handle)


@dataclass
class FilesSubject:
    """The per-model comparator: a directory of files per set."""

    seq: Sequence
    name: str = eval_permodel.NAME

    def prepare(self) -> None:
        """Nothing to set up."""

    def save(self, target: Path, k: int) -> Path:
        """Two fsynced files per model."""
        directory = target / f"set-{k}"
        eval_permodel.save_files(self.seq.sets[k], directory)
        return directory

    def recover(self, target: Path, handle: Path, k: int) -> ModelSet:
        """Every model's files read back, assembled for the bit-exactness check outside the timing."""
        return _Deferred(eval_permodel.recover_files(handle, len(self.seq.sets[k])), self.seq.sets[k])

    def size(self, target: Path, handle: Path) -> int:
        """Bytes of the set's files."""
        return dir_bytes(handle)


@dataclass
class _Deferred:
    """Recovered state dicts, turned into a ModelSet only when checked (outside the timed region)."""

    states: list
    like: ModelSet

    def equals(self, other: ModelSet) -> bool:
        """Bit-exact comparison with a set."""
        # safetensors returns tensors sorted by name; the layout has the state-dict order.
        names = [t.name for t in self.like.layout.tensors]
        ordered = [{name: sd[name] for name in names} for sd in self.states]
        return ModelSet.from_state_dicts(ordered, self.like.arch).equals(other)


def subjects(seq: Sequence, workers: int = 2) -> list[Subject]:
    """The per-model comparator and every approach."""
    return [FilesSubject(seq), *(StoreSubject(name, seq, workers) for name in APPROACHES)]


def measure(subject: Subject, root: Path, repeats: int) -> dict[str, Any]:
    """Storage (exact) and median save / recover seconds per use case over `repeats` fresh stores."""
    saves = [[] for _ in USE_CASES]
    recovers = [[] for _ in USE_CASES]
    sizes: list[int] = []
    subject.prepare()
    for r in range(repeats):
        target = root / f"{subject.name}-{r}"
        handles = _save_sequence(subject, target, saves)
        _recover_sequence(subject, target, handles, recovers, check=r == 0)
        sizes = sizes or [subject.size(target, h) for h in handles]
        shutil.rmtree(target)
    return {"bytes": sizes, "save_s": _medians(saves), "recover_s": _medians(recovers),
            "save_runs": saves, "recover_runs": recovers}


def _save_sequence(subject: Subject, target: Path, saves: list[list[float]]) -> list[Any]:
    handles = []
    for k in range(len(USE_CASES)):
        seconds, handle = timed(lambda: subject.save(target, k))
        saves[k].append(seconds)
        handles.append(handle)
    return handles


def _recover_sequence(subject: Subject, target: Path, handles: list, recovers: list[list[float]], check: bool) -> None:
    for k, handle in enumerate(handles):
        seconds, recovered = timed(lambda: subject.recover(target, handle, k))
        if recovered is None:
            continue
        recovers[k].append(seconds)
        if check and not recovered.equals(subject.seq.sets[k]):
            raise AssertionError(f"{subject.name} recovered {USE_CASES[k]} with other bytes than were saved")


def _medians(runs: list[list[float]]) -> list[float | None]:
    return [statistics.median(r) if r else None for r in runs]


def warm_pool(seq: Sequence, workers: int) -> None:
    """Start `workers` replay processes with one real job each (forkserver workers import the main module once)."""
    model, (recipe, ref) = next(iter(seq.changes[0].items()))
    settings = seq.settings()
    dataset = read_datasets([ref], DatasetRoots(settings.dataset_roots, settings.max_dataset_bytes))[0]
    job = ReplayJob(model, seq.sets[0].data[model], dataset, recipes(seq.variant.arch, 1)[recipe])
    task = ReplayTask(seq.sets[0].arch, seq.sets[0].layout, TRAINER, settings.allowed_prefixes())
    LocalExecutor(workers).replay(task, [job] * workers)
