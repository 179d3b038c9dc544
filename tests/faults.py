"""A backend wrapper that forces one exact interleaving of two writers.

A wrapper, because the interleavings these tests need cannot be forced with real concurrency
reliably; every operation still goes to the real backend.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["HookedBackend", "before"]


class HookedBackend:
    """A real backend whose `method` runs `hook(real, *args, **kwargs)` instead, once, on its n-th call."""

    def __init__(self, backend, method: str, n: int, hook: Callable[..., Any]):
        self._backend, self._method, self._n, self._hook = backend, method, n, hook
        self.url = backend.url

    def __getattr__(self, name):
        real = getattr(self._backend, name)
        if name != self._method:
            return real

        def call(*args, **kwargs):
            """The real call, or the hook on the n-th one."""
            self._n -= 1
            if self._n == 0:
                return self._hook(real, *args, **kwargs)
            return real(*args, **kwargs)

        return call


def before(action: Callable[[], Any]) -> Callable[..., Any]:
    """A hook that runs `action`, then the real call."""
    def hook(real, *args, **kwargs):
        action()
        return real(*args, **kwargs)

    return hook
