"""More forged stores: every CLI command, derived sets over foreign bases, deep chains, claimed shapes, remote backends.

As in test_hostile_store, the attacker writes anything into the store and re-hashes what they forge.
A reader must end in one MMStoreError (the CLI: exit 1 and one `error:` line, no traceback), run
nothing, touch nothing outside the store, allocate nothing the data merely claims, and never hang.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import fsspec
import numpy as np
import pytest

from mmstore import MMStoreError, Store
from mmstore.blobs import blob_key
from mmstore.digest import digest_bytes
from mmstore.errors import NewerFormatError

from . import forge
from .conftest import TEST_SETTINGS, make_s3_bucket
from .test_hostile_store import Forgery, template  # noqa: F401 (fixture)

REPO = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "MMSTORE_TRUSTED_MODULES": "tests", "MMSTORE_DURABLE": "0",
       "MMSTORE_DATASET_ROOTS": "memory://provenance-datasets"}


@pytest.fixture
def forgery(tmp_path, template):  # noqa: F811
    """A fresh forgeable copy of the template store."""
    return Forgery(tmp_path, template)


# -- the CLI, run once per command in a forked child of one interpreter that imported it --------

# Forking after the imports costs milliseconds per command instead of seconds; each child is a whole
# `mmstore` run: its exit code, stdout and stderr are what a user would see.
DRIVER = r"""
import json, os, sys, time, traceback, signal
from mmstore.cli import main
results = []
for i, argv in enumerate(json.loads(sys.stdin.read())):
    out, err = f"{sys.argv[1]}/{i}.out", f"{sys.argv[1]}/{i}.err"
    pid = os.fork()
    if pid == 0:
        os.dup2(os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 1)
        os.dup2(os.open(err, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 2)
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            traceback.print_exc()
            code = 99
        sys.stdout.flush(); sys.stderr.flush()
        os._exit(code)
    deadline = time.monotonic() + float(sys.argv[2])
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            code = os.waitstatus_to_exitcode(status)
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL); os.waitpid(pid, 0)
            code = "timeout"
            break
        time.sleep(0.02)
    results.append({"argv": argv, "code": code, "out": open(out).read(), "err": open(err).read()})
print(json.dumps(results))
"""


def run_cli_batch(tmp: Path, argvs: list[list[str]], timeout: float = 60) -> list[dict]:
    """Run `mmstore ARGV` for each argv; each result has its exit code ("timeout" if killed), stdout and stderr."""
    work = tmp / f"cli-{uuid.uuid4().hex[:8]}"
    work.mkdir()
    proc = subprocess.run([sys.executable, "-c", DRIVER, str(work), str(timeout)], input=json.dumps(argvs),
                          capture_output=True, text=True, cwd=REPO, env=ENV, timeout=timeout * len(argvs) + 120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.splitlines()[-1])


def assert_one_error_line(result: dict) -> None:
    """Exit 1, exactly one line on stderr starting with `error:`, no traceback."""
    lines = [line for line in result["err"].splitlines() if line.strip()]
    assert result["code"] == 1 and len(lines) == 1 and lines[0].startswith("error:") \
        and "Traceback" not in result["err"], result


def commands(root: Path, out: Path, target: str) -> dict[str, list[str]]:
    """Every reading CLI command, aimed at `target` where it takes a set."""
    s = ["--store", str(root)]
    return {
        "ls": s + ["ls"], "ls-json": s + ["--json", "ls"], "show": s + ["show", target], "log": s + ["log", target],
        "verify": s + ["verify"], "verify-one": s + ["verify", target], "du": s + ["du"],
        "export": s + ["export", target, "--out", str(out / "export"), "--executor", "in-process"],
        "probe": s + ["probe", "record", target, "--input-shape", "2,5", "--out", str(out / "probe.json")],
    }


def _marker(content: bytes):
    return lambda f: (f.root / "mmstore.json").write_bytes(content)


def _marker_directory(f: Forgery) -> None:
    (f.root / "mmstore.json").unlink(missing_ok=True)
    (f.root / "mmstore.json").mkdir()


def _manifest_directory(f: Forgery) -> None:
    set_id = forge.head(f.root, "base")
    path = f.root / "sets" / f"{set_id}.json"
    path.unlink()
    path.mkdir()


def _blob_prefix_is_a_file(f: Forgery) -> None:
    ref = forge.read_manifest(f.root, forge.head(f.root, "base"))["data"]["params"]
    directory = f.root / "blobs" / ref["id"][:2]
    shutil.rmtree(directory)
    directory.write_bytes(b"not a directory")


def _os_system_factory(f: Forgery) -> None:
    forge.forge_arch(f.root, "base", lambda doc: doc["arch"].update(
        factory="os:system", kwargs={"command": f"touch {f.canary}"}, source_digest=""))


def _deep_meta(f: Forgery) -> None:
    good = (f.root / "sets" / f"{forge.head(f.root, 'base')}.json").read_bytes()
    forge.write_manifest(f.root, good.replace(b'"meta":{}', b'"meta":{"x":' + forge.deep_json(3 << 20) + b"}"), "base")


def _loud_meta(f: Forgery) -> None:
    """Metadata a terminal or rich would interpret: markup, escapes, newlines, a huge but valid number."""
    meta = {"[bold red]x[/]": "[/]\x1b[2J\n\rerror: fake", "n": int("9" * 4000), "f": 1.7976931348623157e308}
    forge.forge_manifest(f.root, "base", lambda m: m["meta"].update(meta))


def _missing_base(f: Forgery) -> None:
    forge.forge_manifest(f.root, "upd", lambda m: m.update(base="ab" * 32))


def _ref_ten_megabytes(f: Forgery) -> None:
    forge.point(f.root, "base", b"a" * (10 << 20))


def _huge_params_claim(f: Forgery) -> None:
    forge.forge_manifest(f.root, "base", lambda m: m["data"].update(params={**m["data"]["params"], "size": 1 << 40}))


# case -> (forgery, target, commands that must fail; every other command must succeed or fail cleanly)
CLI_CASES = {
    "marker-directory": (_marker_directory, "base", ("ls", "show", "log", "verify", "du", "export", "probe")),
    "marker-huge-version": (_marker(b'{"format_version": 1000000000000000000000000000000}'), "base",
                            ("ls", "show", "log", "verify", "du", "export", "probe")),
    "marker-five-megabytes": (_marker(b" " * (5 << 20) + b"{}"), "base", ("ls", "show", "verify", "du", "export")),
    "marker-not-json": (_marker(b"\xff\xfe{"), "base", ("ls", "show", "verify", "du", "export")),
    "manifest-is-a-directory": (_manifest_directory, "upd", ("ls", "verify", "du")),
    "blob-prefix-is-a-file": (_blob_prefix_is_a_file, "base", ("show", "verify", "verify-one", "du", "export", "probe")),
    "os-system-factory": (_os_system_factory, "base", ("probe",)),
    "meta-nested-three-million": (_deep_meta, "base", ("ls", "ls-json", "show", "log", "verify", "du")),
    "meta-markup-and-escapes": (_loud_meta, "base", ()),
    "missing-base": (_missing_base, "upd", ("show", "log", "verify", "du", "export")),
    "ref-ten-megabytes": (_ref_ten_megabytes, "base", ("ls", "show", "log", "export", "probe")),
    "params-claim-a-terabyte": (_huge_params_claim, "base", ("verify", "verify-one", "export", "probe")),
}


@pytest.mark.parametrize("case", sorted(CLI_CASES))
def test_every_cli_command_on_a_forged_store(forgery, case):
    make, target, must_fail = CLI_CASES[case]
    make(forgery)
    argvs = commands(forgery.root, forgery.tmp, target)
    results = dict(zip(argvs, run_cli_batch(forgery.tmp, list(argvs.values()))))
    for name, result in results.items():
        if name in must_fail or result["code"] != 0:
            assert_one_error_line(result)
    assert not forgery.canary.exists()
    assert forge.files(forgery.sentinel) == forgery.sentinel_before
    if case == "meta-markup-and-escapes":  # the stored text is printed, never interpreted as markup
        assert results["show"]["code"] == 0 and results["ls"]["code"] == 0, results


def test_odd_names_under_sets_and_refs_are_ignored(forgery):
    """Names that are not ids or lineages (unicode, newlines, dots) are not sets or lineages, and break nothing."""
    good = forge.head(forgery.root, "base").encode()
    for name in ("fl\u00e9et", "fleet\n", "..", "a b", "\u202eevil"):
        if name != "..":
            forge.point(forgery.root, name, good)
    (forgery.root / "sets" / "\u00e9t\u00e9.json").write_bytes(b"{}")
    (forgery.root / "sets" / ("A" * 64 + ".json")).write_bytes(b"{}")
    store = Store.open(str(forgery.root), TEST_SETTINGS)
    assert set(store.lineages()) == {"base", "upd", "upd3", "prov"}
    assert len(store.list()) == len(forgery.ids)
    for result in run_cli_batch(forgery.tmp, [["--store", str(forgery.root), "ls"], ["--store", str(forgery.root), "du"]]):
        assert result["code"] == 0, result


def test_a_marker_with_a_huge_version_asks_for_an_upgrade(forgery):
    (forgery.root / "mmstore.json").write_bytes(b'{"format_version": ' + b"9" * 200 + b"}")
    with pytest.raises(NewerFormatError):
        Store.open(str(forgery.root), TEST_SETTINGS).list()


# -- derived sets over bases of another approach ---------------------------------------------------

def _delta_over_replay(root: Path) -> None:
    """The `upd` delta re-pointed at a provenance replay set (same models and layout) forged over `prov`."""
    replay_id = forge.write_manifest(root, forge.replay_manifest(root, forge.head(root, "prov"), "ab" * 32), "rep")
    forge.forge_manifest(root, "upd", lambda m: m.update(base=replay_id))


def test_an_update_delta_over_a_provenance_replay_set(forgery):
    _delta_over_replay(forgery.root)
    forgery.attempt("upd", ("recover", "modules", "verify", "verify_one", "export"))


def test_cli_verify_of_an_update_delta_over_a_provenance_replay_set(forgery):
    _delta_over_replay(forgery.root)
    for result in run_cli_batch(forgery.tmp, [["--store", str(forgery.root), "verify", "upd"]]):
        assert_one_error_line(result)


def test_an_update_delta_over_a_baseline_or_provenance_snapshot_is_read_or_refused(forgery):
    """A delta over a foreign snapshot of the same models and layout: recovered exactly, or refused cleanly."""
    for source in ("base", "prov"):
        forge.forge_manifest(forgery.root, "upd", lambda m: m.update(base=forge.head(forgery.root, source)))
        forgery.attempt("upd", ())


def test_a_replay_set_over_an_update_delta_is_read_or_refused(forgery):
    store = Store.open(str(forgery.root), TEST_SETTINGS)
    content = digest_bytes(store.recover("upd").data)
    forge.write_manifest(forgery.root, forge.replay_manifest(forgery.root, forge.head(forgery.root, "upd"), content), "rep")
    assert forge.rows_equal(Store.open(str(forgery.root), TEST_SETTINGS).recover("rep", executor="in-process", force=True).data,
                            store.recover("upd").data)


# -- provenance change lists that do not fit their set ------------------------------------------------

def _entry(model, recipe="full", uri="memory://provenance-datasets/x", tensors=None):
    return {"model": model, "recipe": recipe, "dataset": {"uri": uri, "digest": "0" * 64, "size": 1},
            "tensors": tensors if tensors is not None else {"net.0.bias": "0" * 32}}


REPLAYS = {
    "model-out-of-range": dict(models=[_entry(4)]),
    "model-negative": dict(models=[_entry(-1)]),
    "model-huge": dict(models=[_entry(10**30)]),
    "models-repeat": dict(models=[_entry(1), _entry(1)], changed=2),
    "recipe-missing": dict(models=[_entry(0, recipe="nope")]),
    "tensor-unknown": dict(models=[_entry(0, tensors={"no.such": "0" * 32})]),
    "dataset-outside-roots": dict(models=[_entry(0, uri="/etc/passwd")], recipes={"full": {}}),
    "dataset-dotdot": dict(models=[_entry(0, uri="memory://provenance-datasets/../x")], recipes={"full": {}}),
    "dataset-http": dict(models=[_entry(0, uri="http://127.0.0.1:9/x")], recipes={"full": {}}),
    "trainer-os-system": dict(models=[_entry(0)], trainer="os:system", recipes={"full": {}}),
    "trainer-eval": dict(models=[_entry(0)], trainer="builtins:eval", recipes={"full": {}}),
    "environment-nested": dict(models=[], changed=0, environment=forge.deep_json(2 << 20)),
}


@pytest.mark.parametrize("case", sorted(REPLAYS))
def test_forged_replay_change_lists_are_refused(forgery, case):
    spec = REPLAYS[case]
    root = forgery.root
    models = spec["models"]
    recipe = {"schema_version": 1, "trainer": spec.get("trainer", "tests.provenance_fleet:drifting_train"),
              "trainer_digest": "0" * 64, "recipes": spec.get("recipes", {"full": {}} if case != "recipe-missing" else {})}
    import zstandard

    blobs = {
        "recipe": forge.put_blob(root, forge.canonical(recipe)),
        "environment": forge.put_blob(root, spec.get("environment", b"{}")),
        "changes": forge.put_blob(root, zstandard.ZstdCompressor().compress(forge.canonical({"schema_version": 1, "models": models}))),
    }
    manifest = forge.replay_manifest(root, forge.head(root, "prov"), "ab" * 32, changed=spec.get("changed", len(models)), **blobs)
    forge.write_manifest(root, manifest, "rep")
    forgery.attempt("rep", ("recover", "modules", "verify_one", "export"))
    for executor in ("in-process", "auto"):
        with pytest.raises(MMStoreError):
            Store.open(str(root), TEST_SETTINGS).recover("rep", executor=executor, force=True)


# -- claimed shapes ------------------------------------------------------------------------------

CLAIM_SCRIPT = r"""
import json, resource, sys
resource.setrlimit(resource.RLIMIT_AS, (3 << 29, 3 << 29))
from mmstore import MMStoreError, Settings, Store
settings = Settings(trusted_modules=("tests",), durable=False, dataset_roots=("memory://provenance-datasets",))
for op in ("recover", "verify"):
    try:
        getattr(Store.open(sys.argv[1], settings), op)(sys.argv[2], executor="in-process", force=True)
        print("none")
    except MMStoreError as exc:
        print("MMStoreError")
    except BaseException as exc:
        print(type(exc).__name__)
"""


def _zero_width_sets(root: Path) -> None:
    """2^31 models of a layout of four empty tensors (0 bytes a row, so no size limit is met): a baseline
    `zb`, an update delta `zd` over it, and a provenance replay `zp` over it claiming every model changed."""
    n = 1 << 31
    base = forge.read_manifest(root, forge.head(root, "base"))
    arch = forge.zero_width_arch(root, base)
    empty = forge.put_blob(root, b"")
    base_id = forge.write_manifest(root, {**base, "arch": arch, "n_models": n, "data": {"params": empty}}, "zb")
    import zstandard

    small = forge.put_blob(root, zstandard.ZstdCompressor(write_content_size=False).compress(bytes(16)))
    delta = forge.read_manifest(root, forge.head(root, "upd"))
    delta.update(arch=arch, n_models=n, base=base_id, lineage="zd")
    delta["data"].update(changes=small, values=empty, segments=[0, 0, 0, 0], codec="raw")
    forge.write_manifest(root, delta, "zd")
    replay = forge.replay_manifest(root, base_id, "ab" * 32, changed=n, **{**forge.replay_blobs(root), "changes": small})
    forge.write_manifest(root, {**replay, "arch": arch, "n_models": n}, "zp")


@pytest.mark.parametrize("lineage", ["zd", "zp"])
def test_a_change_list_is_not_decoded_into_the_claimed_size(forgery, lineage):
    _zero_width_sets(forgery.root)
    proc = subprocess.run([sys.executable, "-c", CLAIM_SCRIPT, str(forgery.root), lineage], capture_output=True,
                          text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["MMStoreError", "MMStoreError"], proc.stdout


def test_exporting_two_billion_zero_width_models_does_not_hang(forgery):
    root = forgery.root
    base = forge.read_manifest(root, forge.head(root, "base"))
    arch = forge.zero_width_arch(root, base, names="", factory="torch.nn:Identity")
    forge.write_manifest(root, {**base, "arch": arch, "n_models": 1 << 31, "data": {"params": forge.put_blob(root, b"")}}, "void")
    (result,) = run_cli_batch(forgery.tmp, [["--store", str(root), "export", "void", "--out", str(forgery.tmp / "out")]],
                              timeout=30)
    assert_one_error_line(result)


# -- deep chains ---------------------------------------------------------------------------------

def _replay_chain(root: Path, length: int) -> str:
    """`length` replay sets changing nothing, each over the previous one, over the `prov` snapshot; returns the head."""
    content = digest_bytes(Store.open(str(root), TEST_SETTINGS).recover("prov").data)
    blobs = forge.replay_blobs(root)
    current = forge.head(root, "prov")
    for _ in range(length):
        current = forge.write_manifest(root, forge.replay_manifest(root, current, content, **blobs))
    forge.point(root, "deep", current.encode())
    return current


def test_a_deep_provenance_chain_ends_in_an_mmstore_error(forgery):
    _replay_chain(forgery.root, 5000)
    for op in ("recover", "verify"):
        try:
            getattr(Store.open(str(forgery.root), TEST_SETTINGS), op)("deep", executor="in-process", force=True)
        except MMStoreError:
            pass


def test_a_deep_update_chain_is_walked_without_recursion(forgery):
    """5,000 empty deltas over a snapshot: recovered (or refused) without RecursionError; log and size walk it."""
    root = forgery.root
    snapshot = forge.head(root, "upd")
    store = Store.open(str(root), TEST_SETTINGS)
    manifest = forge.read_manifest(root, snapshot)
    content = digest_bytes(store.recover("upd").data)
    current = snapshot
    for depth in range(1, 5001):
        current = forge.write_manifest(root, {**manifest, "base": current,
                                              "data": {"kind": "delta", "depth": depth, "content": content}})
    forge.point(root, "deep", current.encode())
    fresh = Store.open(str(root), TEST_SETTINGS)
    try:
        assert forge.rows_equal(fresh.recover("deep").data, store.recover("upd").data)
    except MMStoreError:
        pass
    assert len(Store.open(str(root), TEST_SETTINGS).log("deep")) > 5000
    Store.open(str(root), TEST_SETTINGS).size("deep")


def test_du_of_a_long_lineage_finishes(forgery):
    _replay_chain(forgery.root, 3000)
    (result,) = run_cli_batch(forgery.tmp, [["--store", str(forgery.root), "du"]], timeout=60)
    assert result["code"] in (0, 1), result


# -- model indices -------------------------------------------------------------------------------

@pytest.mark.parametrize("models", [[10**30], [-5], [4], [[0, 1], [2]], ["a"], [None], np.array(["x"])],
                         ids=["huge", "negative-beyond-n", "n", "ragged", "letter", "none", "numpy-letters"])
def test_odd_model_indices_are_refused(forgery, models):
    with pytest.raises(MMStoreError):
        Store.open(str(forgery.root), TEST_SETTINGS).recover("base", models=models)


@pytest.mark.parametrize("models", [[1.7], [True], ["3"], np.array(["1", "2"])], ids=["float", "bool", "str", "numpy-str"])
def test_non_integer_model_indices_are_refused(forgery, models):
    with pytest.raises(MMStoreError):
        Store.open(str(forgery.root), TEST_SETTINGS).recover("base", models=models)


# -- writing operations on forged stores ---------------------------------------------------------

def test_delete_never_removes_a_file_outside_the_store(forgery):
    """A blob directory that links outside the store: deleting the set that names the blob leaves the outside alone."""
    root = forgery.root
    ref = forge.read_manifest(root, forge.head(root, "base"))["data"]["params"]
    outside = forgery.sentinel / "linked"
    shutil.move(str(root / "blobs" / ref["id"][:2]), outside)
    (root / "blobs" / ref["id"][:2]).symlink_to(outside, target_is_directory=True)
    before = forge.files(forgery.sentinel)
    store = Store.open(str(root), TEST_SETTINGS)
    for op in (lambda: store.size(forge.head(root, "base")), lambda: store.delete(forge.head(root, "base"))):
        try:
            op()
        except MMStoreError:
            pass
    assert forge.files(forgery.sentinel) == before


# -- remote backends -----------------------------------------------------------------------------

REMOTE_OPS = {
    "list": lambda s, lineage: s.list(),
    "lineages": lambda s, lineage: s.lineages(),
    "log": lambda s, lineage: s.log(lineage),
    "size": lambda s, lineage: s.size(lineage),
    "recover": lambda s, lineage: s.recover(lineage),
    "verify": lambda s, lineage: s.verify(),
}


def _remote_store(kind: str, request) -> tuple[str, dict, fsspec.AbstractFileSystem, str]:
    """A saved store (baseline `base`, update `upd`) on memory:// or S3: its URL, options, filesystem and root path."""
    if kind == "memory":
        url, options = f"memory://{uuid.uuid4().hex}", {}
    else:
        options = request.getfixturevalue("s3_options")
        url = f"s3://{make_s3_bucket(options)}/store"
    store = Store.open(url, TEST_SETTINGS, **options)
    first = forge.small_set()
    store.save(first, lineage="base")
    store.save(first, approach="update", lineage="upd")
    fs, path = fsspec.core.url_to_fs(url, **options)
    return url, options, fs, path.rstrip("/")


def _remote_params(fs, root: str, lineage: str) -> dict:
    set_id = fs.cat_file(f"{root}/refs/{lineage}").decode()
    return json.loads(fs.cat_file(f"{root}/sets/{set_id}.json"))["data"]["params"]


def _remote_forge_manifest(fs, root: str, lineage: str, mutate) -> str:
    set_id = fs.cat_file(f"{root}/refs/{lineage}").decode()
    manifest = json.loads(fs.cat_file(f"{root}/sets/{set_id}.json"))
    mutate(manifest)
    data = forge.canonical(manifest)
    new_id = digest_bytes(data)
    fs.pipe_file(f"{root}/sets/{new_id}.json", data)
    fs.pipe_file(f"{root}/refs/{lineage}", new_id.encode())
    return new_id


REMOTE_CASES = {
    "blob-longer-than-ref": ("base", ("recover", "verify"),
                             lambda fs, root: fs.pipe_file(f"{root}/{blob_key(_remote_params(fs, root, 'base')['id'])}", bytes(2000))),
    "blob-missing": ("base", ("recover", "verify", "size"),
                     lambda fs, root: fs.rm_file(f"{root}/{blob_key(_remote_params(fs, root, 'base')['id'])}")),
    "ref-ten-megabytes": ("base", ("lineages", "log", "recover"),
                          lambda fs, root: fs.pipe_file(f"{root}/refs/base", b"a" * (10 << 20))),
    "ref-traversal": ("base", ("lineages", "log", "recover"),
                      lambda fs, root: fs.pipe_file(f"{root}/refs/base", b"../../x")),
    "manifest-is-a-prefix": ("upd", ("list", "verify"),
                             lambda fs, root: fs.pipe_file(f"{root}/sets/{'cd' * 32}.json/inner", b"{}")),
    "blob-id-traversal": ("base", ("list", "log", "recover", "verify"),
                          lambda fs, root: _remote_forge_manifest(fs, root, "base", lambda m: m["data"]["params"].update(
                              id="../../../../x" + "0" * 51))),
    "odd-names": ("base", (), lambda fs, root: [fs.pipe_file(f"{root}/refs/fl\u00e9et", b"ab" * 32),
                                                fs.pipe_file(f"{root}/sets/\u00e9.json", b"{}"),
                                                fs.pipe_file(f"{root}/refs/x\x01y", b"ab" * 32)]),
}


@pytest.mark.parametrize("kind", ["memory", "s3"])
@pytest.mark.parametrize("case", sorted(REMOTE_CASES))
def test_forged_remote_stores(request, kind, case):
    lineage, must_fail, make = REMOTE_CASES[case]
    url, options, fs, root = _remote_store(kind, request)
    make(fs, root)
    outcome = {}
    for name, op in REMOTE_OPS.items():
        try:
            op(Store.open(url, TEST_SETTINGS, **options), lineage)
            outcome[name] = None
        except MMStoreError as exc:
            outcome[name] = exc
    assert all(outcome[name] is not None for name in must_fail), outcome
