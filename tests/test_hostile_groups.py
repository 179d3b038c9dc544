"""Forged groupings in a stored change list: every forgery is re-hashed, so parsing and bounds must stop it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import zstandard

import numpy as np

from mmstore import Store
from mmstore.errors import FormatError, IntegrityError, ReproductionError, UntrustedModuleError
from mmstore.groups import MAX_GROUP_MODELS
from workloads.datasets import write_datasets

from . import forge
from .grouped_fleet import random_arrays, retrain_grouped
from .provenance_fleet import SpyExecutor, initial_set, retrain
from .test_provenance import SETTINGS, datasets, fresh

N = 30
PLAN = {1: "full", 4: "full", 9: "full", 2: "partial", 7: "partial"}


@pytest.fixture(scope="module")
def grouped_store(tmp_path_factory):
    """A store whose lineage `fleet` ends in a cycle trained in groups ((1, 4, 9), (2, 7)); its root."""
    root = tmp_path_factory.mktemp("hostile-groups")
    store = Store.open(str(root / "store"), SETTINGS)
    base = initial_set(N, seed=8)
    derived, record = retrain_grouped(base, PLAN, datasets(root), cycle=1, seed=8, size=3)
    assert record.groups.groups == ((1, 4, 9), (2, 7))
    store.save(base, approach="provenance", lineage="fleet")
    store.save(derived, approach="provenance", lineage="fleet", provenance=record)
    return root / "store"


def _changes(root: Path) -> dict:
    manifest = forge.read_manifest(root, forge.head(root, "fleet"))
    raw = zstandard.ZstdDecompressor().decompress(forge.read_blob(root, manifest["data"]["changes"]), max_output_size=1 << 24)
    return json.loads(raw)


def _forge_groups(root: Path, groups, lineage: str, dataset: dict | None = None) -> str:
    """A copy of the head whose change list's `groups` is `groups` (deleted when None), under `lineage`.

    With `dataset`, model 2 names that dataset reference instead of its own.
    """
    changes = _changes(root)
    if groups is None:
        del changes["groups"]
    else:
        changes["groups"] = groups
    if dataset is not None:
        next(entry for entry in changes["models"] if entry["model"] == 2)["dataset"] = dataset
    blob = forge.put_blob(root, zstandard.ZstdCompressor().compress(forge.canonical(changes)))
    manifest = forge.read_manifest(root, forge.head(root, "fleet"))
    manifest["data"]["changes"] = blob
    return forge.write_manifest(root, manifest, lineage)


def _groups(*groups, threads=1) -> dict:
    return {"threads": threads, "groups": [list(g) for g in groups]}


CASES = {
    "index out of range": (_groups((1, 4, 9), (2, 10**9)), FormatError, "do not fit"),
    "negative index": (_groups((1, 4, 9), (2, 7, -1)), FormatError, "do not fit"),
    "duplicate index": (_groups((1, 4, 9), (2, 7, 7)), FormatError, "more than one place"),
    "model in two groups": (_groups((1, 4, 9), (2, 7), (9,)), FormatError, "more than one place"),
    "missing model": (_groups((1, 4), (2, 7)), FormatError, "misses changed models"),
    "unchanged model": (_groups((1, 4, 9), (2, 7), (3,)), FormatError, "names unchanged"),
    "mixed recipes": (_groups((1, 4), (9, 2, 7)), FormatError, "different recipes"),
    "empty group": (_groups((1, 4, 9), (2, 7), ()), FormatError, "is empty"),
    "oversized group": (_groups(tuple(range(MAX_GROUP_MODELS + 1))), FormatError, "more than 4096"),
    "string index": (_groups((1, 4, "9"), (2, 7)), FormatError, "not valid"),
    "float index": (_groups((1, 4, 9.0), (2, 7)), FormatError, "not valid"),
    "boolean index": (_groups((True, 4, 9), (2, 7)), FormatError, "not valid"),
    "no threads": (_groups((1, 4, 9), (2, 7), threads=0), FormatError, "not valid"),
    "absurd threads": (_groups((1, 4, 9), (2, 7), threads=10**6), FormatError, "not valid"),
    "threads as text": (_groups((1, 4, 9), (2, 7), threads="1"), FormatError, "not valid"),
    "nested deeper": ({"threads": 1, "groups": [[[1, 4, 9]], [[2, 7]]]}, FormatError, "not valid"),
    "unknown field": ({**_groups((1, 4, 9), (2, 7)), "order": "any"}, FormatError, "not valid"),
    "groups as a list": ([[1, 4, 9], [2, 7]], FormatError, "not valid"),
    "groups stripped": (None, UntrustedModuleError, "register_trainer"),
    "longer than its bound": (_groups(*[(1,)] * 200_000), IntegrityError, "change list"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_forged_groupings_are_refused_before_anything_trains(grouped_store, case):
    groups, error, message = CASES[case]
    forged = _forge_groups(grouped_store, groups, f"forged-{case.replace(' ', '-')}")
    spy = SpyExecutor()
    with pytest.raises(error, match=message):
        fresh(Store.open(str(grouped_store), SETTINGS)).recover(forged, executor=spy)
    assert spy.trained == []


def test_the_unforged_grouped_store_replays(grouped_store):
    spy = SpyExecutor()
    store = Store.open(str(grouped_store), SETTINGS)
    assert fresh(store).recover(forge.head(grouped_store, "fleet"), executor=spy).equals(store.recover("fleet"))
    assert spy.trained == [1, 4, 9, 2, 7]


def test_groups_added_to_a_per_model_record_are_refused(tmp_path):
    """A per-model trainer is not a group trainer: a forged grouping cannot make it train groups."""
    store = Store.open(str(tmp_path / "store"), SETTINGS)
    base = initial_set(N, seed=9)
    derived, record = retrain(base, {3: "full", 5: "full"}, datasets(tmp_path), 1, 9)
    store.save(base, approach="provenance", lineage="fleet")
    store.save(derived, approach="provenance", lineage="fleet", provenance=record)
    forged = _forge_groups(tmp_path / "store", _groups((3, 5)), "forged")
    spy = SpyExecutor()
    with pytest.raises(UntrustedModuleError, match="register_group_trainer"):
        fresh(store).recover(forged, executor=spy)
    assert spy.trained == []


def test_a_group_whose_datasets_cannot_train_together_is_reported(grouped_store):
    """Model 2's dataset swapped for a real one of another length: the group cannot stack it, and says so."""
    refs = write_datasets(datasets(grouped_store.parent), 9, {2: random_arrays(np.random.default_rng(9), 20)})
    forged = _forge_groups(grouped_store, _groups((1, 4, 9), (2, 7)), "forged-shapes", refs[2].model_dump())
    with pytest.raises(ReproductionError, match=r"failed on models \[2, 7\].*cannot train together"):
        fresh(Store.open(str(grouped_store), SETTINGS)).recover(forged, executor="in-process")
