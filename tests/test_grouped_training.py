"""Grouped training and replay: records say which models trained together, replay runs exactly those groups."""

from __future__ import annotations

import numpy as np
import pytest

from envs.executors import LocalExecutor
from mmstore import MMStoreError, ReproductionError, Store
from mmstore.errors import UntrustedModuleError
from mmstore.groups import GroupPlan, plan_groups
from mmstore.replay import InProcessExecutor, part, run_jobs, split

from .grouped_fleet import GROUP_TRAINER, group_jobs, random_arrays, retrain_grouped
from .provenance_fleet import SpyExecutor, initial_set, retrain
from .test_provenance import SETTINGS, datasets, fresh

N = 30
# Mixed full and partial recipes in one cycle: groups of 3 and 2 (never a group of one).
PLAN = {1: "full", 4: "full", 9: "full", 12: "full", 20: "full", 2: "partial", 7: "partial", 25: "partial"}


@pytest.fixture
def grouped_cycle(tmp_path):
    """A store with an initial set and one cycle trained in groups of at most 3."""
    store = Store.open(str(tmp_path / "store"), SETTINGS)
    base = initial_set(N, seed=2)
    derived, record = retrain_grouped(base, PLAN, datasets(tmp_path), cycle=1, seed=2, size=3)
    store.save(base, approach="provenance", lineage="fleet")
    set_id = store.save(derived, approach="provenance", lineage="fleet", provenance=record)
    return store, set_id, derived, record


def test_plan_groups_keeps_recipes_apart_and_sizes_even():
    plan = plan_groups(PLAN, 3, threads=2)
    assert plan.threads == 2
    assert plan.groups == ((1, 4), (9, 12, 20), (2, 7, 25))
    assert plan_groups({m: "r" for m in range(7)}, 3).groups == ((0, 1), (2, 3), (4, 5, 6))
    with pytest.raises(MMStoreError, match="holds 1 to"):
        plan_groups(PLAN, 0)


def test_a_grouped_cycle_replays_bit_exactly_in_its_groups(grouped_cycle):
    store, set_id, derived, record = grouped_cycle
    spy = SpyExecutor()
    assert fresh(store).recover(set_id, executor=spy).equals(derived)
    assert spy.trained == record.groups.models()
    assert fresh(store).recover(set_id, executor=LocalExecutor(workers=2)).equals(derived)


def test_recovering_one_model_trains_its_whole_group(grouped_cycle):
    store, set_id, derived, _ = grouped_cycle
    spy = SpyExecutor()
    assert fresh(store).recover(set_id, models=[9, 0, 9], executor=spy).equals(derived.select([9, 0, 9]))
    assert spy.trained == [9, 12, 20]


def test_groups_are_widened_across_versions(grouped_cycle, tmp_path):
    """Model 5 shares a group with 4 and 9 in the newer version, they share groups with 1, 12, 20 in the older."""
    store, first, derived, _ = grouped_cycle
    later, record = retrain_grouped(derived, {9: "full", 4: "full", 5: "full"}, datasets(tmp_path), 2, 2, size=3)
    second = store.save(later, approach="provenance", lineage="fleet", provenance=record)
    spy = SpyExecutor()
    assert fresh(store).recover(second, models=[5], executor=spy).equals(later.select([5]))
    assert spy.trained == [1, 4, 9, 12, 20, 4, 5, 9]


def test_group_size_is_part_of_the_result():
    """A group of one gives other bits than a group of several: the recorded grouping is the contract."""
    base = initial_set(6, seed=3)
    rng = np.random.default_rng(3)
    plan = {m: "full" for m in range(6)}
    arrays = {m: random_arrays(rng, 48) for m in plan}
    rows = {size: run_jobs(*group_jobs(base, plan, arrays, plan_groups(plan, size))) for size in (1, 2, 3, 6)}
    assert np.array_equal(rows[2], rows[6]) and np.array_equal(rows[3], rows[6])
    assert not np.array_equal(rows[1], rows[6])
    task, jobs = group_jobs(base, plan, arrays, plan_groups(plan, 6, threads=2))
    assert np.array_equal(run_jobs(task, jobs), rows[6])  # the thread count does not change these bits


def test_a_replay_in_other_groups_is_refused_by_the_bit_check(grouped_cycle):
    """An executor that regroups (here: one model per group) returns other bits, and recovery says so."""
    store, set_id, _, _ = grouped_cycle

    class Regrouping(InProcessExecutor):
        def replay(self, task, jobs):
            return super().replay(type(task)(task.arch, task.layout, task.trainer, task.trusted, (1,) * len(jobs)), jobs)

    with pytest.raises(ReproductionError, match="replaying model 1 gave another tensor"):
        fresh(store).recover(set_id, executor=Regrouping())


def test_a_group_of_mixed_recipes_is_refused_before_training():
    base = initial_set(4, seed=4)
    plan = {0: "full", 1: "partial"}
    task, jobs = group_jobs(base, plan, {m: random_arrays(np.random.default_rng(m), 16) for m in plan},
                            GroupPlan(threads=1, groups=((0, 1),)))
    with pytest.raises(MMStoreError, match="different recipes"):
        run_jobs(task, jobs)


def test_record_groups_must_fit_its_changes_at_save(grouped_cycle):
    store, _, derived, record = grouped_cycle
    cases = {
        "misses changed models": ((1, 4, 9), (12, 20), (2, 7)),
        "more than one place": ((1, 4, 9), (12, 20, 1), (2, 7, 25)),
        "different recipes": ((1, 4, 9, 2), (12, 20), (7, 25)),
        "is empty": ((1, 4, 9), (12, 20), (2, 7, 25), ()),
    }
    for problem, groups in cases.items():
        forged = record.model_copy(update={"groups": GroupPlan(threads=1, groups=groups)})
        with pytest.raises(MMStoreError, match=problem):
            store.save(derived, approach="provenance", base=store.list()[0].id, provenance=forged)
    assert len(store.list()) == 2


def test_trainer_kinds_are_not_interchangeable(tmp_path):
    """A grouped record must name a group trainer, a per-model record a per-model trainer."""
    store = Store.open(str(tmp_path / "store"), SETTINGS)
    base = initial_set(N, seed=5)
    store.save(base, approach="provenance", lineage="fleet")
    derived, record = retrain_grouped(base, {3: "full", 6: "full"}, datasets(tmp_path), 1, 5, size=2)
    with pytest.raises(UntrustedModuleError, match="registered with @mmstore.register_trainer"):
        store.save(derived, approach="provenance", lineage="fleet", provenance=record.model_copy(update={"groups": None}))
    per_model, old_style = retrain(base, {3: "full"}, datasets(tmp_path), 1, 5)
    with pytest.raises(UntrustedModuleError, match="register_group_trainer"):
        store.save(per_model, approach="provenance", lineage="fleet", provenance=old_style.model_copy(
            update={"groups": GroupPlan(threads=1, groups=((3,),))}))
    assert old_style.trainer != GROUP_TRAINER


def test_split_never_cuts_a_group():
    base = initial_set(10, seed=6)
    plan = {m: "full" for m in range(10)}
    arrays = {m: random_arrays(np.random.default_rng(m), 8) for m in plan}
    task, jobs = group_jobs(base, plan, arrays, plan_groups(plan, 4))
    assert task.groups == (3, 3, 4)
    parts = split(task, jobs, 2)
    assert [p.groups for p, _ in parts] == [(3, 3), (4,)]
    assert [[j.model for j in js] for _, js in parts] == [[0, 1, 2, 3, 4, 5], [6, 7, 8, 9]]
    rest, left = part(task, jobs, 1)
    assert rest.groups == (3, 4) and [j.model for j in left] == [3, 4, 5, 6, 7, 8, 9]
    assert part(task, jobs, 3) == (part(task, jobs, 0, 0)[0], [])
    with pytest.raises(MMStoreError, match="names groups of 10"):
        run_jobs(task, jobs[:-1])
