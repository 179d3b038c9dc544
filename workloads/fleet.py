"""A fleet of battery cells: their data per update cycle and their initial models (use case U1)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, vmap

from workloads.batched import unstack_params
from workloads.models import FFNN, FFNN48, seeded_model
from workloads.simulator import SAMPLES, simulate_cycle
from workloads.training import TrainRecipe, deterministic_torch, train, train_stacked

__all__ = ["Fleet", "initial_fleet", "initial_fleet_params", "REFERENCE_CELLS"]

REFERENCE_CELLS = 32
_SUBSAMPLE = 4
_RIDGE = 1e-3


class Fleet:
    """The cells of one fleet: deterministic data for any (cell, cycle) from the fleet seed."""

    def __init__(self, seed: int, n_cells: int, arch: type[nn.Module] = FFNN48, samples: int = SAMPLES):
        self.seed, self.n_cells, self.arch, self.samples = seed, n_cells, arch, samples

    def cycle_data(self, cycle: int, cells: np.ndarray | None = None, variant: int = 0) -> dict:
        """All signals of `cells` (default: every cell) in update cycle `cycle`, arrays over cells."""
        chosen = np.arange(self.n_cells) if cells is None else np.asarray(cells)
        return simulate_cycle(self.seed, chosen, cycle, self.samples, variant)

    def dataset_for(self, cell: int, cycle: int, variant: int = 0) -> dict[str, np.ndarray]:
        """The training arrays {x, y} of one cell's cycle."""
        data = self.cycle_data(cycle, np.array([cell]), variant)
        return {"x": data["x"][0], "y": data["y"][0]}

    def datasets(self, cycle: int, cells: np.ndarray, variant: int = 0) -> dict[int, dict[str, np.ndarray]]:
        """The training arrays {x, y} of several cells' cycle, simulated in one vectorised pass."""
        data = self.cycle_data(cycle, cells, variant)
        return {int(c): {"x": data["x"][i], "y": data["y"][i]} for i, c in enumerate(cells)}

    def initial_models(self) -> list[nn.Module]:
        """The fleet's models of use case U1."""
        return initial_fleet(self.n_cells, self.seed, self.arch, self.samples)


def initial_fleet_params(
    n: int, seed: int, arch: type[FFNN] = FFNN48, samples: int = SAMPLES
) -> dict[str, torch.Tensor]:
    """Stacked parameters (n, ...) of every cell's initial model, trained on its cycle-0 data."""
    pooled = simulate_cycle(seed, np.arange(REFERENCE_CELLS), 0, samples, variant=1)
    reference = train(
        seeded_model(arch, seed),
        {"x": pooled["x"].reshape(-1, arch.in_features), "y": pooled["y"].reshape(-1, 1)},
        TrainRecipe(epochs=3, batch_size=256, learning_rate=3e-3, seed=seed),
    )
    data = simulate_cycle(seed, np.arange(n), 0, samples)
    x, y = data["x"][:, ::_SUBSAMPLE], data["y"][:, ::_SUBSAMPLE]
    stacked = {k: v.detach().expand(n, *v.shape).clone() for k, v in reference.named_parameters()}
    # A short, gentle pass on each cell's own data makes every tensor cell-specific ...
    gentle = TrainRecipe(epochs=1, batch_size=60, learning_rate=2e-4, seed=seed)
    stacked = train_stacked(arch, stacked, x, y, gentle)
    # ... and a closed-form ridge fit of the output layer then matches each cell closely.
    return _fit_output_layer(arch, stacked, x, y)


def initial_fleet(n: int, seed: int, arch: type[FFNN] = FFNN48, samples: int = SAMPLES) -> list[nn.Module]:
    """One initial model per cell for a fleet of `n` cells (use case U1), deterministic in `seed`."""
    return unstack_params(arch, initial_fleet_params(n, seed, arch, samples))


def _fit_output_layer(arch: type[FFNN], stacked: dict, x: np.ndarray, y: np.ndarray) -> dict:
    with torch.device("meta"):
        net = arch().net
    head, layers = f"net.{len(net) - 1}.", net[:-1]
    trunk = {k[len("net."):]: v for k, v in stacked.items() if not k.startswith(head)}
    with deterministic_torch(threads=1), torch.no_grad():
        hidden = vmap(lambda p, xi: functional_call(layers, p, (xi,)))(trunk, torch.from_numpy(x))
        design = torch.cat([hidden, torch.ones_like(hidden[..., :1])], dim=-1).double()
        ridge = _RIDGE * x.shape[1] * torch.eye(design.shape[-1], dtype=torch.float64)
        gram = design.transpose(1, 2) @ design + ridge
        solution = torch.linalg.solve(gram, design.transpose(1, 2) @ torch.from_numpy(y).double())
    weight, bias = solution[:, :-1].transpose(1, 2).float(), solution[:, -1].float()
    return {**stacked, f"{head}weight": weight.contiguous(), f"{head}bias": bias.contiguous()}
