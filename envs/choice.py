"""Which executor replays a set: from its recorded environment, or the one the user asks for.

The recorded image comes from the store, so it is replayed in only if `Settings.replay_images`
trusts its repository.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Literal

from envs.compare import compare
from envs.docker_executor import DockerExecutor
from envs.executors import LocalExecutor
from envs.fingerprint import Fingerprint, capture
from mmstore.errors import EnvironmentMismatchError
from mmstore.replay import Executor, InProcessExecutor
from mmstore.store import Store

__all__ = ["recorded_environment", "auto_choice", "choose"]


def recorded_environment(store: Store, set_id: str) -> Fingerprint | None:
    """The fingerprint of the newest replayed set in the chain of `set_id`; None if nothing there replays."""
    for info in store.log(set_id):
        manifest = store.manifest(info.id)
        store.arch_document(manifest)  # checks the document sizes the manifest records before any is read
        blob = manifest.blobs.get("environment")
        if blob is not None:
            return Fingerprint.from_json(store.blobs.get(blob).tobytes())
    return None


def auto_choice(recorded: Fingerprint | None, current: Fingerprint | None = None) -> Literal["local", "docker"]:
    """Local when this environment is compatible with the recorded one, Docker when a pinned image is recorded."""
    if recorded is None or compare(recorded, current or capture()).compatible:
        return "local"
    return "docker" if recorded.image_digest else "local"


def choose(
    name: str, store: Store, set_id: str, docker_host: str | None = None, read_only: Sequence[str] = (),
) -> Executor:
    """The executor `name` for recovering `set_id`; "auto" decides by the recorded fingerprint."""
    recorded = recorded_environment(store, set_id)
    if name == "auto":
        name = auto_choice(recorded)
    if name == "in-process":
        return InProcessExecutor()
    if name == "local":
        return LocalExecutor()
    if recorded is None or not recorded.image_digest:
        raise EnvironmentMismatchError(
            f"set {set_id[:12]} was not trained in a pinned image, so there is no image to replay it in; "
            "recover it with the local executor"
        )
    mounts = [store.url, *read_only] if os.path.isdir(store.url) else list(read_only)
    return DockerExecutor(recorded.image_digest, docker_host=docker_host, read_only=mounts, settings=store.settings)
