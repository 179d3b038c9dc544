"""Every failure a user can cause at the command line: one `error:` line, a non-zero exit, no traceback.

Each row runs the real `mmstore` command in a subprocess, against real stores, a real S3 endpoint
(moto's server), a real 64 KiB file system and a port where nothing listens.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mmstore import Store

from .conftest import TEST_SETTINGS, make_s3_bucket
from .test_backend import dead_endpoint, make_read_only, s3_auth_endpoint, small_set, tiny_fs  # noqa: F401 (fixtures)

ROOT = Path(__file__).resolve().parent.parent


def run_cli(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    """`mmstore ARGV` as a user runs it, from the repository root."""
    return subprocess.run([sys.executable, "-m", "mmstore.cli", *argv], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)


def _base_env() -> dict[str, str]:
    # No AWS settings from the machine running the tests: each row says which credentials it has.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MMSTORE_"))}
    return env | {"MMSTORE_TRUSTED_MODULES": "tests", "AWS_EC2_METADATA_DISABLED": "true",
                  "AWS_CONFIG_FILE": "/nonexistent", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
                  "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="module")
def filled(tmp_path_factory):
    """A local store of 17 sets (two of them must share a first id character); `fleet` is the last one."""
    url = str(tmp_path_factory.mktemp("cli") / "store")
    store = Store.open(url, TEST_SETTINGS)
    ids = [store.save(small_set(40, seed=seed), lineage="fleet") for seed in range(17)]
    shared = next(c for c in "0123456789abcdef" if sum(i.startswith(c) for i in ids) > 1)
    return url, shared


class Places:
    """What a row's placeholders stand for; S3 servers and file systems are started only for rows that use them."""

    def __init__(self, request, tmp_path: Path):
        self.request, self.tmp_path = request, tmp_path

    def fixture(self, name: str):
        """The value of a pytest fixture, set up on first use."""
        return self.request.getfixturevalue(name)

    def values(self, argv: list[str]) -> dict[str, str]:
        """Every placeholder used in `argv`, resolved."""
        text = " ".join(argv)
        makers = {
            "store": lambda: self.fixture("filled")[0],
            "prefix": lambda: self.fixture("filled")[1],
            "file": self._file,
            "absent": lambda: str(self.tmp_path / "absent"),
            "empty": self._empty,
            "out": lambda: str(self.tmp_path / "out"),
            "full": lambda: str(self.fixture("tiny_fs") / "out"),
            "readonly": self._read_only,
            "bucket": lambda: make_s3_bucket(self.fixture("s3_options")),
        }
        return {name: make() for name, make in makers.items() if "{" + name + "}" in text}

    def _file(self) -> str:
        path = self.tmp_path / "a-file"
        path.write_text("not a store")
        return str(path)

    def _empty(self) -> str:
        path = self.tmp_path / "empty"
        path.mkdir()
        return str(path)

    def _read_only(self) -> str:
        mount = self.fixture("tiny_fs")
        make_read_only(mount)
        return str(mount / "out")

    def env(self, kind: str) -> dict[str, str]:
        """The environment of a row: local, or S3 with good, missing or wrong credentials, or a dead endpoint."""
        env = _base_env()
        creds = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
        if kind == "s3":
            env |= creds | {"AWS_ENDPOINT_URL": self.fixture("s3_endpoint")}
        elif kind == "s3-no-credentials":
            env |= {"AWS_ENDPOINT_URL": self.fixture("s3_endpoint")}
        elif kind == "s3-wrong-credentials":
            env |= creds | {"AWS_ENDPOINT_URL": self.fixture("s3_auth_endpoint")}
        elif kind == "s3-dead":
            env |= creds | {"AWS_ENDPOINT_URL": self.fixture("dead_endpoint")}
        elif kind.startswith("MMSTORE_"):
            name, _, value = kind.partition("=")
            env[name] = value
        return env


CASES = [
    # (id, argv, environment, a fragment the error line must contain)
    ("unknown-scheme", ["--store", "bogus://x", "ls"], "local", "scheme 'bogus'"),
    ("web-address", ["--store", "http://example.com/store", "ls"], "local", "web address"),
    ("web-address-json", ["--store", "https://example.com/store", "--json", "ls"], "local", "web address"),
    ("store-is-a-file", ["--store", "{file}", "ls"], "local", "is a file, not a store directory"),
    ("missing-store-ls", ["--store", "{absent}", "ls"], "local", "no store at"),
    ("missing-store-verify-json", ["--store", "{absent}", "verify", "--json"], "local", "no store at"),
    ("empty-directory", ["--store", "{empty}", "ls"], "local", "store"),
    ("unknown-set", ["--store", "{store}", "show", "nope"], "local", "mmstore ls"),
    ("unknown-set-json", ["--store", "{store}", "--json", "log", "nope"], "local", "mmstore ls"),
    ("ambiguous-prefix", ["--store", "{store}", "show", "{prefix}"], "local", "ambiguous"),
    ("markup-printed-literally", ["--store", "{store}", "show", "[red]x[/red]"], "local", "[red]x[/red]"),
    ("models-not-numbers", ["--store", "{store}", "export", "fleet", "--out", "{out}", "--models", "abc"], "local",
     "--models 'abc' is invalid"),
    ("models-negative", ["--store", "{store}", "export", "fleet", "--out", "{out}", "--models", "1,-2"], "local",
     "is invalid"),
    ("models-empty", ["--store", "{store}", "export", "fleet", "--out", "{out}", "--models", ""], "local",
     "is invalid"),
    ("model-out-of-range", ["--store", "{store}", "export", "fleet", "--out", "{out}", "--models", "999"], "local",
     "[0, 40)"),
    ("out-is-a-file", ["--store", "{store}", "export", "fleet", "--out", "{file}"], "local", "is an existing file"),
    ("export-disk-full", ["--store", "{store}", "export", "fleet", "--out", "{full}"], "local", "No space left"),
    ("export-read-only", ["--store", "{store}", "export", "fleet", "--out", "{readonly}"], "local", "Read-only"),
    ("probe-records-missing", ["probe", "compare", "{absent}-a.json", "{absent}-b.json"], "local", "probe record"),
    ("invalid-setting", ["--store", "{store}", "ls"], "MMSTORE_MAX_CHAIN_DEPTH=zero", "MMSTORE_MAX_CHAIN_DEPTH"),
    ("s3-no-credentials", ["--store", "s3://{bucket}/store", "ls"], "s3-no-credentials", "no usable credentials"),
    ("s3-wrong-credentials", ["--store", "s3://{bucket}/store", "ls"], "s3-wrong-credentials", "was denied"),
    ("s3-wrong-credentials-json", ["--store", "s3://{bucket}/store", "--json", "show", "fleet"],
     "s3-wrong-credentials", "was denied"),
    ("s3-dead-endpoint", ["--store", "s3://bucket/store", "ls"], "s3-dead", "cannot reach the S3 endpoint"),
    ("s3-missing-bucket", ["--store", "s3://no-such-bucket-4f1c/store", "show", "fleet"], "s3", "store"),
    ("s3-invalid-bucket-name", ["--store", "s3://Bad_Bucket!/store", "ls"], "s3", "valid bucket name"),
]


@pytest.mark.parametrize("argv, kind, expected", [pytest.param(*case[1:], id=case[0]) for case in CASES])
def test_failure_is_one_clear_line(request, tmp_path, argv, kind, expected):
    places = Places(request, tmp_path)
    values = places.values(argv)
    resolved = [arg.format(**values) if "{" in arg and "[" not in arg else arg for arg in argv]
    started = time.monotonic()
    result = run_cli(resolved, places.env(kind))
    elapsed = time.monotonic() - started
    lines = result.stderr.splitlines()
    assert result.returncode == 1, result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert expected in lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    assert "internal error" not in lines[0]
    if kind == "s3-dead":
        assert elapsed < 15
    if "absent" in values:
        assert not os.path.exists(values["absent"])  # reading never creates a store


def test_debug_shows_the_traceback(tmp_path):
    result = run_cli(["--debug", "--store", "bogus://x", "ls"], _base_env())
    assert result.returncode != 0
    assert "Traceback" in result.stderr and "StoreURLError" in result.stderr


def test_usage_errors_exit_2_without_traceback(filled):
    for argv in (["frobnicate"], ["--store", filled[0], "export", "fleet"], ["--store", filled[0], "export", "--out"]):
        result = run_cli(argv, _base_env())
        assert result.returncode == 2 and "usage:" in result.stderr, argv
        assert "Traceback" not in result.stderr


def test_reading_a_read_only_store_works(tiny_fs):
    url = str(tiny_fs / "store")
    set_id = Store.open(url, TEST_SETTINGS).save(small_set(20, seed=9), lineage="fleet")
    make_read_only(tiny_fs)
    result = run_cli(["--store", url, "verify", "--json"], _base_env())
    assert result.returncode == 0, result.stderr
    assert set_id in result.stdout
