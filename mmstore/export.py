"""Export a set as one `.safetensors` file per model, loadable by any PyTorch user."""

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
        tensors = {name: t.clone() for name, t in model_set.state_dict(position).items()}
        path = os.path.join(out_dir, f"model-{index:05d}.safetensors")
        metadata = {"mmstore.set": set_id, "mmstore.index": str(index), "mmstore.arch": model_set.arch.factory}
        save_file(tensors, path, metadata=metadata)
        paths.append(path)
    return paths
