"""The per-model comparator (the paper's MMLib-base): one `.safetensors` file and one JSON document per model.

Each document carries what single-model tools store with every model: the architecture's factory and
source code, the layer names and shapes, and the environment the model was saved in.
"""

from __future__ import annotations

import importlib
import inspect
import json
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors.torch import load, save

from envs.fingerprint import capture
from mmstore import ModelSet

from .common import write_durably

__all__ = ["NAME", "model_objects", "save_files", "recover_files", "object_names"]

NAME = "per-model"


def _document(model_set: ModelSet, i: int, set_name: str) -> dict:
    code = inspect.getsource(importlib.import_module(model_set.arch.module_name))
    return {
        "model": i, "set": set_name, "parameters": f"model-{i:05d}.safetensors",
        "architecture": {"factory": model_set.arch.factory, "code": code},
        "layers": [{"name": t.name, "shape": list(t.shape), "dtype": t.dtype} for t in model_set.layout.tensors],
        "environment": json.loads(capture().to_json()),
    }


def object_names(i: int) -> tuple[str, str]:
    """The parameter file and the metadata document of model i."""
    return f"model-{i:05d}.safetensors", f"model-{i:05d}.json"


def model_objects(model_set: ModelSet, set_name: str) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of every model's parameter file and metadata document, model after model."""
    for i in range(len(model_set)):
        params, doc = object_names(i)
        yield params, save({k: v.contiguous() for k, v in model_set.state_dict(i).items()})
        yield doc, json.dumps(_document(model_set, i, set_name), indent=1).encode()


def save_files(model_set: ModelSet, directory: Path) -> None:
    """Write every model's two files into `directory`, each fsynced, as single-model tools do."""
    directory.mkdir(parents=True)
    for name, data in model_objects(model_set, directory.name):
        write_durably(directory / name, data)


def recover_files(directory: Path, n: int) -> list[dict[str, torch.Tensor]]:
    """Read every model's document and parameters back: n state dicts (no modules built, as for mmstore)."""
    states = []
    for i in range(n):
        params, doc = object_names(i)
        json.loads((directory / doc).read_bytes())
        states.append(load((directory / params).read_bytes()))
    return states
