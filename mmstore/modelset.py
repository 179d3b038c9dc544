"""ModelSet: n models of one architecture, all their tensors in one (n x row) byte matrix."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from pydantic import ValidationError

from .arch import ArchSpec, build_module, resolve_factory
from .errors import ArchitectureError
from .gather import gather
from .layout import Layout, TensorSpec, torch_dtype

__all__ = ["ModelSet"]

_ALIGN = 64  # bytes; what torch's CPU allocator guarantees for ordinary tensors


def _tensor_views(data: torch.Tensor, layout: Layout) -> dict[str, torch.Tensor]:
    """Per tensor, an (n, *shape) view of a uint8 (n, row) tensor: no bytes are copied.

    Tied tensors share their target's offset, so their views share its storage as well.
    """
    return {spec.name: _typed(data[:, spec.offset : spec.offset + spec.nbytes], spec) for spec in layout.tensors}


def _typed(raw: torch.Tensor, spec: TensorSpec) -> torch.Tensor:
    """A uint8 (n, nbytes) view reinterpreted as (n, *shape) of the spec's dtype."""
    dtype = torch_dtype(spec.dtype)
    if spec.nbytes == 0:
        # Reinterpreting an empty byte range is refused by torch; an empty tensor carries no bytes.
        return torch.empty((raw.shape[0], *spec.shape), dtype=dtype)
    return raw.view(dtype).view(raw.shape[0], *spec.shape)


class ModelSet:
    """n models of one architecture, kept bit for bit in one contiguous uint8 array (n x row bytes)."""

    def __init__(self, arch: ArchSpec, layout: Layout, data: np.ndarray, trusted: tuple[str, ...] | None = None):
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != layout.row_nbytes:
            raise ArchitectureError(f"data must be uint8 of shape (n, {layout.row_nbytes}), got {data.dtype}{data.shape}")
        if data[:, layout.used_nbytes :].any():
            raise ArchitectureError("the padding bytes at the end of each row must be zero")
        self.arch, self.layout = arch, layout
        self.data = np.ascontiguousarray(data)
        # None: the architecture came from live objects, so importing it again is safe.
        self.trusted = trusted
        self._template: torch.nn.Module | None = None

    @classmethod
    def from_modules(cls, modules: Sequence[torch.nn.Module], arch: ArchSpec | str | None = None) -> "ModelSet":
        """Collect the state of `modules` (one architecture) into a set, bit for bit as their state dicts hold it."""
        if not modules:
            raise ArchitectureError("a model set needs at least one model")
        if arch is None:
            arch = ArchSpec.of(modules[0])
        elif isinstance(arch, str):
            arch = _named(arch)
        layout = Layout.of(modules[0].state_dict())
        data = np.zeros((len(modules), layout.row_nbytes), dtype=np.uint8)
        if gather(modules, layout, data):
            return cls(arch, layout, data)
        return cls.from_state_dicts([m.state_dict() for m in modules], arch)

    @classmethod
    def from_state_dicts(cls, state_dicts: Sequence[dict[str, torch.Tensor]], arch: ArchSpec) -> "ModelSet":
        """Collect state dicts of one architecture into a set."""
        if not state_dicts:
            raise ArchitectureError("a model set needs at least one model")
        layout = Layout.of(state_dicts[0])
        for i, sd in enumerate(state_dicts[1:], start=1):
            layout.check(sd, f"model {i}")
        data = np.zeros((len(state_dicts), layout.row_nbytes), dtype=np.uint8)
        views = _tensor_views(torch.from_numpy(data), layout)
        for spec in layout.tensors:
            if spec.name not in layout.ties:  # a tied group's bytes are written once
                views[spec.name].copy_(_stacked(state_dicts, spec.name))
        return cls(arch, layout, data)

    @classmethod
    def from_stacked(cls, stacked: dict[str, torch.Tensor], arch: ArchSpec, layout: Layout) -> "ModelSet":
        """A set from per-tensor (n, *shape) stacks, e.g. the result of batched training."""
        n = len(next(iter(stacked.values())))
        _check_shapes(layout, {name: t[0] for name, t in stacked.items()}, "the stacked tensors")
        data = np.zeros((n, layout.row_nbytes), dtype=np.uint8)
        views = _tensor_views(torch.from_numpy(data), layout)
        for name, view in views.items():
            if name not in layout.ties:
                view.copy_(stacked[name])
        for alias, target in layout.ties.items():
            if not torch.equal(_bits(stacked[alias]), _bits(views[target])):
                raise ArchitectureError(
                    f"the stacked tensors {alias!r} and {target!r} are tied but differ; stack one value for both"
                )
        return cls(arch, layout, data)

    def __len__(self) -> int:
        return self.data.shape[0]

    def __repr__(self) -> str:
        return f"ModelSet(n={len(self)}, arch={self.arch.factory!r}, row_bytes={self.layout.row_nbytes})"

    @property
    def nbytes(self) -> int:
        """Raw bytes of all tensors of all models."""
        return self.data.nbytes

    def equals(self, other: "ModelSet") -> bool:
        """True when both sets hold the same architecture, layout and bytes."""
        return (self.arch, self.layout) == (other.arch, other.layout) and np.array_equal(self.data, other.data)

    def tensors(self) -> dict[str, torch.Tensor]:
        """Every tensor of every model as an (n, *shape) view sharing this set's memory."""
        return _tensor_views(torch.from_numpy(self.data), self.layout)

    def state_dict(self, i: int) -> dict[str, torch.Tensor]:
        """A copy of model `i`'s state dict; tied names share one storage, as in the original module."""
        row = torch.from_numpy(self.data[i : i + 1].copy())
        return {name: view[0] for name, view in _tensor_views(row, self.layout).items()}

    def select(self, indices: Sequence[int]) -> "ModelSet":
        """A new set holding copies of the models at `indices`, in that order."""
        return ModelSet(self.arch, self.layout, self.data[np.asarray(indices, dtype=np.int64)], self.trusted)

    def model(self, i: int) -> torch.nn.Module:
        """Model `i` as a module with its own copy of the parameters."""
        return self._bind(self.data[i : i + 1])[0]

    def to_modules(self) -> list[torch.nn.Module]:
        """All models as modules, bound to fresh copies of the bytes, never to this set's memory."""
        return self._bind(self.data)

    def template(self) -> torch.nn.Module:
        """One module built by the architecture's factory (checked against the allow-list and layout).

        It is built on the meta device first, which allocates nothing, so a stored architecture that
        disagrees with the layout (or claims terabytes) is refused before any memory is touched.
        """
        if self._template is None:
            what = f"the module built by {self.arch.factory}"
            factory = resolve_factory(self.arch, self.trusted)
            _check_shapes(self.layout, build_module(factory, self.arch, torch.device("meta")).state_dict(), what)
            module = build_module(factory, self.arch)
            self.layout.check(module.state_dict(), what)
            self._template = module
        return self._template

    def _bind(self, data: np.ndarray) -> list[torch.nn.Module]:
        template = self.template()
        copies = _aligned_copies(data, self.layout)
        # One unbind per tensor yields every model's view in C++, not one indexing call per model.
        per_model = {name: view.unbind(0) for name, view in copies.items()}
        slots = [(*_slot(template, spec), self.layout.ties.get(spec.name, spec.name)) for spec in self.layout.tensors]
        modules = []
        for i in range(data.shape[0]):
            clone, owners = _clone_structure(template)
            # A tied group gets one Parameter (or buffer) object, bound under every name, as in the original.
            bound: dict[tuple[str, bool], torch.Tensor] = {}
            for path, leaf, is_param, requires_grad, root in slots:
                tensor = bound.get((root, is_param))
                if tensor is None:
                    tensor = per_model[root][i]
                    tensor = torch.nn.Parameter(tensor, requires_grad=requires_grad) if is_param else tensor
                    bound[root, is_param] = tensor
                (owners[path]._parameters if is_param else owners[path]._buffers)[leaf] = tensor
            modules.append(clone)
        return modules


def _aligned_copies(data: np.ndarray, layout: Layout) -> dict[str, torch.Tensor]:
    """Per tensor, an (n, *shape) copy whose every model slice starts 64-byte aligned.

    BLAS kernels pick code paths by alignment, so a module bound to unaligned views can compute
    different low-order bits than the same module built the ordinary way.
    """
    source = torch.from_numpy(data)
    copies = {}
    for spec in layout.tensors:
        if spec.name in layout.ties:  # bound to the target's copy
            continue
        stride = -(-spec.nbytes // _ALIGN) * _ALIGN
        buffer = torch.empty((data.shape[0], stride), dtype=torch.uint8)
        buffer[:, : spec.nbytes].copy_(source[:, spec.offset : spec.offset + spec.nbytes])
        copies[spec.name] = _typed(buffer[:, : spec.nbytes], spec)
    return copies


def _stacked(state_dicts: Sequence[dict[str, torch.Tensor]], name: str) -> torch.Tensor:
    """The tensor `name` of every state dict, stacked in memory."""
    try:
        return torch.stack([sd[name].detach().cpu() for sd in state_dicts])
    except RuntimeError as exc:  # NotImplementedError included: meta tensors hold no data
        raise ArchitectureError(
            f"tensor {name!r} cannot be copied into memory ({str(exc)[:200]}); load the models' weights first"
        ) from None


def _named(factory: str) -> ArchSpec:
    try:
        return ArchSpec(factory=factory)
    except ValidationError:
        raise ArchitectureError(f"{factory[:80]!r} is not an architecture path 'package.module:Name'") from None


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8)


def _check_shapes(layout: Layout, state: dict[str, torch.Tensor], what: str) -> None:
    """Names, dtypes and shapes against the layout; works on meta tensors, which hold no storage."""
    expected = [(t.name, t.dtype, t.shape) for t in layout.tensors]
    actual = [(name, str(t.dtype).removeprefix("torch."), tuple(t.shape)) for name, t in state.items()]
    for want, got in zip(expected, actual):
        if want != got:
            raise ArchitectureError(
                f"{what}: tensor {got[0]!r} is {got[1]}{list(got[2])}, the set expects {want[0]!r} as "
                f"{want[1]}{list(want[2])}; the stored architecture does not match the stored parameters"
            )
    if len(expected) != len(actual):
        raise ArchitectureError(
            f"{what} has {len(actual)} tensors, the set {len(expected)}; "
            "the stored architecture does not match the stored parameters"
        )


def _slot(template: torch.nn.Module, spec: TensorSpec) -> tuple[str, str, bool, bool]:
    """Where a state-dict entry lives: owning submodule path, attribute, parameter?, requires_grad."""
    path, _, leaf = spec.name.rpartition(".")
    owner = template.get_submodule(path)
    param = owner._parameters.get(leaf)
    if param is not None:
        return path, leaf, True, param.requires_grad
    return path, leaf, False, False


def _clone_structure(module: torch.nn.Module) -> tuple[torch.nn.Module, dict[str, torch.nn.Module]]:
    """A copy of the module tree with fresh containers; tensors are rebound by the caller."""
    owners: dict[str, torch.nn.Module] = {}

    def clone(m: torch.nn.Module, prefix: str) -> torch.nn.Module:
        new = m.__class__.__new__(m.__class__)
        state: dict[str, Any] = dict(m.__dict__)
        state["_parameters"] = dict(m._parameters)
        state["_buffers"] = {k: (None if v is None else v.clone()) for k, v in m._buffers.items()}
        state["_modules"] = {
            k: (None if v is None else clone(v, f"{prefix}.{k}" if prefix else k)) for k, v in m._modules.items()
        }
        new.__dict__ = state
        owners[prefix] = new
        return new

    return clone(module, ""), owners
