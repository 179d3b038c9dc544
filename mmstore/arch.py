"""Architectures as data: an import path, JSON kwargs and a digest of the factory's source."""

from __future__ import annotations

import importlib
import sys
import warnings
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, JsonValue

from .digest import digest_bytes
from .errors import ArchitectureError, UntrustedModuleError

__all__ = ["ArchSpec", "ArchitectureChangedWarning", "is_trusted", "source_digest", "import_trusted", "build_module"]


class ArchitectureChangedWarning(UserWarning):
    """The factory's source differs from the one recorded when the set was saved."""


class ArchSpec(BaseModel):
    """How to build one (untrained) model: `factory` is `"package.module:Callable"`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    factory: str
    kwargs: dict[str, JsonValue] = {}
    source_digest: str = ""

    @classmethod
    def of(cls, obj: Any, **kwargs: JsonValue) -> "ArchSpec":
        """The spec of a module instance, a module class or any importable factory."""
        target = obj if callable(obj) and not isinstance(obj, torch.nn.Module) else type(obj)
        module, qualname = target.__module__, target.__qualname__
        if "<locals>" in qualname or module == "__main__":
            raise ArchitectureError(
                f"{qualname} in {module} cannot be imported by a later reader; define it at module "
                "level of an importable package, or pass arch=ArchSpec(factory=...) explicitly"
            )
        return cls(factory=f"{module}:{qualname}", kwargs=kwargs, source_digest=source_digest(module))

    @property
    def module_name(self) -> str:
        """The dotted module that holds the factory."""
        return self.factory.partition(":")[0]


def source_digest(module_name: str) -> str:
    """The digest of an imported module's source file ("" when it has none)."""
    path = getattr(sys.modules.get(module_name), "__file__", None)
    if not path:
        return ""
    with open(path, "rb") as f:
        return digest_bytes(f.read())


def is_trusted(module_name: str, prefixes: tuple[str, ...]) -> bool:
    """Whether `module_name` is one of `prefixes` or lies below one of them."""
    return any(module_name == p or module_name.startswith(p + ".") for p in prefixes)


def import_trusted(path: str, prefixes: tuple[str, ...] | None, what: str = "architecture factory") -> Any:
    """Import `"package.module:Name"` if its module lies under `prefixes` (`None` trusts everything)."""
    module_name, _, qualname = path.partition(":")
    if not module_name or not qualname:
        raise ArchitectureError(f"{what} {path!r} is not of the form 'package.module:Callable'")
    if prefixes is not None and not is_trusted(module_name, prefixes):
        raise UntrustedModuleError(
            f"the {what} {path!r} is outside the trusted modules {list(prefixes)}; "
            f"it was not imported. If you trust it, add its package to MMSTORE_TRUSTED_MODULES"
        )
    try:
        target: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as exc:
        raise ArchitectureError(f"cannot import {what} {path!r}: {exc}; install the package that defines it") from exc
    return target


def _resolve(spec: ArchSpec, prefixes: tuple[str, ...] | None) -> Any:
    target = import_trusted(spec.factory, prefixes)
    if spec.source_digest and source_digest(spec.module_name) != spec.source_digest:
        warnings.warn(
            f"the source of {spec.module_name} changed since the set was saved; the layout is checked, "
            "but behaviour may differ",
            ArchitectureChangedWarning,
            stacklevel=3,
        )
    return target


def build_module(spec: ArchSpec, prefixes: tuple[str, ...] | None) -> torch.nn.Module:
    """Import the factory (if trusted; `prefixes=None` trusts everything) and build one module."""
    factory = _resolve(spec, prefixes)
    module = factory(**spec.kwargs)
    if not isinstance(module, torch.nn.Module):
        raise ArchitectureError(f"factory {spec.factory!r} returned {type(module).__name__}, not a torch.nn.Module")
    return module
