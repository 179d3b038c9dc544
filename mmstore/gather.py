"""Collect many modules of one architecture into a set's byte matrix without a state dict per model.

`Module.state_dict()` builds an ordered dictionary per module and detaches every tensor, one Python
call at a time; for thousands of small models that dominates saving. Here the module trees are
walked column by column (one submodule position across a chunk of models at once, with C-level
`map`s), and each tensor name of the chunk is copied with one `torch.stack`; a chunk is sized to
stay in the cache. Whenever the models might not give exactly what `state_dict()` gives (custom
state-dict methods or hooks, differing structure, dtypes or shapes, shared storage, other devices
or tensor types), `gather` returns False and the caller takes the general path, which also words
the errors.
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
# A class keeping these defaults saves its parameters, its persistent buffers, its children, nothing else.
_DEFAULT_METHODS = ("state_dict", "_save_to_state_dict", "get_extra_state")
_HOOKS = ("_state_dict_hooks", "_state_dict_pre_hooks")
_FIELDS = ("_parameters", "_buffers", "_modules")
_DTYPE = attrgetter("dtype")
_ADDRESS = torch.Tensor.data_ptr
# Models are gathered in chunks of this many row bytes (fastest of 0.25-4 MiB for 5,000 FFNN-48 here).
_STAGING_NBYTES = 2 << 20


class _Mismatch(Exception):
    """The models may differ from what the walk assumes: take the general path."""


def gather(modules: Sequence[nn.Module], layout: Layout, data: np.ndarray) -> bool:
    """Write every model's tensors into its row of `data` (zeros, laid out by `layout`); False if it could not."""
    names = [spec.name for spec in layout.tensors]
    owned = [spec for spec in layout.tensors if spec.name not in layout.ties]
    addresses = np.zeros((len(owned), len(modules)), dtype=np.uint64)
    staging = np.empty(max(_STAGING_NBYTES, layout.row_nbytes), dtype=np.uint8)
    # A chunk of models at a time: its modules, tensors and rows stay in the cache through every pass.
    chunk = max(1, _STAGING_NBYTES // max(1, layout.row_nbytes))
    try:
        with torch.no_grad():
            for start in range(0, len(modules), chunk):
                columns = _columns(modules[start : start + chunk])
                if list(columns) != names or not _tied_as_laid_out(columns, layout):
                    return False
                rows = slice(start, start + chunk)
                for spec, at in zip(owned, addresses):
                    _copy(columns[spec.name], spec, data[rows], staging, at[rows])
    except (_Mismatch, KeyError, AttributeError, TypeError):
        # A module without the standard attributes, or models that differ: the general path decides.
        return False
    except RuntimeError:
        # Tensors on another device, without data (meta) or of differing shapes, which torch.stack refuses.
        return False
    return _unshared(addresses)


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
        # Last pushed, first walked: children go in reversed, so each subtree follows its parent as in state_dict.
        for key in reversed(_same(children, tuple)):
            pending.append((f"{prefix}{key}.", list(map(itemgetter(key), children))))
    return columns


def _plain_module(kind: type) -> bool:
    """A module class whose state_dict() is its parameters, persistent buffers and children."""
    return issubclass(kind, nn.Module) and all(getattr(kind, name) is getattr(nn.Module, name) for name in _DEFAULT_METHODS)


def _present(column: list) -> set[type] | None:
    """The types in a column; None if the entry is None in every model (state_dict skips it)."""
    kinds = set(map(type, column))
    if kinds == _NONE:
        return None
    if type(None) in kinds:
        raise _Mismatch
    return kinds


def _same(values: list, key: Callable) -> tuple | frozenset:
    """`key` of the values (a dict's keys in order, a set's members), which every model must share."""
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


def _tied_as_laid_out(columns: dict[str, list[torch.Tensor]], layout: Layout) -> bool:
    """Every model holds the very object of the tie's target under each tied name."""
    return all(all(map(is_, columns[alias], columns[target])) for alias, target in layout.ties.items())


def _copy(column: list[torch.Tensor], spec: TensorSpec, rows: np.ndarray, staging: np.ndarray,
          addresses: np.ndarray) -> None:
    """One tensor of a chunk of models into its column block of `rows`, checking dtypes, noting addresses.

    The chunk is stacked into a contiguous buffer (torch's memcpy path) and copied into the block:
    stacking into the strided block directly costs a general copy per tensor, about twice as long.
    """
    dtype = torch_dtype(spec.dtype)
    # torch.stack demands one shape within the chunk, but would cast other dtypes and reshape `out`.
    if set(map(_DTYPE, column)) != {dtype} or column[0].shape != spec.shape:
        raise _Mismatch
    if spec.nbytes == 0:
        # No bytes to copy; stacking still checks the shapes.
        torch.stack(column, out=torch.empty((len(column), *spec.shape), dtype=dtype))
        return
    addresses[:] = np.fromiter(map(_ADDRESS, column), dtype=np.uint64, count=len(column))
    raw = staging[: len(column) * spec.nbytes]
    torch.stack(column, out=torch.from_numpy(raw).view(dtype).view(len(column), *spec.shape))
    rows[:, spec.offset : spec.offset + spec.nbytes] = raw.reshape(len(column), spec.nbytes)


def _unshared(addresses: np.ndarray) -> bool:
    """No two names of one model start at one storage address (a tie the layout does not record)."""
    used = addresses[addresses.any(axis=1)]  # zero-size tensors hold no storage
    ordered = np.sort(used, axis=0)
    return not (ordered[1:] == ordered[:-1]).any()
