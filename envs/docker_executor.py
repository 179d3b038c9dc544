"""Replay in a pinned image: the recorded environment, run by digest, offline, with the store read-only.

The executor writes the task and jobs as plain files into a work directory, runs
`python -m envs.replay_worker` in a container of the image and reads the trained rows back. The
provenance approach then checks them bit for bit, as it checks every executor's results.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import docker
import numpy as np
import requests
from docker.errors import APIError, DockerException, ImageNotFound, NotFound

from envs.compare import compare
from envs.fingerprint import NUMERIC_ENV_VARS, Fingerprint, capture
from envs.replay_worker import read_result, write_work
from mmstore.errors import EnvironmentMismatchError, MMStoreError, NotFoundError
from mmstore.replay import ReplayJob, ReplayTask

__all__ = [
    "DockerError", "EngineUnreachableError", "ImageNotFoundError", "ContainerFailedError", "ContainerTimeoutError",
    "DockerExecutor", "connect", "ensure_image", "run_container", "digest_of", "WORK_MOUNT",
]

WORK_MOUNT = "/replay"
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
# Fields the container shares with the host whatever its image: the processor and its architecture.
_HOST_FIELDS = re.compile(r"^(cpu\.|machine$)")


class DockerError(MMStoreError):
    """Replaying in a container failed."""


class EngineUnreachableError(DockerError, ConnectionError):
    """No Docker engine answers at the configured address."""


class ImageNotFoundError(DockerError, NotFoundError):
    """The pinned image is neither in the engine nor in its registry."""


class ContainerFailedError(DockerError):
    """The replay container exited with an error."""


class ContainerTimeoutError(DockerError, TimeoutError):
    """The replay container ran longer than its time limit and was stopped."""


def digest_of(reference: str) -> str:
    """The `sha256:…` digest an image reference pins; `repo@sha256:…` or a bare digest."""
    found = _DIGEST.search(reference)
    if not found:
        raise DockerError(f"{reference!r} does not pin an image by digest; use repo@sha256:<64 hex digits>")
    return found.group(0)


def connect(base_url: str | None = None, timeout: float = 30) -> docker.DockerClient:
    """A client of the engine at `base_url` (default: $DOCKER_HOST or the standard socket) that answered a ping."""
    try:
        client = docker.DockerClient(base_url=base_url, timeout=timeout) if base_url else docker.from_env(timeout=timeout)
        client.ping()
    except (DockerException, requests.exceptions.RequestException) as exc:
        where = base_url or "$DOCKER_HOST or unix:///var/run/docker.sock"
        raise EngineUnreachableError(
            f"no Docker engine answers at {where} ({exc}); start dockerd (see envs/engine.py for safe flags) "
            "and pass its address, or replay locally with executor='local'"
        ) from exc
    return client


def ensure_image(client: docker.DockerClient, reference: str) -> None:
    """Make the image `reference` (repo@sha256:…) present in the engine, pulling it from its registry if needed."""
    try:
        client.images.get(reference)
        return
    except ImageNotFound:
        pass
    try:
        client.images.pull(reference)
    except (APIError, requests.exceptions.RequestException) as exc:
        raise ImageNotFoundError(
            f"the image {reference} is not in the engine and its registry does not serve it ({exc}); "
            "build it with `make replay_image` (or load it with `docker load`) and push it to that registry"
        ) from exc


def _limits(cpus: float, memory: str) -> dict:
    return {"nano_cpus": int(cpus * 1e9), "mem_limit": memory, "memswap_limit": memory, "pids_limit": 4096}


def run_container(
    client: docker.DockerClient, image: str, command: Sequence[str], volumes: Mapping[str, dict],
    environment: Mapping[str, str], timeout: float, cpus: float = 2, memory: str = "4g",
) -> str:
    """Run `command` in `image` without network, wait at most `timeout` seconds, return its log; raise on failure."""
    container = client.containers.create(
        image, list(command), volumes=dict(volumes), environment={"MMSTORE_IMAGE_DIGEST": image, **environment},
        network_mode="none", working_dir=WORK_MOUNT, **_limits(cpus, memory),
    )
    try:
        container.start()
        status = _wait(container, timeout)
        log = container.logs().decode(errors="replace")
        if status != 0:
            tail = "\n".join(log.splitlines()[-25:])
            raise ContainerFailedError(f"the replay container exited with status {status}; its log ends with:\n{tail}")
        return log
    finally:
        _remove(container)


def _wait(container, timeout: float) -> int:
    try:
        return int(container.wait(timeout=timeout)["StatusCode"])
    except requests.exceptions.RequestException as exc:
        # The wait's HTTP read timed out: the container still runs.
        container.kill()
        raise ContainerTimeoutError(
            f"the replay container ran longer than {timeout:g} s and was stopped; "
            "pass a larger timeout= to DockerExecutor, or replay fewer models at once"
        ) from exc


def _remove(container) -> None:
    try:
        container.remove(force=True)
    except NotFound:
        pass


class DockerExecutor:
    """Replays in the image `image` (repo@sha256:…) on the engine at `docker_host`, without network."""

    def __init__(
        self, image: str, docker_host: str | None = None, read_only: Sequence[str | Path] = (),
        workers: int = 1, cpus: float = 2, memory: str = "4g", timeout: float = 3600, force: bool = False,
    ):
        digest_of(image)
        self.image, self.docker_host, self.workers = image, docker_host, workers
        self.read_only = [Path(p).resolve() for p in read_only]
        self.cpus, self.memory, self.timeout, self.force = cpus, memory, timeout, force
        self._client: docker.DockerClient | None = None
        self._env: dict[str, str] = {}

    def client(self) -> docker.DockerClient:
        """The engine's client, connected on first use."""
        if self._client is None:
            self._client = connect(self.docker_host)
        return self._client

    def check(self, environment: bytes) -> None:
        """Raise unless the recorded environment is this image on a compatible processor; fetch the image."""
        recorded = Fingerprint.from_json(environment)
        if not self.force:
            _check_image(recorded, self.image)
            _check_host(recorded)
        # The numeric variables the training ran with are set again in the container.
        self._env = {name: value for name, value in recorded.env.items() if value is not None and name in NUMERIC_ENV_VARS}
        ensure_image(self.client(), self.image)

    def replay(self, task: ReplayTask, jobs: Sequence[ReplayJob]) -> np.ndarray:
        """Train the jobs in a container of the image and return their rows in order."""
        with tempfile.TemporaryDirectory(prefix="mmstore-replay-") as tmp:
            workdir = Path(tmp)
            write_work(workdir, task, jobs)
            command = ["python", "-m", "envs.replay_worker", WORK_MOUNT, str(self.workers)]
            run_container(self.client(), self.image, command, self._volumes(workdir), self._env,
                          self.timeout, self.cpus, self.memory)
            return read_result(workdir, task, len(jobs))

    def _volumes(self, workdir: Path) -> dict[str, dict]:
        volumes = {str(path): {"bind": str(path), "mode": "ro"} for path in self.read_only}
        volumes[str(workdir)] = {"bind": WORK_MOUNT, "mode": "ro"}
        volumes[str(workdir / "out")] = {"bind": f"{WORK_MOUNT}/out", "mode": "rw"}
        return volumes


def _check_image(recorded: Fingerprint, image: str) -> None:
    if recorded.image_digest is None:
        raise EnvironmentMismatchError(
            "the set was not trained in a pinned image, so no image is known to reproduce it; replay it with "
            "executor='local' in its recorded environment, or pass DockerExecutor(force=True) to try this image"
        )
    if digest_of(recorded.image_digest) != digest_of(image):
        raise EnvironmentMismatchError(
            f"the set was trained in the image {recorded.image_digest}, not in {image}; "
            "replay with that image, or pass DockerExecutor(force=True) to try this one anyway"
        )


def _check_host(recorded: Fingerprint) -> None:
    blocking = [d for d in compare(recorded, capture()).blocking if _HOST_FIELDS.match(d.field)]
    if blocking:
        fields = ", ".join(d.field for d in blocking)
        raise EnvironmentMismatchError(
            f"this machine's processor differs from the recorded one in {fields}, which the image cannot pin; "
            "replay on a machine like the recorded one, or pass DockerExecutor(force=True) to try anyway"
        )
