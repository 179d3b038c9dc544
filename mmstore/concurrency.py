"""One pool of threads for requests: object stores answer many small requests in flight far faster than one by one."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from typing import TypeVar

__all__ = ["io_pool", "each"]

T = TypeVar("T")
R = TypeVar("R")


@lru_cache(maxsize=1)
def io_pool() -> ThreadPoolExecutor:
    """The shared pool; its threads only wait on the network or disk, so eight cost little on two cores."""
    return ThreadPoolExecutor(max_workers=8, thread_name_prefix="mmstore-io")


def each(function: Callable[[T], R], items: Iterable[T]) -> list[R]:
    """`function` applied to every item, several requests in flight, results in order; the first failure is raised."""
    items = list(items)
    if len(items) <= 1:
        return [function(item) for item in items]
    return list(io_pool().map(function, items))
