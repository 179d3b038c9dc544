"""Export a set as one `.safetensors` file per model, loadable by any PyTorch user.

Tied tensors are written once, under the first name of their group, and every other name of the
group is recorded in the file's metadata as `alias -> kept name`: the convention of
`save_model` in `safetensors.torch`, so its `load_model` restores a tied module as is.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import save_file

from .errors import OutputError
from .modelset import ModelSet

__all__ = ["export_safetensors", "check_out_dir"]


def check_out_dir(out_dir: str) -> None:
    """Refuse an output path that exists but is not a directory, before any recovery work."""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise OutputError(f"{out_dir} is an existing file; give a directory to export into (it is created if missing)")


# What the safetensors format can hold of the layout's dtypes.
_NOT_IN_SAFETENSORS = ("complex128",)


def _check_dtypes(model_set: ModelSet) -> None:
    for spec in model_set.layout.tensors:
        if spec.dtype in _NOT_IN_SAFETENSORS:
            raise OutputError(
                f"tensor {spec.name!r} is {spec.dtype}, which the safetensors format cannot hold; "
                "read the models with Store.recover(...).state_dict(i) instead"
            )


def _written(path: str, write: Callable[[], None]) -> None:
    try:
        write()
    except (OSError, SafetensorError) as exc:  # safetensors reports a full or read-only disk as its own error
        reason = getattr(exc, "strerror", None) or str(exc)
        raise OutputError(f"cannot write {path} ({reason}); choose an output directory that is writable and has free space") from exc


def export_safetensors(
    model_set: ModelSet,
    out_dir: str,
    set_id: str,
    indices: Sequence[int] | None = None,
    track: Callable[[Sequence[Any]], Iterable[Any]] = lambda items: items,
) -> list[str]:
    """Write `model-<index>.safetensors` for each model; `indices` are the models' numbers in the set."""
    check_out_dir(out_dir)
    _check_dtypes(model_set)
    _written(out_dir, lambda: os.makedirs(out_dir, exist_ok=True))
    numbers = list(indices) if indices is not None else list(range(len(model_set)))
    paths = []
    for position in track(range(len(model_set))):
        index = numbers[position]
        ties = model_set.layout.ties
        tensors = {name: t.clone() for name, t in model_set.state_dict(position).items() if name not in ties}
        path = os.path.join(out_dir, f"model-{index:05d}.safetensors")
        metadata = {**ties, "mmstore.set": set_id, "mmstore.index": str(index), "mmstore.arch": model_set.arch.factory}
        _written(path, lambda: save_file(tensors, path, metadata=metadata))
        paths.append(path)
    return paths
