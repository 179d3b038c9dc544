"""Where each tensor of a model lives inside the model's row of bytes."""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from pydantic import BaseModel, ConfigDict

from .errors import ArchitectureError

__all__ = ["TensorSpec", "Layout", "torch_dtype"]


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype called `name` (`"float32"`, `"bfloat16"`, ...)."""
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ArchitectureError(f"unknown tensor dtype {name!r}")
    return dtype


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


class TensorSpec(BaseModel):
    """One tensor of the state dict: its name, dtype, shape and byte offset within a row."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    dtype: str
    shape: tuple[int, ...]
    offset: int

    @property
    def itemsize(self) -> int:
        """Bytes per element."""
        return torch_dtype(self.dtype).itemsize

    @property
    def nbytes(self) -> int:
        """Bytes this tensor occupies in a row."""
        return math.prod(self.shape) * self.itemsize


class Layout(BaseModel):
    """The state-dict order of tensors and the byte layout of one model's row."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    tensors: tuple[TensorSpec, ...]
    row_nbytes: int

    @classmethod
    def of(cls, state_dict: Mapping[str, torch.Tensor]) -> "Layout":
        """The layout of a state dict; wider dtypes first so no padding is needed between tensors."""
        items = [(name, _dtype_name(t.dtype), tuple(t.shape), t.element_size()) for name, t in state_dict.items()]
        offsets, cursor = {}, 0
        for name, _, shape, itemsize in sorted(items, key=lambda item: -item[3]):
            offsets[name] = cursor
            cursor += math.prod(shape) * itemsize
        widest = max((item[3] for item in items), default=1)
        row = -(-cursor // widest) * widest
        specs = tuple(TensorSpec(name=n, dtype=d, shape=s, offset=offsets[n]) for n, d, s, _ in items)
        return cls(tensors=specs, row_nbytes=row)

    def check(self, state_dict: Mapping[str, torch.Tensor], what: str) -> None:
        """Raise ArchitectureError naming the first difference between `state_dict` and this layout."""
        names = [t.name for t in self.tensors]
        if list(state_dict) != names:
            missing = sorted(set(names) - set(state_dict))
            extra = sorted(set(state_dict) - set(names))
            raise ArchitectureError(
                f"{what} has other tensors than the set (missing {missing}, unexpected {extra}); "
                "save models of different architectures as separate sets"
            )
        for spec in self.tensors:
            t = state_dict[spec.name]
            if tuple(t.shape) != spec.shape or _dtype_name(t.dtype) != spec.dtype:
                raise ArchitectureError(
                    f"{what}: tensor {spec.name!r} is {_dtype_name(t.dtype)}{list(t.shape)}, the set expects "
                    f"{spec.dtype}{list(spec.shape)}; save models of different architectures as separate sets"
                )

    @property
    def used_nbytes(self) -> int:
        """Bytes of a row that hold tensors; the rest (at most the widest itemsize) is zero padding."""
        return max((t.offset + t.nbytes for t in self.tensors), default=0)

    def spec(self, name: str) -> TensorSpec:
        """The spec of the tensor called `name`."""
        for t in self.tensors:
            if t.name == name:
                return t
        raise KeyError(name)
