"""Drift detection: every model's error on its cell's newest data, and which models to retrain."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from workloads.batched import batched_forward, stack_params
from workloads.training import deterministic_torch

__all__ = ["model_errors", "select_updates"]


def model_errors(
    arch: type[nn.Module],
    models: list[nn.Module] | dict[str, torch.Tensor],
    x: np.ndarray,
    y: np.ndarray,
    stride: int = 4,
    threads: int = 1,
) -> np.ndarray:
    """RMSE of model i on x[i], y[i] (every `stride`-th sample), all models in one batched pass."""
    stacked = stack_params(models) if isinstance(models, list) else models
    xs = torch.from_numpy(np.ascontiguousarray(x[:, ::stride]))
    ys = torch.from_numpy(np.ascontiguousarray(y[:, ::stride]))
    with deterministic_torch(threads), torch.no_grad():
        residual = batched_forward(arch, stacked, xs) - ys
    return residual.double().pow(2).flatten(1).mean(1).sqrt().numpy()


def select_updates(
    errors: np.ndarray, full_fraction: float = 0.05, partial_fraction: float = 0.05
) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the worst models (full retrain) and of the next worst (partial retrain)."""
    if not (0.0 <= full_fraction and 0.0 <= partial_fraction and full_fraction + partial_fraction <= 1.0):
        raise ValueError(f"fractions must be >= 0 and sum to <= 1, got {full_fraction}, {partial_fraction}")
    n = len(errors)
    n_full, n_partial = round(n * full_fraction), round(n * partial_fraction)
    # A stable sort on the negated errors breaks ties by cell index, so the choice is reproducible.
    order = np.argsort(-np.asarray(errors), kind="stable")
    return np.sort(order[:n_full]), np.sort(order[n_full : n_full + n_partial])
