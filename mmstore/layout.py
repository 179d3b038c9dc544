"""Where each tensor of a model lives inside the model's row of bytes, checked before any byte is used."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Annotated, Literal, get_args

import torch
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from .errors import ArchitectureError

__all__ = ["DTYPES", "DtypeName", "TensorSpec", "Layout", "torch_dtype", "MAX_ROW_NBYTES"]

# The closed list of dtypes a layout may name, with their sizes in bytes.
DtypeName = Literal[
    "float64", "float32", "float16", "bfloat16", "complex128", "complex64",
    "int64", "int32", "int16", "int8", "uint64", "uint32", "uint16", "uint8", "bool",
    "float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz",
]
DTYPES: dict[str, torch.dtype] = {name: getattr(torch, name) for name in get_args(DtypeName)}
MAX_ROW_NBYTES = 1 << 31  # one model's parameters; larger rows are not what a model set is for
_MAX_TENSORS = 1 << 16
_MAX_DIM = 1 << 40

TensorName = Annotated[str, StringConstraints(min_length=1, max_length=1024, pattern=r"^[^\x00-\x1f]+$")]
Dim = Annotated[int, Field(ge=0, le=_MAX_DIM)]


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype called `name` (`"float32"`, `"bfloat16"`, ...), from the closed list."""
    try:
        return DTYPES[name]
    except (KeyError, TypeError):
        raise ArchitectureError(f"tensor dtype {name!r} is not supported; use one of {sorted(DTYPES)}") from None


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


class TensorSpec(BaseModel):
    """One tensor of the state dict: its name, dtype, shape and byte offset within a row."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: TensorName
    dtype: DtypeName
    shape: tuple[Dim, ...] = Field(max_length=32)
    offset: int = Field(ge=0, le=MAX_ROW_NBYTES)

    @property
    def itemsize(self) -> int:
        """Bytes per element."""
        return DTYPES[self.dtype].itemsize

    @property
    def nbytes(self) -> int:
        """Bytes this tensor occupies in a row."""
        return math.prod(self.shape) * self.itemsize


class Layout(BaseModel):
    """The state-dict order of tensors, the byte layout of one model's row, and which tensors are tied.

    `ties` maps a tensor's name to the earlier tensor it shares storage with (tied weights): both
    have the same offset, so the bytes are stored once and recovered modules share one parameter.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    tensors: tuple[TensorSpec, ...] = Field(max_length=_MAX_TENSORS)
    row_nbytes: int = Field(ge=0, le=MAX_ROW_NBYTES)
    ties: dict[TensorName, TensorName] = {}

    @model_validator(mode="after")
    def _consistent(self) -> "Layout":
        specs = {t.name: t for t in self.tensors}
        if len(specs) != len(self.tensors):
            raise ValueError("tensor names repeat")
        for spec in self.tensors:
            if spec.offset % spec.itemsize or self.row_nbytes % spec.itemsize:
                raise ValueError(f"tensor {spec.name!r} is not aligned to its itemsize")
            if spec.offset + spec.nbytes > self.row_nbytes:
                raise ValueError(f"tensor {spec.name!r} ends past the row ({spec.offset + spec.nbytes} > {self.row_nbytes})")
        self._check_ties(specs)
        owned = sorted((t.offset, t.offset + t.nbytes) for t in self.tensors if t.name not in self.ties and t.nbytes)
        if any(end > start for (_, end), (start, _) in zip(owned, owned[1:])):
            raise ValueError("tensors overlap within the row")
        return self

    def _check_ties(self, specs: dict[str, TensorSpec]) -> None:
        order = {t.name: i for i, t in enumerate(self.tensors)}
        for alias, target in self.ties.items():
            a, t = specs.get(alias), specs.get(target)
            if a is None or t is None or target in self.ties or order[target] >= order[alias]:
                raise ValueError(f"tie {alias!r} -> {target!r} does not name an earlier, untied tensor")
            if (a.dtype, a.shape, a.offset) != (t.dtype, t.shape, t.offset):
                raise ValueError(f"tied tensors {alias!r} and {target!r} differ in dtype, shape or offset")

    @classmethod
    def of(cls, state_dict: Mapping[str, torch.Tensor]) -> "Layout":
        """The layout of a state dict; wider dtypes first so no padding is needed between tensors."""
        ties = _ties(state_dict)
        items = [(name, _dtype_name(t.dtype), tuple(t.shape), t.element_size()) for name, t in state_dict.items()]
        offsets, cursor = {}, 0
        for name, _, shape, itemsize in sorted(items, key=lambda item: -item[3]):
            if name not in ties:
                offsets[name] = cursor
                cursor += math.prod(shape) * itemsize
        offsets.update({alias: offsets[target] for alias, target in ties.items()})
        widest = max((item[3] for item in items), default=1)
        row = -(-cursor // widest) * widest
        try:
            specs = tuple(TensorSpec(name=n, dtype=d, shape=s, offset=offsets[n]) for n, d, s, _ in items)
            return cls(tensors=specs, row_nbytes=row, ties=ties)
        except ValueError as exc:
            raise ArchitectureError(f"the models' state cannot be stored as a set: {exc}") from None

    def check(self, state_dict: Mapping[str, torch.Tensor], what: str) -> None:
        """Raise ArchitectureError naming the first difference between `state_dict` and this layout."""
        names = [t.name for t in self.tensors]
        if list(state_dict) != names:
            missing = sorted(set(names) - set(state_dict))
            extra = sorted(set(state_dict) - set(names))
            raise ArchitectureError(
                f"{what} has other tensors than the set (missing {missing[:5]}, unexpected {extra[:5]}); "
                "save models of different architectures as separate sets"
            )
        for spec in self.tensors:
            t = state_dict[spec.name]
            if tuple(t.shape) != spec.shape or _dtype_name(t.dtype) != spec.dtype:
                raise ArchitectureError(
                    f"{what}: tensor {spec.name!r} is {_dtype_name(t.dtype)}{list(t.shape)}, the set expects "
                    f"{spec.dtype}{list(spec.shape)}; save models of different architectures as separate sets"
                )
        if _ties(state_dict) != self.ties:
            raise ArchitectureError(f"{what} ties other tensors together than the set; save it as a separate set")

    @property
    def used_nbytes(self) -> int:
        """Bytes of a row that hold tensors; the rest (at most the widest itemsize) is zero padding."""
        return max((t.offset + t.nbytes for t in self.tensors), default=0)

    @property
    def n_params(self) -> int:
        """Elements per model, tied tensors counted once."""
        return sum(math.prod(t.shape) for t in self.tensors if t.name not in self.ties)

    def spec(self, name: str) -> TensorSpec:
        """The spec of the tensor called `name`."""
        for t in self.tensors:
            if t.name == name:
                return t
        raise KeyError(name)


def _ties(state_dict: Mapping[str, torch.Tensor]) -> dict[str, str]:
    """Tensors that are the very same storage view as an earlier one (tied weights): alias -> first name."""
    first: dict[tuple, str] = {}
    ties = {}
    for name, t in state_dict.items():
        if t.numel() == 0 or t.device.type == "meta":
            continue
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)
        if key in first:
            ties[name] = first[key]
        else:
            first[key] = name
    return ties
