"""The workload's model architectures: FFNN-48, FFNN-69 and a small CIFAR-10-shaped conv net.

Each architecture is a class whose constructor takes no arguments, because a store records an
architecture as an import path without keyword arguments. Layers live in one `nn.Sequential`
named `net`, so parameter names (`net.0.weight`, ...) are stable across versions.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = [
    "FFNN",
    "FFNN48",
    "FFNN69",
    "CifarConv",
    "ARCHITECTURES",
    "last_layer_prefixes",
    "parameter_count",
    "seeded_model",
]


class FFNN(nn.Module):
    """Four fully connected layers mapping 5 cell measurements to the terminal voltage."""

    objective = "regression"
    in_features = 5
    # The output layer: what a partial (on-device) update retrains, as in the paper's U3.
    last_layers: tuple[str, ...] = ("net.6.",)

    def __init__(self, width: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(self.in_features, width, bias=False),
            nn.ReLU(),
            nn.Linear(width, width),
            nn.ReLU(),
            nn.Linear(width, width),
            nn.ReLU(),
            nn.Linear(width, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Predicted normalised voltage, shape (batch, 1)."""
        return self.net(x)


class FFNN48(FFNN):
    """FFNN-48: the paper's default battery-cell model, 4,993 parameters."""

    def __init__(self) -> None:
        super().__init__(48)


class FFNN69(FFNN):
    """FFNN-69: the larger battery-cell model, 10,075 parameters."""

    def __init__(self) -> None:
        super().__init__(69)


class CifarConv(nn.Module):
    """Three 3x3 convolutions, global pooling and a linear head over 32x32x3 images: 6,882 parameters."""

    objective = "classification"
    last_layers: tuple[str, ...] = ("net.10.",)

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, 7, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(7, 19, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(19, 30, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(30, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits, shape (batch, 10)."""
        return self.net(x)


ARCHITECTURES: dict[str, type[nn.Module]] = {"ffnn48": FFNN48, "ffnn69": FFNN69, "cifar": CifarConv}


def last_layer_prefixes(model: nn.Module | type[nn.Module]) -> tuple[str, ...]:
    """Parameter-name prefixes of the layers a partial update retrains."""
    return tuple(model.last_layers)


def parameter_count(model: nn.Module) -> int:
    """Total number of scalar parameters of `model`."""
    return sum(p.numel() for p in model.parameters())


def seeded_model(arch: type[nn.Module], seed: int) -> nn.Module:
    """A freshly initialised `arch`, drawn from `seed` without touching the global RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return arch()
