"""A real Docker engine, a local registry and the replay image, once per test session.

Missing programs are installed from Debian (`docker.io`, `docker-registry`, `debootstrap`); dockerd
runs with its state under this session's temporary directory and without touching the firewall.
Both daemons are stopped by pid when the session ends.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from envs.docker_executor import connect
from envs.engine import APT_PACKAGES, EngineStartError, start_dockerd, start_registry
from envs.image import build_image, image_repository
from mmstore import Settings

TIMINGS: dict[str, float] = {}


def _install_missing() -> None:
    missing = [package for program, package in APT_PACKAGES.items()
               if not (shutil.which(program) or shutil.which(program, path="/usr/sbin:/sbin"))]
    if not missing:
        return
    lock = ["-o", "DPkg::Lock::Timeout=600"]
    for command in (["apt-get", *lock, "update"], ["apt-get", *lock, "install", "-y", "--no-install-recommends", *missing]):
        done = subprocess.run(command, capture_output=True, text=True, env={"DEBIAN_FRONTEND": "noninteractive",
                                                                            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
        if done.returncode:
            pytest.fail(f"`{' '.join(command)}` failed; install {missing} by hand and run again:\n{done.stderr[-2000:]}")


@pytest.fixture(scope="session")
def engine_root():
    """A short directory for the daemons' sockets and state (unix socket paths hold ~100 bytes)."""
    root = Path(tempfile.mkdtemp(prefix="mmd-", dir="/tmp"))
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def dockerd(engine_root):
    """A private dockerd for this session."""
    _install_missing()
    try:
        daemon = start_dockerd(engine_root / "d")
    except EngineStartError as exc:
        pytest.skip(
            f"DOCKER TESTS SKIPPED: no Docker engine can start on this machine, so replay in pinned images is "
            f"NOT tested here. dockerd said: {exc}"
        )
    yield daemon
    daemon.stop()


@pytest.fixture(scope="session")
def registry(engine_root, dockerd):
    """A local registry on 127.0.0.1; its address is `127.0.0.1:PORT`."""
    daemon = start_registry(engine_root / "r")
    yield daemon.address
    daemon.stop()


@pytest.fixture(scope="session")
def docker_client(dockerd):
    """A client of the session's engine."""
    client = connect(dockerd.address)
    yield client
    client.close()


@pytest.fixture(scope="session")
def replay_image(docker_client, registry) -> str:
    """The replay image, built from local material and pushed: its `repo@sha256:…` reference."""
    start = time.perf_counter()
    reference = build_image(docker_client, registry, mirror=os.environ.get("MMSTORE_DEBIAN_MIRROR") or None)
    TIMINGS["image build"] = time.perf_counter() - start
    return reference


@pytest.fixture(scope="session")
def replay_settings(registry) -> Settings:
    """Settings that trust the test modules and the replay image's repository in the session's registry."""
    return Settings(trusted_modules=("tests",), replay_images=(image_repository(registry),))
