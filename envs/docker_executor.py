"""Replay in a pinned image: the recorded environment, run by digest, offline, with the store read-only.

Only images of the repositories `Settings.replay_images` names are run: a store is untrusted input,
and the image its fingerprint records is chosen by whoever wrote it. The executor writes the task
and jobs as plain files into a work directory, runs `python -m envs.replay_worker` in a container
of the image (unprivileged user, no capabilities, read-only root file system, no network) and reads
the trained rows back. The provenance approach then checks them bit for bit, as it checks every
executor's results.
"""

from __future__ import annotations

import os
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
from mmstore.settings import Settings

__all__ = [
    "DockerError", "EngineUnreachableError", "ImageNotFoundError", "ContainerFailedError", "ContainerTimeoutError",
    "UntrustedImageError", "DockerExecutor", "connect", "ensure_image", "run_container", "digest_of", "allowed_image",
    "WORK_MOUNT", "CONTAINER_USER",
]

WORK_MOUNT = "/replay"
# nobody:nogroup; the image need not know the user.
CONTAINER_USER = (65534, 65534)
_REFERENCE = re.compile(r"\A(?P<repo>[a-z0-9.:/_-]+)@sha256:(?P<hex>[0-9a-f]{64})\Z")
# What every replay container runs with, whatever its image asks for.
_CONFINEMENT = {
    "user": f"{CONTAINER_USER[0]}:{CONTAINER_USER[1]}", "cap_drop": ["ALL"], "security_opt": ["no-new-privileges"],
    "read_only": True, "tmpfs": {"/tmp": "rw,noexec,nosuid,nodev,size=512m"}, "network_mode": "none",
}
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


class UntrustedImageError(DockerError):
    """An image reference is malformed or names a repository outside `Settings.replay_images`; nothing was run."""


def _parse(reference: str) -> re.Match:
    found = _REFERENCE.fullmatch(reference)
    if not found:
        raise UntrustedImageError(
            f"{reference[:200]!r} does not pin an image by digest; "
            "name it as registry/repository@sha256:<64 lowercase hex digits>"
        )
    return found


def digest_of(reference: str) -> str:
    """The `sha256:…` digest a `registry/repository@sha256:…` reference pins."""
    return "sha256:" + _parse(reference)["hex"]


def allowed_image(reference: str, allowed: Sequence[str]) -> str:
    """`reference`, once it pins an image by digest in one of the `allowed` registry/repository names."""
    repository = _parse(reference)["repo"]
    if not allowed:
        raise UntrustedImageError(
            f"replay in the recorded image {reference} is off: no image repository is trusted; set "
            "MMSTORE_REPLAY_IMAGES to the registry/repository names you trust (e.g. HOST:PORT/mmstore-replay)"
        )
    if repository not in allowed:
        raise UntrustedImageError(
            f"the image {reference} is not from a trusted repository {list(allowed)}; "
            f"add {repository} to MMSTORE_REPLAY_IMAGES if you trust it, or replay with executor='local'"
        )
    return reference


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
    """Run `command` in `image`, confined and without network, wait at most `timeout` seconds, return its log.

    The command's first word is the entrypoint: an image's own entrypoint never wraps it.
    """
    container = client.containers.create(
        image, list(command[1:]), entrypoint=list(command[:1]), volumes=dict(volumes),
        environment={"MMSTORE_IMAGE_DIGEST": image, "HOME": "/tmp", **environment}, working_dir=WORK_MOUNT,
        **_CONFINEMENT, **_limits(cpus, memory),
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
    """Replays in the image `image` (repo@sha256:…, of a repository `settings.replay_images` trusts) without network."""

    def __init__(
        self, image: str, docker_host: str | None = None, read_only: Sequence[str | Path] = (),
        workers: int = 1, cpus: float = 2, memory: str = "4g", timeout: float = 3600, force: bool = False,
        settings: Settings | None = None,
    ):
        # Checked even when forced: `force` accepts another environment, never an untrusted image.
        self.image = allowed_image(image, (settings or Settings()).replay_images)
        self.docker_host, self.workers = docker_host, workers
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
            _share(workdir)
            command = ["python", "-m", "envs.replay_worker", WORK_MOUNT, str(self.workers)]
            run_container(self.client(), self.image, command, self._volumes(workdir), self._env,
                          self.timeout, self.cpus, self.memory)
            return read_result(workdir, task, len(jobs))

    def _volumes(self, workdir: Path) -> dict[str, dict]:
        volumes = {str(path): {"bind": str(path), "mode": "ro"} for path in self.read_only}
        volumes[str(workdir)] = {"bind": WORK_MOUNT, "mode": "ro"}
        volumes[str(workdir / "out")] = {"bind": f"{WORK_MOUNT}/out", "mode": "rw"}
        return volumes


def _share(workdir: Path) -> None:
    """Let the container's unprivileged user read the work files and write only the output directory."""
    workdir.chmod(0o755)
    for path in workdir.iterdir():
        path.chmod(0o644 if path.is_file() else 0o755)
    out = workdir / "out"
    try:
        os.chown(out, *CONTAINER_USER)
    except PermissionError:
        # Without the right to give it away, the directory is opened to everyone instead.
        out.chmod(0o777)


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
