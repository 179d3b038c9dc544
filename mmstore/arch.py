"""Architectures as data: an import path, bounded JSON kwargs and a digest of the factory's source.

A stored path names one attribute of a trusted module, looked up in the module's own namespace.
Only two kinds of object are ever called through it: `torch.nn.Module` subclasses, and functions
their package registered with `register_factory` or `register_trainer`. Anything else (a module,
a builtin, `os.system`) is refused before it is called.
"""

from __future__ import annotations

import importlib
import json
import math
import re
import sys
import warnings
from collections.abc import Callable
from contextlib import nullcontext
from typing import Annotated, Any, TypeVar

import torch
from pydantic import BaseModel, ConfigDict, Field, JsonValue, StringConstraints, ValidationError, field_validator

from .digest import digest_bytes
from .errors import ArchitectureError, UntrustedModuleError

__all__ = [
    "ArchSpec",
    "ArchitectureChangedWarning",
    "FACTORY_KIND",
    "TRAINER_KIND",
    "GROUP_TRAINER_KIND",
    "register_factory",
    "register_trainer",
    "register_group_trainer",
    "is_trusted",
    "source_digest",
    "import_trusted",
    "resolve_factory",
    "build_module",
]

FACTORY_KIND = "architecture factory"
TRAINER_KIND = "training function"
GROUP_TRAINER_KIND = "group training function"
IMPORT_PATH = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$"
_IMPORT_PATH = re.compile(IMPORT_PATH)
MAX_PATH = 256
MAX_KWARGS_BYTES = 64 << 10
MAX_KWARGS_DEPTH = 8
MAX_KWARGS_STRING = 4 << 10

F = TypeVar("F", bound=Callable[..., Any])

# kind -> "module:name" -> the registered function; a stored path is called only if it resolves to it.
_REGISTERED: dict[str, dict[str, Callable[..., Any]]] = {FACTORY_KIND: {}, TRAINER_KIND: {}, GROUP_TRAINER_KIND: {}}
_DECORATORS = {FACTORY_KIND: "@mmstore.register_factory", TRAINER_KIND: "@mmstore.register_trainer",
               GROUP_TRAINER_KIND: "@mmstore.register_group_trainer"}


class ArchitectureChangedWarning(UserWarning):
    """The factory's source differs from the one recorded when the set was saved."""


def _register(kind: str, fn: F) -> F:
    path = f"{getattr(fn, '__module__', '')}:{getattr(fn, '__qualname__', '')}"
    if not callable(fn) or isinstance(fn, type) or len(path) > MAX_PATH or not _matches(path):
        raise ArchitectureError(f"{path} cannot be registered as a {kind}; register a function defined at module level")
    _REGISTERED[kind][path] = fn
    return fn


def register_factory(fn: F) -> F:
    """Let stored architectures name `fn` (a module-level function returning a `torch.nn.Module`)."""
    return _register(FACTORY_KIND, fn)


def register_trainer(fn: F) -> F:
    """Let provenance records name `fn`, a module-level `fn(model, dataset_bytes, recipe) -> Module`."""
    return _register(TRAINER_KIND, fn)


def register_group_trainer(fn: F) -> F:
    """Let grouped provenance records name `fn(template, stacked, datasets, recipe) -> stacked` (k models at once)."""
    return _register(GROUP_TRAINER_KIND, fn)


def _matches(path: str) -> bool:
    return _IMPORT_PATH.fullmatch(path) is not None


def _check_json(value: Any) -> None:
    """Refuse kwargs deeper, longer or larger than the bounds, or holding NaN or infinities."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list, tuple)) and depth > MAX_KWARGS_DEPTH:
            raise ValueError(f"kwargs nest deeper than {MAX_KWARGS_DEPTH} levels of objects and arrays")
        if isinstance(item, str) and len(item) > MAX_KWARGS_STRING:
            raise ValueError(f"a kwargs string is longer than {MAX_KWARGS_STRING} characters")
        if isinstance(item, float) and not math.isfinite(item):
            raise ValueError("kwargs hold NaN or an infinity; JSON kwargs must be finite")
        if isinstance(item, dict):
            stack.extend((k, depth + 1) for k in item)
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend((v, depth + 1) for v in item)
    if len(json.dumps(value, allow_nan=False, default=str)) > MAX_KWARGS_BYTES:
        raise ValueError(f"kwargs exceed {MAX_KWARGS_BYTES} bytes of JSON")


class ArchSpec(BaseModel):
    """How to build one (untrained) model: `factory` is `"package.module:Name"`, called with `kwargs`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    factory: Annotated[str, StringConstraints(max_length=MAX_PATH, pattern=IMPORT_PATH)]
    kwargs: dict[str, JsonValue] = {}
    source_digest: str = Field("", pattern=r"^([0-9a-f]{64})?$")

    @field_validator("kwargs", mode="before")
    @classmethod
    def _bounded(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            raise ValueError("kwargs must be a JSON object")
        _check_json(value)
        if "device" in value:
            # Modules are built on the meta device first; a stored device would defeat that check.
            raise ValueError("kwargs may not name a device; mmstore chooses where modules are built")
        return value

    @classmethod
    def of(cls, obj: Any, **kwargs: JsonValue) -> "ArchSpec":
        """The spec of a module instance, a module class or a registered factory function."""
        target = obj if callable(obj) and not isinstance(obj, torch.nn.Module) else type(obj)
        module, qualname = getattr(target, "__module__", ""), getattr(target, "__qualname__", repr(target))
        if "<locals>" in qualname or "." in qualname or module == "__main__":
            raise ArchitectureError(
                f"{qualname} in {module} cannot be imported by a later reader; define it at module "
                "level of an importable package, or pass arch=ArchSpec(factory=...) explicitly"
            )
        path = f"{module}:{qualname}"
        _admit(path, target, FACTORY_KIND)
        try:
            return cls(factory=path, kwargs=kwargs, source_digest=source_digest(module))
        except ValidationError as exc:
            raise ArchitectureError(f"the architecture {path} cannot be stored: {_first_line(exc)}") from None

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


def import_trusted(path: str, prefixes: tuple[str, ...] | None, what: str = FACTORY_KIND) -> Any:
    """The factory or trainer (`what`) at `"package.module:Name"`, imported only from `prefixes` (`None`: any).

    Nothing found is called here, and only module classes and registered functions are returned.
    """
    if not isinstance(path, str) or len(path) > MAX_PATH or not _matches(path):
        raise ArchitectureError(f"{what} {str(path)[:80]!r} is not of the form 'package.module:Name'")
    module_name, _, name = path.partition(":")
    if prefixes is not None and not is_trusted(module_name, prefixes):
        raise UntrustedModuleError(
            f"the {what} {path!r} is outside the trusted modules {list(prefixes)}; "
            f"it was not imported. If you trust it, add its package to MMSTORE_TRUSTED_MODULES"
        )
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # a trusted module that fails to import is reported, never raised raw
        raise ArchitectureError(
            f"cannot import the {what} {path!r}: {_first_line(exc)}; install the package that defines it"
        ) from None
    # The module's own namespace: no __getattr__ hook and no walking into other modules.
    target = vars(module).get(name)
    if target is None:
        raise ArchitectureError(
            f"module {module_name} defines no {name!r}; install the version that defines the {what} {path!r}"
        )
    _admit(path, target, what)
    return target


def _admit(path: str, target: Any, what: str) -> None:
    """Refuse anything but a module class (factories only) or a function registered for `what`."""
    if what == FACTORY_KIND and isinstance(target, type) and issubclass(target, torch.nn.Module):
        return
    if _REGISTERED.get(what, {}).get(path) is target:
        return
    wanted = f"a function registered with {_DECORATORS[what]}" if what in _DECORATORS else f"a registered {what}"
    if what == FACTORY_KIND:
        wanted = f"a torch.nn.Module class or {wanted}"
    raise UntrustedModuleError(
        f"the {what} {path!r} is a {type(target).__name__}, not {wanted}; it was not called. "
        "Register it in its package"
    )


def resolve_factory(spec: ArchSpec, prefixes: tuple[str, ...] | None) -> Callable[..., Any]:
    """The spec's factory, imported if trusted; warns when its source changed since the set was saved."""
    factory = import_trusted(spec.factory, prefixes)
    if spec.source_digest and source_digest(spec.module_name) != spec.source_digest:
        warnings.warn(
            f"the source of {spec.module_name} changed since the set was saved; the layout is checked, "
            "but behaviour may differ",
            ArchitectureChangedWarning,
            stacklevel=3,
        )
    return factory


def build_module(factory: Callable[..., Any], spec: ArchSpec, device: torch.device | None = None) -> torch.nn.Module:
    """Call `factory(**spec.kwargs)` (on `device` when given); any failure becomes an ArchitectureError."""
    try:
        with torch.device(device) if device is not None else nullcontext():
            module = factory(**spec.kwargs)
    except Exception as exc:  # bad kwargs, failing init, MemoryError: all one-line ArchitectureErrors
        raise ArchitectureError(
            f"the factory {spec.factory} failed to build a module: {_first_line(exc)}; "
            "check the set's architecture kwargs against the factory's signature"
        ) from None
    if not isinstance(module, torch.nn.Module):
        raise ArchitectureError(f"factory {spec.factory!r} returned {type(module).__name__}, not a torch.nn.Module")
    return module


def _first_line(exc: BaseException) -> str:
    if isinstance(exc, ValidationError):
        error = exc.errors()[0]
        return f"{'.'.join(map(str, error['loc']))}: {error['msg']}"
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:200] if lines else ''}"
