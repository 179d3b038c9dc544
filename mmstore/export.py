"""Export a set as one `.safetensors` file per model, loadable by any PyTorch user.

Tied tensors are written once, under the first name of their group, and every other name of the
group is recorded in the file's metadata as `alias -> kept name`: the convention of
`save_model` in `safetensors.torch`, so its `load_model` restores a tied module as is.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from safetensors.torch import save_file

from .modelset import ModelSet

__all__ = ["export_safetensors"]


def export_safetensors(
    model_set: ModelSet,
    out_dir: str,
    set_id: str,
    indices: Sequence[int] | None = None,
    track: Callable[[Sequence[Any]], Iterable[Any]] = lambda items: items,
) -> list[str]:
    """Write `model-<index>.safetensors` for each model; `indices` are the models' numbers in the set."""
    os.makedirs(out_dir, exist_ok=True)
    numbers = list(indices) if indices is not None else list(range(len(model_set)))
    paths = []
    for position in track(range(len(model_set))):
        index = numbers[position]
        ties = model_set.layout.ties
        tensors = {name: t.clone() for name, t in model_set.state_dict(position).items() if name not in ties}
        path = os.path.join(out_dir, f"model-{index:05d}.safetensors")
        metadata = {**ties, "mmstore.set": set_id, "mmstore.index": str(index), "mmstore.arch": model_set.arch.factory}
        save_file(tensors, path, metadata=metadata)
        paths.append(path)
    return paths
