"""Retention (prune), compaction and aliases: kept sets stay recoverable, old ids keep resolving."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest

from mmstore import ArchSpec, ModelSet, Settings, Store
from mmstore.aliases import AliasDocument
from mmstore.cli import main
from mmstore.errors import FormatError, InUseError, MMStoreError, NewerFormatError, NotFoundError
from mmstore.layout import Layout
from mmstore.manifest import canonical_json
from mmstore.rebase import PrunePlan
from mmstore.retention import RetentionPolicy, select_kept

from .archs import Small
from .conftest import TEST_SETTINGS
from .faults import HookedBackend

LAYOUT = Layout.of(Small().state_dict())
ARCH = ArchSpec(factory="tests.archs:Small")
# Provenance datasets live under `<store>-datasets`, which only the default dataset roots allow.
PROVENANCE = Settings(trusted_modules=("tests",), replay_executor="in-process")
START = datetime(2026, 1, 1, 12, tzinfo=timezone.utc)


def versions(seed: int, count: int, n: int = 30) -> list[np.ndarray]:
    """`count` versions of n models in the layout of `Small`, each changing two models of the one before."""
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, (n, LAYOUT.row_nbytes), dtype=np.uint8)
    out = []
    for _ in range(count):
        data = data.copy()
        data[rng.integers(n, size=2), : LAYOUT.row_nbytes // 2] = rng.integers(0, 256, LAYOUT.row_nbytes // 2, dtype=np.uint8)
        out.append(data)
    return out


def build_lineage(url: str, seed: int, count: int, approach: str = "update", step: timedelta = timedelta(hours=7),
                  name: str = "fleet", **options) -> dict[str, np.ndarray]:
    """A lineage of `count` sets, one every `step` from START; id -> rows, oldest first."""
    times = iter(START + k * step for k in range(count))
    store = Store(Store.open(url, TEST_SETTINGS, **options).backend, TEST_SETTINGS,
                  clock=lambda: next(times).isoformat(timespec="milliseconds"))
    return {store.save(ModelSet(ARCH, LAYOUT, data), approach=approach, lineage=name): data
            for data in versions(seed, count)}


def disk_bytes(root: Path) -> int:
    """Bytes of every file below `root`."""
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def check_recovers(url: str, saved: dict[str, np.ndarray], settings=TEST_SETTINGS, **options) -> Store:
    """Every id (old ones through their aliases) recovers bit-exactly and the whole store verifies."""
    store = Store.open(url, settings, **options)
    store.verify()
    for set_id, data in saved.items():
        assert np.array_equal(store.recover(set_id).data, data), set_id[:12]
    return store


# -- retention rules --------------------------------------------------------------------------------


def _chain(hours: list[float]) -> list[tuple[str, datetime]]:
    """A chain, newest first, of sets created `hours` after START."""
    return [(f"s{k}", START + timedelta(hours=h)) for k, h in sorted(enumerate(hours), key=lambda kv: -kv[1])]


def test_retention_rules_follow_borg():
    chain = _chain([h * 12.0 for h in range(30)])  # two sets a day for 15 days
    assert select_kept(chain, RetentionPolicy(keep_last=3)) == {"s29", "s28", "s27"}
    # Daily: the newest set of each of the last 4 days that have one.
    assert select_kept(chain, RetentionPolicy(keep_daily=4)) == {"s29", "s28", "s26", "s24"}
    # A day already kept by keep-last still marks its period but does not count.
    assert select_kept(chain, RetentionPolicy(keep_last=2, keep_daily=2)) == {"s29", "s28", "s26", "s24"}
    assert select_kept(chain, RetentionPolicy(keep_within=24 * 3600)) == {"s29", "s28", "s27"}
    weekly = select_kept(chain, RetentionPolicy(keep_weekly=2))
    assert len(weekly) == 2 and "s29" in weekly
    assert select_kept(chain, RetentionPolicy(keep_monthly=5)) == {"s29"}  # one month only
    assert select_kept(chain, RetentionPolicy()) == {f"s{k}" for k in range(30)}  # an empty policy keeps all
    assert select_kept(chain, RetentionPolicy(keep_daily=1)) == {"s29"}  # the head is always kept


# -- prune ------------------------------------------------------------------------------------------


def test_prune_keep_last_3_of_50_recovers_the_kept_and_shrinks_to_what_they_need(tmp_path):
    root = tmp_path / "store"
    saved = build_lineage(str(root), 1, 50)
    kept = dict(list(saved.items())[-3:])
    before = disk_bytes(root)
    report = Store.open(str(root), TEST_SETTINGS).prune("fleet", RetentionPolicy(keep_last=3), grace=0)
    assert len(report.removed) == 47 and sorted(report.kept) == sorted(kept) and len(report.rebased) == 1
    store = check_recovers(str(root), kept)
    needed = sum(store.sizes().values())
    # Beyond what the kept sets need: the marker, the lineage ref and its lock file, one alias.
    overhead = sum(p.stat().st_size for p in root.rglob("*")
                   if p.is_file() and (p.name == "mmstore.json" or p.parent.name in ("refs", "aliases")))
    assert disk_bytes(root) == needed + overhead
    assert report.freed >= before - disk_bytes(root)  # freed, less the snapshot and alias written
    assert disk_bytes(root) < before / 3
    assert [info.id for info in store.log("fleet")] == [store.resolve(set_id) for set_id in reversed(kept)]
    assert store.unreferenced().freed == 0


def test_prune_rebases_branches_and_keeps_other_lineages_heads(local_store):
    saved = build_lineage(local_store.url, 2, 8)
    ids = list(saved)
    branch_data = versions(3, 1)[0]
    branch = local_store.save(ModelSet(ARCH, LAYOUT, branch_data), approach="update", base=ids[2])
    local_store.backend.put("refs/old", ids[4].encode(), exclusive=True)
    report = local_store.prune("fleet", RetentionPolicy(keep_last=2), grace=0)
    assert ids[4] in report.kept  # another lineage's head
    assert set(report.rebased) == {branch, ids[4], ids[6]}
    expected = {**{k: saved[k] for k in (ids[4], *ids[6:])}, branch: branch_data}
    store = check_recovers(local_store.url, expected)
    assert {info.id for info in store.list()} == {store.resolve(k) for k in expected}
    assert store.resolve("old") == report.rebased[ids[4]] == store.resolve(ids[4])


def test_prune_by_days_keeps_the_newest_set_of_each_day(local_store):
    saved = build_lineage(local_store.url, 4, 12, step=timedelta(hours=9))
    report = local_store.prune("fleet", RetentionPolicy(keep_daily=3), dry_run=True)
    assert local_store.list() and len(local_store.list()) == 12  # a dry run changes nothing
    days = {}
    for set_id in saved:
        days[local_store.info(set_id).created[:10]] = set_id
    assert set(report.kept) == set(list(days.values())[-3:])
    created = {set_id: local_store.info(set_id).created for set_id in saved}
    assert local_store.prune("fleet", RetentionPolicy(keep_daily=3), grace=0).rebased
    store = check_recovers(local_store.url, {k: saved[k] for k in report.kept})
    # A re-based set keeps its creation time and metadata, and says where it came from.
    for set_id in report.kept:
        info = store.info(store.resolve(set_id))
        assert info.created == created[set_id]
        assert info.id == set_id or info.meta["rebased_from"] == set_id


def provenance_lineage(url: str, count: int, seed: int) -> dict[str, np.ndarray]:
    """A provenance lineage 'p' of `count` sets of 6 FFNN-48 models, two retrained per version; id -> rows."""
    from .provenance_fleet import initial_set, retrain

    store = Store.open(url, PROVENANCE)
    sets = [initial_set(6, seed)]
    saved = {store.save(sets[0], approach="provenance", lineage="p"): sets[0].data}
    for version in range(1, count):
        derived, record = retrain(sets[-1], {version % 6: "full", (version + 3) % 6: "partial"}, f"{url}-datasets",
                                  version, seed)
        saved[store.save(derived, approach="provenance", lineage="p", provenance=record)] = derived.data
        sets.append(derived)
    return saved


def test_prune_of_provenance_and_baseline_lineages(tmp_path):
    url = str(tmp_path / "baseline")
    saved = build_lineage(url, 5, 4, approach="baseline", name="p")
    Store.open(url, TEST_SETTINGS).prune("p", RetentionPolicy(keep_last=2), grace=0)
    check_recovers(url, dict(list(saved.items())[-2:]))
    url = str(tmp_path / "provenance")
    saved = provenance_lineage(url, 4, 5)
    report = Store.open(url, PROVENANCE).prune("p", RetentionPolicy(keep_last=2), grace=0)
    assert len(report.rebased) == 1
    store = check_recovers(url, dict(list(saved.items())[-2:]), settings=PROVENANCE)
    assert store.manifest(store.resolve(list(saved)[-2])).data.kind == "snapshot"


def test_a_set_derived_from_a_kept_set_during_prune_is_kept(local_store):
    saved = build_lineage(local_store.url, 6, 6)
    extra = versions(7, 1)[0]
    set_id = local_store.save(ModelSet(ARCH, LAYOUT, extra), approach="update", base=list(saved)[1])
    report = local_store.prune("fleet", RetentionPolicy(keep_last=1), grace=0)
    assert set_id in report.rebased
    check_recovers(local_store.url, {list(saved)[-1]: list(saved.values())[-1], set_id: extra})


class Stop(BaseException):
    """Where a forced crash stops an operation."""


def test_a_prune_plan_left_by_a_crash_is_finished_and_a_forged_one_is_bounded(tmp_path):
    url = str(tmp_path / "store")
    saved = build_lineage(url, 12, 6)
    other = build_lineage(url, 13, 2, name="other")
    ids = list(saved)

    def stop(real, *args, **kwargs):
        raise Stop

    # The fourth deletion: after the re-based set's old manifest and the newest removed set are gone.
    crashing = Store(HookedBackend(Store.open(url, TEST_SETTINGS).backend, "delete", 4, stop), TEST_SETTINGS)
    with pytest.raises(Stop):
        crashing.prune("fleet", RetentionPolicy(keep_last=2), grace=0)
    store = Store.open(url, TEST_SETTINGS)
    # Two removed sets are off the chain, a third lies in the trash, moved aside by the stopped deletion.
    assert len(store.log("fleet")) == 2 and len(store.list()) == 6 and store.backend.list("trash")
    forged = PrunePlan(lineage="fleet", remove=tuple(other))
    store.backend.put(f"plans/{'a' * 32}.json", canonical_json(forged), exclusive=True)
    Store.open(url, TEST_SETTINGS).prune("fleet", RetentionPolicy(keep_last=2), grace=0)
    store = check_recovers(url, {ids[4]: saved[ids[4]], ids[5]: saved[ids[5]], **other})
    assert len(store.list()) == 4 and store.backend.list("plans") == []  # the other lineage's sets were not touched
    store.backend.put(f"plans/{'b' * 32}.json", b'{"schema_version": 1, "lineage": "fleet", "remove": ["../x"]}',
                      exclusive=True)
    with pytest.raises(FormatError, match="prune plan"):
        store.prune("fleet", RetentionPolicy(keep_last=1))


# -- compact ----------------------------------------------------------------------------------------


def test_compact_bounds_every_chain_and_keeps_old_ids(local_store):
    saved = build_lineage(local_store.url, 8, 24)
    dry = local_store.compact("fleet", max_depth=3, dry_run=True)
    assert len(dry.rebased) == 4 and all(v is None for v in dry.rebased.values())
    report = local_store.compact("fleet", max_depth=3)
    assert list(report.rebased) == list(dry.rebased)
    store = check_recovers(local_store.url, saved)
    depth = 0
    for info in reversed(store.log("fleet")):
        manifest = store.manifest(info.id)
        depth = depth + 1 if manifest.data.kind == "delta" else 0
        assert depth <= 3
    assert len(store.log("fleet")) == 24  # the lineage stays linked: log and prune see every set
    assert local_store.compact("fleet", max_depth=3).rebased == {}  # nothing left to do


def test_compact_uses_the_settings_depth_for_provenance(tmp_path):
    url = str(tmp_path / "p")
    saved = provenance_lineage(url, 6, 9)
    report = Store.open(url, PROVENANCE.model_copy(update={"max_replay_depth": 2})).compact("p")
    assert list(report.rebased) == [list(saved)[3]]  # replays at depths 1..5: the third becomes a snapshot
    check_recovers(url, saved, settings=PROVENANCE)


# -- aliases ----------------------------------------------------------------------------------------


def _rebased(url: str) -> tuple[Store, str, str, dict[str, np.ndarray]]:
    """A lineage of 5 whose middle set was snapshotted: the store, its old and new id, and the saved rows."""
    saved = build_lineage(url, 10, 5)
    store = Store.open(url, TEST_SETTINGS)
    old = list(saved)[2]
    new = store.compact("fleet", max_depth=1).rebased[old]
    return Store.open(url, TEST_SETTINGS), old, new, saved


def test_old_ids_resolve_and_every_reader_follows_aliases(local_store, capsys):
    store, old, new, saved = _rebased(local_store.url)
    assert store.resolve(old) == store.resolve(old[:10]) == new
    child = list(saved)[3]
    assert store.manifest(child).base == old
    assert [i.id for i in store.log(child)][:2] == [child, new]
    assert set(store.sizes()) == {info.id for info in store.list()}
    with pytest.raises(InUseError):  # the child derives from it through the alias
        store.delete(new)
    assert main(["--store", local_store.url, "--json", "log", old]) == 0
    assert new in capsys.readouterr().out


def test_deleting_a_rebased_set_removes_its_aliases(local_store):
    store, old, new, saved = _rebased(local_store.url)
    for set_id in list(saved)[:2:-1]:
        store.delete(store.resolve(set_id))
    store.delete(new)
    assert not store.backend.list("aliases")
    with pytest.raises(NotFoundError):
        store.resolve(old)


def _forge(store: Store, old: str, **changes) -> None:
    """Replace the alias of `old` with one whose fields are changed as given (re-hashing is not needed)."""
    doc = json.loads(store.backend.get(f"aliases/{old}"))
    store.backend.put(f"aliases/{old}", json.dumps({**doc, **changes}).encode(), exclusive=False)


HOSTILE = {
    "not json": lambda store, old, new: store.backend.put(f"aliases/{old}", b"{not json", exclusive=False),
    "huge": lambda store, old, new: store.backend.put(f"aliases/{old}", b" " * (5 << 20), exclusive=False),
    "bad hex target": lambda store, old, new: _forge(store, old, target="../../etc/passwd"),
    "newer format": lambda store, old, new: _forge(store, old, schema_version=9),
    "unknown field": lambda store, old, new: _forge(store, old, shell="rm -rf /"),
    "missing target": lambda store, old, new: _forge(store, old, target="e" * 64),
    "itself": lambda store, old, new: _forge(store, old, target=old),
    "other content": lambda store, old, new: _forge(store, old, content="f" * 64),
    "manifest of another set": lambda store, old, new: _forge(
        store, old, manifest=store.backend.get(f"sets/{new}.json").decode()),
    "target with other content": lambda store, old, new: _forge(store, old, target=store.resolve("fleet")),
}


@pytest.mark.parametrize("attack", sorted(HOSTILE))
def test_hostile_aliases_are_refused_with_one_clear_error(local_store, capsys, attack):
    store, old, new, saved = _rebased(local_store.url)
    HOSTILE[attack](store, old, new)
    child = list(saved)[3]
    fresh = Store.open(local_store.url, TEST_SETTINGS)
    with pytest.raises(MMStoreError) as err:
        fresh.recover(child)
    if attack == "newer format":
        assert isinstance(err.value, NewerFormatError)
    assert main(["--store", local_store.url, "verify"]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in lines[0]


def test_alias_loops_and_long_chains_are_refused(local_store):
    store, old, new, saved = _rebased(local_store.url)
    # A second alias, from the new id back to the old one, with a validly carried manifest: a loop.
    new_bytes = store.backend.get(f"sets/{new}.json")
    loop = AliasDocument(target=old, content=json.loads(store.backend.get(f"aliases/{old}"))["content"],
                         manifest=new_bytes.decode())
    store.backend.put(f"aliases/{new}", canonical_json(loop), exclusive=True)
    store.backend.delete(f"sets/{new}.json")
    with pytest.raises(FormatError, match="loop"):
        Store.open(local_store.url, TEST_SETTINGS).recover(list(saved)[3])
    assert Store.open(local_store.url, TEST_SETTINGS).backend.list("aliases")  # names that are not hex are ignored
    store.backend.put("aliases/not-an-id", b"{}", exclusive=True)
    assert "not-an-id" not in Store.open(local_store.url, TEST_SETTINGS).documents.aliases.names()


# -- CLI --------------------------------------------------------------------------------------------


def test_cli_prune_and_compact(local_store, capsys):
    saved = build_lineage(local_store.url, 11, 8)
    ids = list(saved)
    url = local_store.url
    assert main(["--store", url, "prune", "fleet", "--keep-last", "3", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "would remove 5 set(s) of lineage 'fleet', re-base 1 and keep 3" in out
    assert f"would remove   {ids[0][:12]}" in out and f"would re-base  {ids[5][:12]}" in out
    assert len(Store.open(url, TEST_SETTINGS).list()) == 8
    assert main(["--store", url, "compact", "fleet", "--max-depth", "2", "--dry-run"]) == 0
    assert f"would snapshot 2 set(s) of lineage 'fleet'\n  {ids[3][:12]} -> (snapshot)" in capsys.readouterr().out
    assert main(["--store", url, "--json", "prune", "fleet", "--keep-last", "3", "--grace", "0"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["removed"] == ids[4::-1] and list(data["rebased"]) == [ids[5]] and data["freed"] > 0
    assert main(["--store", url, "compact", "fleet", "--max-depth", "0"]) == 0
    assert "snapshotted 2 set(s)" in capsys.readouterr().out
    check_recovers(url, dict(list(saved.items())[-3:]))
    for argv, message in [
        (["prune", "fleet"], "prune needs a policy"),
        (["prune", "nope", "--keep-last", "1"], "there is no lineage 'nope'"),
        (["prune", "fleet", "--keep-within", "soon"], "--keep-within 'soon' is not a duration"),
    ]:
        assert main(["--store", url, *argv]) == 1
        assert message in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--store", url, "prune", "fleet", "--keep-last", "-1"])
