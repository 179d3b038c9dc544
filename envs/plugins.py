"""The replay executors this package registers (entry points `mmstore.executors`): each builds one for a set."""

from __future__ import annotations

from envs.choice import choose
from mmstore.replay import Executor
from mmstore.store import Store

__all__ = ["local", "docker", "auto"]


def local(store: Store, set_id: str) -> Executor:
    """Worker processes on this machine, after checking its environment against the recorded one."""
    return choose("local", store, set_id)


def docker(store: Store, set_id: str) -> Executor:
    """A container of the pinned image the set was trained in, without network."""
    return choose("docker", store, set_id)


def auto(store: Store, set_id: str) -> Executor:
    """Here when this environment is compatible with the recorded one, else the recorded image."""
    return choose("auto", store, set_id)
