"""ModelSet: n models of one architecture, all their tensors in one (n x row) byte matrix."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .arch import ArchSpec, build_module
from .errors import ArchitectureError
from .layout import Layout, TensorSpec, torch_dtype

__all__ = ["ModelSet"]

_ALIGN = 64  # bytes; what torch's CPU allocator guarantees for ordinary tensors


def _tensor_views(data: torch.Tensor, layout: Layout) -> dict[str, torch.Tensor]:
    """Per tensor, an (n, *shape) view of a uint8 (n, row) tensor: no bytes are copied."""
    views = {}
    for spec in layout.tensors:
        raw = data[:, spec.offset : spec.offset + spec.nbytes]
        views[spec.name] = raw.view(torch_dtype(spec.dtype)).view(data.shape[0], *spec.shape)
    return views


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
        """Collect the state of `modules` (one architecture) into a set."""
        if not modules:
            raise ArchitectureError("a model set needs at least one model")
        if arch is None:
            arch = ArchSpec.of(modules[0])
        elif isinstance(arch, str):
            arch = ArchSpec(factory=arch)
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
            views[spec.name].copy_(torch.stack([sd[spec.name].detach().cpu() for sd in state_dicts]))
        return cls(arch, layout, data)

    @classmethod
    def from_stacked(cls, stacked: dict[str, torch.Tensor], arch: ArchSpec, layout: Layout) -> "ModelSet":
        """A set from per-tensor (n, *shape) stacks, e.g. the result of batched training."""
        n = len(next(iter(stacked.values())))
        data = np.zeros((n, layout.row_nbytes), dtype=np.uint8)
        views = _tensor_views(torch.from_numpy(data), layout)
        layout.check({name: t[0] for name, t in stacked.items()}, "the stacked tensors")
        for name, view in views.items():
            view.copy_(stacked[name])
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
        """A copy of model `i`'s state dict."""
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
        """One module built by the architecture's factory (checked against the allow-list and layout)."""
        if self._template is None:
            module = build_module(self.arch, self.trusted)
            self.layout.check(module.state_dict(), f"the module built by {self.arch.factory}")
            self._template = module
        return self._template

    def _bind(self, data: np.ndarray) -> list[torch.nn.Module]:
        template = self.template()
        # One unbind per tensor yields every model's view in C++, not one indexing call per model.
        per_model = [view.unbind(0) for view in _aligned_copies(data, self.layout).values()]
        slots = [_slot(template, spec) for spec in self.layout.tensors]
        modules = []
        for i in range(data.shape[0]):
            clone, owners = _clone_structure(template)
            for (path, leaf, is_param, requires_grad), tensors in zip(slots, per_model):
                owner = owners[path]
                tensor = tensors[i]
                if is_param:
                    owner._parameters[leaf] = torch.nn.Parameter(tensor, requires_grad=requires_grad)
                else:
                    owner._buffers[leaf] = tensor
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
        stride = -(-spec.nbytes // _ALIGN) * _ALIGN
        buffer = torch.empty((data.shape[0], stride), dtype=torch.uint8)
        buffer[:, : spec.nbytes].copy_(source[:, spec.offset : spec.offset + spec.nbytes])
        copies[spec.name] = buffer[:, : spec.nbytes].view(torch_dtype(spec.dtype)).view(data.shape[0], *spec.shape)
    return copies


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
