"""The cost model decides: prices, the recovery limit and measured replay times change what is stored or sent."""

from __future__ import annotations

from dataclasses import replace

import pytest

from mmstore import ProvenanceRecord, Settings, Store
from mmstore.auto import choose_approach
from mmstore.costmodel import Option, choose, delta_seconds, max_delta_depth, replay_seconds, snapshot_seconds
from mmstore.digest import digest_bytes
from tests.conftest import TEST_SETTINGS
from tests.forge import small_set
from tests.test_devices import changed
from tests.test_provenance_bundles import device_fleet, retrain

# Cheap to send and dear to keep, against dear to send and cheap to keep; both recover in a second.
SENT = Option("sent", wire_bytes=10**9, stored_bytes=10**6, recover_seconds=1.0)
KEPT = Option("kept", wire_bytes=10**6, stored_bytes=10**9, recover_seconds=1.0)


def test_the_cheapest_option_at_the_operators_prices_wins():
    assert choose([SENT, KEPT], Settings()).chosen == "sent"  # a GB-year of storage costs more than a GB upload
    assert choose([SENT, KEPT], Settings(storage_price_gb_month=0.0)).chosen == "kept"
    assert choose([SENT, KEPT], Settings(retention_months=0.1)).chosen == "kept"


def test_an_option_that_recovers_too_slowly_is_not_chosen_however_cheap():
    slow = Option("slow", wire_bytes=1, stored_bytes=1, recover_seconds=31.0)
    choice = choose([slow, KEPT], Settings(max_recover_seconds=30))
    assert choice.chosen == "kept" and "within 30 s" in choice.reason
    assert [o.feasible for o in choice.options] == [False, True]
    assert choose([slow, KEPT], Settings(max_recover_seconds=40)).chosen == "slow"


def test_when_nothing_recovers_in_time_the_fastest_wins():
    slower = Option("slower", wire_bytes=1, stored_bytes=1, recover_seconds=90.0)
    slow = Option("slow", wire_bytes=10**9, stored_bytes=10**9, recover_seconds=60.0)
    choice = choose([slower, slow], Settings(max_recover_seconds=30))
    assert choice.chosen == "slow" and "no way recovers within 30 s" in choice.reason


@pytest.mark.parametrize("snapshot, delta, limit", [(2e8, 2e6, 30.0), (5e9, 1e7, 30.0), (1e6, 0.0, 0.5), (4e6, 4e4, 1.0), (1e10, 1e6, 30.0)])
def test_the_deepest_chain_allowed_is_the_deepest_that_recovers_in_time(snapshot, delta, limit):
    settings = Settings(max_recover_seconds=limit)
    depth = max_delta_depth(int(snapshot), int(delta), settings)
    if snapshot_seconds(int(snapshot), settings) > limit:
        assert depth == 0
    else:
        assert delta_seconds(int(snapshot), int(delta), depth, settings) <= limit
        assert delta_seconds(int(snapshot), int(delta), depth + 1, settings) > limit


def test_replay_time_is_what_each_recipe_measured_and_the_setting_where_none_was():
    settings = Settings(replay_seconds_per_model=0.5)
    assert replay_seconds(2.0, ["full", "full", "last"], {"full": 3.0}, settings) == pytest.approx(2.0 + 3.0 + 3.0 + 0.5)
    assert replay_seconds(2.0, [], {"full": 3.0}, settings) == 2.0


def test_the_snapshot_policy_starts_a_snapshot_where_a_deeper_delta_would_recover_too_slowly(tmp_path):
    # Reading is free and each delta step costs a second: 2.5 s allow two deltas above a snapshot.
    settings = TEST_SETTINGS.model_copy(update={"read_bytes_per_second": 1e15, "delta_step_seconds": 1.0,
                                                "max_recover_seconds": 2.5})
    store = Store.open(str(tmp_path / "s"), settings)
    models = small_set(8, seed=1)
    head = store.save(models, "update", lineage="l")
    depths = []
    for step in range(5):
        models = changed(models, step, seed=step)
        head = store.save(models, "update", base=head, lineage="l")
        depths.append(store.manifest(head).data.depth)
    assert max_delta_depth(models.nbytes, 1, settings) == 2
    assert depths == [1, 2, 0, 1, 2]
    assert store.recover(head).equals(models)


def _record(changes: dict[int, str], seconds: dict[str, float]) -> ProvenanceRecord:
    """A record of retraining `changes` (model -> recipe); priced only, never saved, so its datasets need not exist."""
    ref = {"uri": "file:///datasets/cycle.npz", "digest": digest_bytes(b"cycle"), "size": 5}
    return ProvenanceRecord(trainer="tests.provenance_fleet:train", recipes={r: {} for r in changes.values()},
                            changes={m: (r, ref) for m, r in changes.items()}, environment="{}", seconds=seconds)


def test_a_central_auto_save_prices_the_record_by_its_recipes_measured_replay_time(tmp_path):
    store = Store.open(str(tmp_path / "s"), TEST_SETTINGS.model_copy(update={"max_recover_seconds": 30.0}))
    base = small_set(8, seed=2)
    base_id = store.save(base, "update", lineage="l")
    every_tensor = changed(base, 0, seed=3, tensors=range(len(base.layout.tensors)))
    for m in range(1, 8):
        every_tensor = changed(every_tensor, m, seed=3 + m, tensors=range(len(base.layout.tensors)))
    quick = _record({m: "full" for m in range(8)}, {"full": 0.5})
    slow = _record({m: "full" for m in range(8)}, {"full": 10.0})
    manifest = store.manifest(base_id)
    assert choose_approach(every_tensor, manifest, store, {"provenance": quick}).chosen == "provenance"
    choice = choose_approach(every_tensor, manifest, store, {"provenance": slow})
    assert choice.chosen != "provenance"
    replay = next(o for o in choice.options if o.name == "provenance")
    assert not replay.feasible and replay.recover_seconds > 80.0
    assert choose_approach(changed(base, 0, seed=9), manifest, store, {}).chosen == "update"


def test_a_device_sends_its_record_unless_the_replay_it_measured_is_too_slow(tmp_path):
    fleet = device_fleet(tmp_path)
    device = fleet.device("car-0")
    # Every cell retrained in full: its changed tensors are all its tensors, its record a few kB.
    models, training = retrain(device.base, {cell: "full" for cell in range(len(device.base))}, seed=4)
    digests = [digest_bytes(data) for _, data in training.changes.values()]
    quick = replace(training, held={d: f"file:///data/{d}.npz" for d in digests}, seconds={"full": 0.1})
    push = device.push(models, training=quick, dry_run=True)
    assert push.kind == "provenance", push.choice.table()
    # The data the store holds is named by its URI, not sent.
    assert quick.record()[1] == {} and len(training.record()[1]) == len(training.changes)
    sending = replace(quick, held={})
    data_bytes = sum(len(data) for _, data in training.changes.values())
    assert device.push(models, training=sending, dry_run=True).nbytes - push.nbytes > 0.9 * data_bytes
    slow = replace(quick, seconds={"full": 60.0})
    push = device.push(models, training=slow, dry_run=True)
    assert push.kind in ("delta", "full") and "within 30 s" in push.choice.reason
    assert not next(o for o in push.choice.options if o.name == "provenance").feasible
