"""Many models of one architecture as stacked parameters: batched forward passes without n modules."""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call, vmap

__all__ = ["stack_params", "unstack_params", "batched_forward"]


def stack_params(models: list[nn.Module]) -> dict[str, torch.Tensor]:
    """Each parameter of `models` stacked along a new leading model axis."""
    names = [name for name, _ in models[0].named_parameters()]
    states = [dict(m.named_parameters()) for m in models]
    return {name: torch.stack([s[name].detach() for s in states]) for name in names}


def unstack_params(arch: type[nn.Module], stacked: dict[str, torch.Tensor]) -> list[nn.Module]:
    """One module per model from stacked parameters, each owning a copy of its tensors."""
    count = len(next(iter(stacked.values())))
    leaves = [(name.rpartition(".")[0], name.rpartition(".")[2], value) for name, value in stacked.items()]
    # Plain construction is faster than the meta device here; fork_rng keeps its random
    # initialisation, which is overwritten at once, from moving the caller's global RNG.
    with torch.random.fork_rng(devices=[]):
        models = [arch() for _ in range(count)]
    for i, model in enumerate(models):
        for owner, leaf, value in leaves:
            model.get_submodule(owner)._parameters[leaf] = nn.Parameter(value[i].detach().clone())
    return models


def batched_forward(arch: type[nn.Module] | nn.Module, stacked: dict[str, torch.Tensor], x: torch.Tensor):
    """Outputs of every model on its own inputs: x has shape (n, batch, ...), the result (n, batch, ...)."""
    template = arch if isinstance(arch, nn.Module) else _template(arch)
    return vmap(lambda p, xi: functional_call(template, p, (xi,)))(stacked, x)


def _template(arch: type[nn.Module]) -> nn.Module:
    with torch.device("meta"):
        return arch()
