"""Collect many modules of one architecture into a set's byte matrix with one copy per tensor name.

`Module.state_dict()` builds a dictionary per module and detaches every tensor, one Python call at
a time; for thousands of small models that dominates saving. Here the module trees are walked
column by column (one submodule position across all models at once, with C-level `map`s), and
each tensor name is written with one `torch.stack` straight into its column block of the matrix.
Whenever the models might not give exactly what `state_dict()` gives (custom state-dict methods,
hooks, differing structure, shared storage, other devices or tensor types), `gather` returns None
and the caller takes the general path, which also produces its error messages.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from operator import attrgetter, is_, itemgetter

import numpy as np
import torch
from torch import nn

from .layout import Layout, TensorSpec, torch_dtype

__all__ = ["gather"]

_PLAIN_TENSORS = frozenset({torch.Tensor, nn.Parameter})
_NONE = frozenset({type(None)})
# What state_dict() does for a module whose class keeps these: its parameters, then its persistent
# buffers, then its children, and nothing else.
_DEFAULT_METHODS = ("state_dict", "_save_to_state_dict", "get_extra_state")
_FIELDS = ("_parameters", "_buffers", "_modules")
_HOOKS = ("_state_dict_hooks", "_state_dict_pre_hooks")
_DTYPE = attrgetter("dtype")
# Models are copied in chunks whose staging buffer stays in the cache between its two copies.
_STAGING_NBYTES = 2 << 20


class _Mismatch(Exception):
    """The models may differ from what a plain walk assumes: take the general path."""


def gather(modules: Sequence[nn.Module], layout: Layout, data: np.ndarray) -> bool:
    """Write every model's tensors into its row of `data` (zeros); False if the general path must run."""
    try:
        columns = _columns(modules)
    except (_Mismatch, KeyError, AttributeError, TypeError):
        # A module missing a standard attribute is not one this walk understands.
        return False
    if list(columns) != [spec.name for spec in layout.tensors] or not _plain_tensors(columns, layout):
        return False
    staging = np.empty(max(_STAGING_NBYTES, layout.row_nbytes), dtype=np.uint8)
    try:
        with torch.no_grad():
            for spec in layout.tensors:
                if spec.name not in layout.ties:
                    _copy(columns[spec.name], spec, data, staging)
    except (RuntimeError, NotImplementedError):
        # Tensors on another device, or of differing shapes: the general path copies or explains.
        return False
    return True


def _copy(column: list[torch.Tensor], spec: TensorSpec, data: np.ndarray, staging: np.ndarray) -> None:
    """One tensor of every model into its column block, a cache-sized chunk of models at a time.

    Stacking into a contiguous buffer takes torch's memcpy path; stacking into the strided column
    block directly costs a general copy per tensor, about twice as long.
    """
    if spec.nbytes == 0:
        torch.stack(column, out=torch.empty((len(column), *spec.shape), dtype=torch_dtype(spec.dtype)))
        return
    chunk = max(1, _STAGING_NBYTES // spec.nbytes)
    for start in range(0, len(column), chunk):
        part = column[start : start + chunk]
        raw = staging[: len(part) * spec.nbytes]
        torch.stack(part, out=torch.from_numpy(raw).view(torch_dtype(spec.dtype)).view(len(part), *spec.shape))
        data[start : start + len(part), spec.offset : spec.offset + spec.nbytes] = raw.reshape(len(part), spec.nbytes)


def _columns(modules: Sequence[nn.Module]) -> dict[str, list[torch.Tensor]]:
    """Per state-dict name, in state-dict order, that tensor of every model."""
    columns: dict[str, list[torch.Tensor]] = {}
    pending = [("", list(modules))]
    while pending:
        prefix, column = pending.pop()
        kinds = _present(column)
        if kinds is None:
            continue
        if len(kinds) != 1 or not _plain_module(kinds.pop()):
            raise _Mismatch
        dicts = list(map(vars, column))
        if any(any(map(itemgetter(hooks), dicts)) for hooks in _HOOKS):
            raise _Mismatch
        params, buffers, children = (list(map(itemgetter(field), dicts)) for field in _FIELDS)
        for key in _same(params, tuple):
            _emit(columns, prefix + key, list(map(itemgetter(key), params)))
        buffer_keys = _same(buffers, tuple)
        skipped = _same(list(map(itemgetter("_non_persistent_buffers_set"), dicts)), frozenset) if buffer_keys else ()
        for key in buffer_keys:
            if key not in skipped:
                _emit(columns, prefix + key, list(map(itemgetter(key), buffers)))
        # Last pushed, first walked: children in reverse, so each subtree follows its parent as in state_dict.
        for key in reversed(_same(children, tuple)):
            pending.append((f"{prefix}{key}.", list(map(itemgetter(key), children))))
    return columns


def _plain_module(kind: type) -> bool:
    """A module class whose state_dict() is its parameters, persistent buffers and children, nothing else."""
    return issubclass(kind, nn.Module) and all(getattr(kind, name) is getattr(nn.Module, name) for name in _DEFAULT_METHODS)


def _present(column: list) -> set[type] | None:
    """The types in a column; None if the entry is None in every model, as state_dict then skips it."""
    kinds = set(map(type, column))
    if kinds == _NONE:
        return None
    if type(None) in kinds:
        raise _Mismatch
    return kinds


def _same(values: list, key: Callable) -> tuple | frozenset:
    """`key` of the values (the keys of a dict, in order), which every model must share."""
    keys = set(map(key, values))
    if len(keys) != 1:
        raise _Mismatch
    return keys.pop()


def _emit(columns: dict[str, list[torch.Tensor]], name: str, column: list) -> None:
    kinds = _present(column)
    if kinds is not None:
        if not kinds <= _PLAIN_TENSORS:
            raise _Mismatch
        columns[name] = column


def _plain_tensors(columns: dict[str, list[torch.Tensor]], layout: Layout) -> bool:
    """The layout's dtypes, tied exactly where the layout ties, no other storage shared."""
    pointers = []
    for spec in layout.tensors:
        column = columns[spec.name]
        if set(map(_DTYPE, column)) != {torch_dtype(spec.dtype)}:
            return False
        target = layout.ties.get(spec.name)
        if target is not None:
            if not all(map(is_, column, columns[target])):
                return False
        elif spec.nbytes:
            pointers.append(np.fromiter(map(torch.Tensor.data_ptr, column), dtype=np.uint64, count=len(column)))
    if len(pointers) < 2:
        return True
    # Two names on one storage address in a model are a tie the layout does not know (or worse).
    ordered = np.sort(np.stack(pointers), axis=0)
    return not (ordered[1:] == ordered[:-1]).any()

