"""The `mmstore` command: listing, showing, verifying, exporting; exit codes and JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from safetensors.torch import load_file

from mmstore.blobs import blob_key
from mmstore.cli import main

from .factories import bits_equal
from .test_conformance import save_chain


@pytest.fixture
def filled(local_store):
    ids, sets = save_chain(local_store, "baseline", n=6, versions=3)
    return local_store, ids, sets


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_ls_lists_sets_and_lineages(filled, capsys):
    store, ids, _ = filled
    code, out, _ = run(capsys, "--store", store.url, "ls", "--json")
    data = json.loads(out)
    assert code == 0
    assert [s["id"] for s in data["sets"]] == ids
    assert data["lineages"] == {"fleet": ids[-1]}
    code, out, _ = run(capsys, "--store", store.url, "ls")
    assert code == 0 and ids[-1][:12] in out and "fleet" in out


def test_show_log_du(filled, capsys):
    store, ids, _ = filled
    code, out, _ = run(capsys, "--store", store.url, "--json", "show", ids[1][:10])
    shown = json.loads(out)
    assert code == 0 and shown["id"] == ids[1] and shown["manifest"]["n_models"] == 6
    assert shown["size"] == store.size(ids[1])
    code, out, _ = run(capsys, "--store", store.url, "log", "fleet", "--json")
    assert [e["id"] for e in json.loads(out)["log"]] == ids[::-1]
    code, out, _ = run(capsys, "--store", store.url, "du", "--json")
    du = json.loads(out)
    assert du["total"] == sum(store.size(i) for i in ids)


def test_verify_ok_and_failure_exit_code(filled, capsys):
    store, ids, _ = filled
    assert run(capsys, "--store", store.url, "verify")[0] == 0
    key = blob_key(store.manifest(ids[1]).blobs["params"].id)
    damaged = bytearray(store.backend.get(key))
    damaged[3] ^= 0xFF
    store.backend.put(key, bytes(damaged), exclusive=False)
    code, _, err = run(capsys, "--store", store.url, "verify")
    assert code == 1 and "corrupt" in err


def test_unknown_set_and_missing_store_fail_clearly(filled, capsys, tmp_path):
    store, _, _ = filled
    code, _, err = run(capsys, "--store", store.url, "show", "nope")
    assert code == 1 and "mmstore ls" in err
    code, _, err = run(capsys, "--store", str(tmp_path / "absent"), "verify")
    assert code == 1 and "no store" in err


def test_export_writes_plain_safetensors(filled, capsys, tmp_path):
    store, ids, sets = filled
    out_dir = tmp_path / "export"
    code, out, _ = run(capsys, "--store", store.url, "export", "fleet", "--out", str(out_dir), "--json")
    files = json.loads(out)["files"]
    assert code == 0 and len(files) == 6
    # Loaded with safetensors alone: no mmstore needed to read a recovered model.
    loaded = load_file(files[4])
    expected = sets[-1].state_dict(4)
    assert set(loaded) == set(expected)
    for name, t in expected.items():
        assert bits_equal(loaded[name], t), name


def test_export_subset_keeps_model_numbers(filled, capsys, tmp_path):
    store, ids, _ = filled
    code, out, _ = run(capsys, "--store", store.url, "export", ids[0], "--out", str(tmp_path / "e"), "--models", "5,2")
    assert code == 0
    assert sorted(os.listdir(tmp_path / "e")) == ["model-00002.safetensors", "model-00005.safetensors"]


def test_console_script_runs(filled, tmp_path):
    store, ids, _ = filled
    result = subprocess.run([sys.executable, "-m", "mmstore.cli", "--store", store.url, "ls", "--json"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["lineages"]["fleet"] == ids[-1]


def test_ls_on_a_missing_directory_fails_and_creates_nothing(tmp_path, capsys):
    code, _, err = run(capsys, "--store", str(tmp_path / "absent"), "ls")
    assert code == 1 and err.startswith("error: no store at")
    assert not (tmp_path / "absent").exists()


def test_a_bug_is_one_line_with_exit_2_and_debug_reraises(filled, capsys, monkeypatch):
    # A stand-in for a bug: no user input can make the CLI raise anything but an MMStoreError.
    def broken(*args, **kwargs):
        raise RuntimeError("boom [red]")

    monkeypatch.setattr("mmstore.cli.Store.open", broken)
    store, _, _ = filled
    code, _, err = run(capsys, "--store", store.url, "ls")
    assert code == 2
    assert err == "error: internal error: RuntimeError: boom [red]; rerun with --debug and report it\n"
    with pytest.raises(RuntimeError, match="boom"):
        main(["--store", store.url, "--debug", "ls"])
