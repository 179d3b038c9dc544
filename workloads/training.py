"""Deterministic training: a pure function of (starting parameters, dataset arrays, recipe).

Provenance recovery replays this training to re-create models bit-exactly, so nothing here may
depend on global RNG state, thread count or nondeterministic kernels.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from torch.func import functional_call, grad, vmap

from workloads.batched import batched_forward
from workloads.datasets import decode_arrays

__all__ = ["TrainRecipe", "train", "train_from_bytes", "train_stacked", "train_group", "evaluate", "deterministic_torch"]


class TrainRecipe(BaseModel):
    """Everything besides the starting model and the data that decides a training's result."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    epochs: int = Field(default=6, ge=0)
    learning_rate: float = Field(default=3e-3, gt=0)
    batch_size: int = Field(default=64, ge=1)
    seed: int = 0
    trainable: tuple[str, ...] | None = None
    threads: int = Field(default=1, ge=1)
    deterministic: bool = True


@contextmanager
def deterministic_torch(threads: int | None, deterministic: bool = True) -> Iterator[None]:
    """Pin torch's thread count (None: keep it) and deterministic-algorithms flag, restoring both afterwards."""
    old_threads, old_det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(threads or old_threads)
    torch.use_deterministic_algorithms(deterministic)
    try:
        yield
    finally:
        torch.set_num_threads(old_threads)
        torch.use_deterministic_algorithms(old_det)


def _tensors(dataset: Mapping[str, np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.from_numpy(np.ascontiguousarray(dataset["x"]))
    return x, torch.from_numpy(np.ascontiguousarray(dataset["y"]))


def _loss(objective: str, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if objective == "classification":
        return F.cross_entropy(out, y)
    return F.mse_loss(out, y)


def _trainable(model: nn.Module, prefixes: tuple[str, ...] | None) -> list[nn.Parameter]:
    named = list(model.named_parameters())
    chosen = [p for n, p in named if prefixes is None or n.startswith(prefixes)]
    if not chosen:
        raise ValueError(f"no parameter of {type(model).__name__} starts with any of {prefixes}")
    return chosen


def _batches(n: int, recipe: TrainRecipe) -> Iterator[torch.Tensor]:
    # A local generator keeps the shuffle independent of whatever else touched the global RNG.
    gen = torch.Generator().manual_seed(recipe.seed)
    for _ in range(recipe.epochs):
        yield from torch.randperm(n, generator=gen).split(recipe.batch_size)


def train(model: nn.Module, dataset: Mapping[str, np.ndarray], recipe: TrainRecipe) -> nn.Module:
    """A trained copy of `model`; parameters outside `recipe.trainable` stay bit-identical."""
    trained = copy.deepcopy(model)
    x, y = _tensors(dataset)
    params = _trainable(trained, recipe.trainable)
    frozen = [p for p in trained.parameters() if all(p is not q for q in params)]
    for p in frozen:
        p.requires_grad_(False)
    with deterministic_torch(recipe.threads, recipe.deterministic):
        optimiser = torch.optim.Adam(params, lr=recipe.learning_rate, foreach=False)
        for idx in _batches(len(x), recipe):
            optimiser.zero_grad(set_to_none=True)
            _loss(trained.objective, trained(x[idx]), y[idx]).backward()
            optimiser.step()
    for p in frozen:
        p.requires_grad_(True)
    return trained


def train_from_bytes(model: nn.Module, dataset: bytes, recipe: dict) -> nn.Module:
    """`train` on a dataset file's bytes and a recipe as plain data: the entry point provenance replays."""
    return train(model, decode_arrays(dataset), TrainRecipe(**recipe))


def train_stacked(
    arch: type[nn.Module], stacked: dict[str, torch.Tensor], x: np.ndarray, y: np.ndarray, recipe: TrainRecipe
) -> dict[str, torch.Tensor]:
    """Train n models at once from stacked parameters on their own data x (n, T, ...), y (n, T, ...)."""
    xs, ys = torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(np.ascontiguousarray(y))
    leaves = {k: v.detach().clone().requires_grad_(recipe.trainable is None or k.startswith(recipe.trainable))
              for k, v in stacked.items()}
    params = [v for v in leaves.values() if v.requires_grad]
    objective = arch.objective
    with deterministic_torch(recipe.threads, recipe.deterministic):
        # Adam is elementwise, so one optimiser over stacked tensors updates each model independently.
        optimiser = torch.optim.Adam(params, lr=recipe.learning_rate, foreach=False)
        for idx in _batches(xs.shape[1], recipe):
            optimiser.zero_grad(set_to_none=True)
            out = batched_forward(arch, leaves, xs[:, idx])
            loss = _loss(objective, out.flatten(0, 1), ys[:, idx].flatten(0, 1)) * len(xs)
            loss.backward()
            optimiser.step()
    return {k: v.detach() for k, v in leaves.items()}


def train_group(
    template: nn.Module, stacked: Mapping[str, torch.Tensor], datasets: Sequence[bytes], recipe: dict
) -> dict[str, torch.Tensor]:
    """Train k models together: stacked (k, ...) parameters, k datasets of one shape, one recipe.

    Each step is one vmapped gradient of every model's own loss and one Adam update of the stacked
    tensors, so a model's result does not depend on the others in its group. Torch's thread count is
    the caller's: provenance records it with the grouping.
    """
    plan = TrainRecipe(**recipe)
    xs, ys = _group_arrays(datasets)
    names = {name for name, _ in template.named_parameters()}
    chosen = [k for k in stacked if k in names and (plan.trainable is None or k.startswith(plan.trainable))]
    if not chosen:
        raise ValueError(f"no parameter of {type(template).__name__} starts with any of {plan.trainable}")
    leaves = {k: stacked[k].detach().clone() for k in chosen}
    fixed = {k: v for k, v in stacked.items() if k not in leaves}
    objective = template.objective

    def loss(params: dict, others: dict, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return _loss(objective, functional_call(template, {**params, **others}, (x,)), y)

    step_grads = vmap(grad(loss))
    with deterministic_torch(None, plan.deterministic):
        # Adam is elementwise: one optimiser over stacked tensors updates each model on its own.
        optimiser = torch.optim.Adam(list(leaves.values()), lr=plan.learning_rate, foreach=False)
        for idx in _batches(xs.shape[1], plan):
            for name, g in step_grads(leaves, fixed, xs[:, idx], ys[:, idx]).items():
                leaves[name].grad = g
            optimiser.step()
    return {k: (leaves[k] if k in leaves else v).detach() for k, v in stacked.items()}


def _group_arrays(datasets: Sequence[bytes]) -> tuple[torch.Tensor, torch.Tensor]:
    arrays = [decode_arrays(data) for data in datasets]
    shapes = {(a["x"].shape, a["y"].shape) for a in arrays}
    if len(shapes) != 1:
        raise ValueError(f"a training group needs datasets of one shape, got {sorted(shapes)[:3]}; group models by it")
    return torch.from_numpy(np.stack([a["x"] for a in arrays])), torch.from_numpy(np.stack([a["y"] for a in arrays]))


def evaluate(model: nn.Module, dataset: Mapping[str, np.ndarray]) -> float:
    """Error of `model` on `dataset`: RMSE for regression, 1 - accuracy for classification."""
    x, y = _tensors(dataset)
    with torch.no_grad():
        out = model(x)
    if model.objective == "classification":
        return 1.0 - (out.argmax(-1) == y).double().mean().item()
    return (out - y).double().pow(2).mean().sqrt().item()
