"""Shared fixtures: stores on every backend, a real S3 endpoint (moto's server) on 127.0.0.1."""

from __future__ import annotations

import os
import socket
import uuid

import pytest
from hypothesis import settings as hypothesis_settings

from mmstore import Settings, Store

# Hypothesis explores the same examples on every run: failures reproduce, CI is stable.
hypothesis_settings.register_profile("mmstore", derandomize=True, deadline=None)
hypothesis_settings.load_profile("mmstore")

TEST_SETTINGS = Settings(trusted_modules=("tests",), dataset_roots=("memory://provenance-datasets",))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_endpoint():
    """A moto S3 server on 127.0.0.1, started for the session and stopped after it."""
    from moto.server import ThreadedMotoServer

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture(scope="session")
def s3_options(s3_endpoint):
    """fsspec storage options for the test S3 endpoint."""
    return {"key": "testing", "secret": "testing", "client_kwargs": {"endpoint_url": s3_endpoint}}


def make_s3_bucket(s3_options) -> str:
    """A fresh bucket; returns its name."""
    import s3fs

    fs = s3fs.S3FileSystem(**s3_options)
    bucket = f"test-{uuid.uuid4().hex[:12]}"
    fs.mkdir(bucket)
    return bucket


@pytest.fixture(params=["memory", "local", "s3"])
def store(request, tmp_path):
    """An empty store on each backend."""
    if request.param == "memory":
        return Store.open(f"memory://{uuid.uuid4().hex}", TEST_SETTINGS)
    if request.param == "local":
        return Store.open(str(tmp_path / "store"), TEST_SETTINGS)
    options = request.getfixturevalue("s3_options")
    return Store.open(f"s3://{make_s3_bucket(options)}/store", TEST_SETTINGS, **options)


@pytest.fixture
def local_store(tmp_path):
    """An empty store in a local directory."""
    return Store.open(str(tmp_path / "store"), TEST_SETTINGS)
