"""Forged bundles: each is quarantined with a reason and changes nothing in the store.

The attacker can write any object into any device's inbox prefix and names it by its own digest,
so every forgery below is re-framed and re-hashed: only parsing and the checks against the
store stop it. The store's files are compared byte for byte before and after each ingest.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mmstore.bundle import MAGIC
from mmstore.device import pending_key
from mmstore.digest import digest_bytes
from mmstore.ingest import pending
from tests import forge
from tests.test_devices import Fleet, changed

_LENGTH = struct.Struct(">I")


def split(data: bytes) -> tuple[dict, bytes]:
    """A bundle's header (as JSON data) and everything after it."""
    (length,) = _LENGTH.unpack_from(data, len(MAGIC))
    start = len(MAGIC) + _LENGTH.size
    return json.loads(data[start : start + length]), data[start + length :]


def frame(header: dict | bytes, rest: bytes) -> bytes:
    """A bundle from a header and a body, framed as the format says."""
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    return MAGIC + _LENGTH.pack(len(text)) + text + rest


def with_header(**changes):
    return lambda data, fleet: frame({**split(data)[0], **changes}, split(data)[1])


def bomb_segment(data: bytes, fleet) -> bytes:
    """The first tensor's segment replaced by a 1 GiB zstd bomb, the sizes adjusted to match."""
    header, rest = split(data)
    mask_bytes = (header["n_models"] * len(header["segments"]) + 7) // 8
    bomb = forge.zstd_bomb()
    segments = [len(bomb), *header["segments"][1:]]
    body = rest[:mask_bytes] + bomb + rest[mask_bytes + header["segments"][0] :]
    return frame({**header, "segments": segments}, body)


def other_base(data: bytes, fleet) -> bytes:
    """A bundle made against models this device never held."""
    header, rest = split(data)
    return frame({**header, "base_content": digest_bytes(b"never held")}, rest)


FORGERIES = {
    "another-device": with_header(device="car-1"),
    "base-never-held": other_base,
    "content-lies": with_header(content=digest_bytes(b"something else")),
    "other-architecture": with_header(arch=digest_bytes(b"other arch")),
    "model-count": with_header(n_models=1 << 24),
    "row-size": with_header(row_nbytes=1 << 32),
    "negative-segment": lambda d, f: frame({**split(d)[0], "segments": [-1, *split(d)[0]["segments"][1:]]}, split(d)[1]),
    "segments-overrun": lambda d, f: frame({**split(d)[0], "segments": [1 << 40] * len(split(d)[0]["segments"])}, split(d)[1]),
    "unknown-codec": with_header(codec="pickle"),
    "codec-path": with_header(codec="../../etc/passwd"),
    "full-leaves-out": with_header(kind="full", codec="group-zstd"),
    "extra-field": with_header(exec="touch canary"),
    "newer-format": with_header(schema_version=2),
    "record-on-a-delta": with_header(record_bytes=10, datasets=[5]),
    "provenance-with-segments": with_header(kind="provenance", record_bytes=10),
    "device-path": with_header(device="../car-0"),
    "bad-time": with_header(device_time="yesterday"),
    "deep-json": lambda d, f: frame(forge.deep_json(100_000), split(d)[1]),
    "header-claims-more": lambda d, f: MAGIC + _LENGTH.pack(1 << 31) + d[len(MAGIC) + _LENGTH.size :],
    "not-a-bundle": lambda d, f: b"PK\x03\x04" + d[4:],
    "empty": lambda d, f: b"",
    "bomb": bomb_segment,
    "trailing-bytes": lambda d, f: d + bytes(4 << 20),
}

# What each forgery's quarantine note must say: the check that caught it, not merely that one did.
REASONS = {
    "another-device": "names device 'car-1' but arrived in the inbox of 'car-0'",
    "base-never-held": "starts from models the store never held for this device",
    "content-lies": "decodes to other models than it claims",
    "other-architecture": "holds models of another architecture or count",
    "model-count": "segments do not add up to its size",
    "row-size": "was made for another architecture than the lineage's",
    "negative-segment": "segments do not add up to its size",
    "segments-overrun": "segments do not add up to its size",
    "unknown-codec": "unknown codec 'pickle'",
    "codec-path": "unknown codec '../../etc/passwd'",
    "full-leaves-out": "is a full bundle that leaves tensors out",
    "extra-field": "is invalid at exec: Extra inputs are not permitted",
    "newer-format": "is invalid at schema_version",
    "record-on-a-delta": "is a delta bundle that carries a training record",
    "provenance-with-segments": "is a provenance bundle with tensor segments",
    "device-path": "is invalid at device",
    "bad-time": "is invalid at device_time",
    "deep-json": "is not valid JSON",
    "header-claims-more": "claims a header of 2147483648 bytes, more than it holds",
    "not-a-bundle": "is not an mmstore bundle",
    "empty": "is not an mmstore bundle",
    "bomb": "decodes to more bytes",
    "trailing-bytes": "segments do not add up to its size",
}


@pytest.fixture
def fleet(tmp_path) -> Fleet:
    return Fleet(str(tmp_path / "store"), str(tmp_path / "inbox"))


def _valid_bundle(fleet: Fleet) -> bytes:
    device = fleet.device("car-0")
    push = device.push(changed(device.base, 1, seed=21))
    data = fleet.inbox.get(push.key)
    fleet.inbox.delete(push.key)
    return data


@pytest.mark.parametrize("name", sorted(FORGERIES))
def test_a_forged_bundle_is_quarantined_and_changes_nothing(fleet, tmp_path, name):
    forged = FORGERIES[name](_valid_bundle(fleet), fleet)
    key = pending_key("car-0", digest_bytes(forged))
    fleet.inbox.put(key, forged, exclusive=True)
    before = forge.files(tmp_path / "store")
    outcome, = fleet.ingest()
    assert outcome.status == "quarantined", outcome
    assert forge.files(tmp_path / "store") == before
    reason = json.loads(fleet.inbox.get(key.replace("pending/", "quarantine/").replace(".mmb", ".json")))["reason"]
    assert reason == outcome.reason and "\n" not in reason and len(reason) < 400
    assert REASONS[name] in reason
    assert fleet.inbox.exists(key.replace("pending/", "quarantine/")) and pending(fleet.inbox) == {}


def test_every_forgery_has_its_expected_reason():
    assert sorted(REASONS) == sorted(FORGERIES)


def test_a_bundle_larger_than_the_device_could_send_is_quarantined_unread(fleet, tmp_path):
    data = _valid_bundle(fleet)
    key = pending_key("car-0", digest_bytes(data))
    fleet.inbox.put(key, data, exclusive=True)
    # A sparse file past the limit (twice the device's rows, a header and the datasets' allowance):
    # only its listed size can stop it, since reading it would already allocate what it claims.
    os.truncate(tmp_path / "inbox" / key, 80 << 20)
    before = forge.files(tmp_path / "store")
    outcome, = fleet.ingest()
    assert outcome.status == "quarantined" and "is larger than any bundle of this device's 4 models can be" in outcome.reason
    assert forge.files(tmp_path / "store") == before


def test_the_valid_bundle_the_forgeries_start_from_is_accepted(fleet):
    data = _valid_bundle(fleet)
    fleet.inbox.put(pending_key("car-0", digest_bytes(data)), data, exclusive=True)
    assert [o.status for o in fleet.ingest()] == ["committed"]


def test_objects_outside_the_pending_layout_are_not_bundles(fleet, tmp_path):
    data = _valid_bundle(fleet)
    for key in ("pending/car-0/short.mmb", "pending/car-0/x/" + digest_bytes(data) + ".mmb", "car-0/" + digest_bytes(data) + ".mmb",
                "pending/.." + digest_bytes(data) + ".mmb", f"pending/-car/{digest_bytes(data)}.mmb"):
        fleet.inbox.put(key, data, exclusive=True)
    assert pending(fleet.inbox) == {} and fleet.ingest() == []


LIMIT_SCRIPT = r"""
import json, resource, sys
resource.setrlimit(resource.RLIMIT_AS, (int(sys.argv[1]), int(sys.argv[1])))
from mmstore import MMStoreError, Settings, Store
from mmstore.backend import open_backend
from mmstore.ingest import ingest, pending
inbox = open_backend(sys.argv[3])
try:
    outcomes = ingest(Store.open(sys.argv[2], Settings(trusted_modules=("tests",))), inbox, pending(inbox))
    print(json.dumps([[o.status, o.reason] for o in outcomes]))
except BaseException as exc:
    print(json.dumps([["crashed", type(exc).__name__ + ": " + str(exc)[:200]]]))
"""


def test_a_bomb_is_refused_under_an_address_space_limit_and_runs_no_command(fleet, tmp_path):
    canary = tmp_path / "canary"
    forged = bomb_segment(_valid_bundle(fleet), fleet)
    fleet.inbox.put(pending_key("car-0", digest_bytes(forged)), forged, exclusive=True)
    evil = FORGERIES["extra-field"](_valid_bundle(fleet), fleet).replace(b"touch canary", f"touch {canary}".encode())
    fleet.inbox.put(pending_key("car-0", digest_bytes(evil)), evil, exclusive=True)
    run = subprocess.run([sys.executable, "-c", LIMIT_SCRIPT, str(3 << 29), fleet.store_url, fleet.inbox_url],
                         capture_output=True, text=True, timeout=120, cwd=Path(__file__).parent.parent)
    outcomes = json.loads(run.stdout.strip().splitlines()[-1])
    assert [status for status, _ in outcomes] == ["quarantined", "quarantined"], outcomes
    assert any("decodes to more" in reason or "bytes instead of" in reason for _, reason in outcomes)
    assert not canary.exists()
    assert np.array_equal(fleet.open().recover("car-0").data, fleet.fleet.data[:4])
