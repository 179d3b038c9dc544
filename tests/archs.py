"""Architectures used by the tests: importable, so stores can name them."""

import torch
from torch import nn


class Small(nn.Module):
    """Two linear layers: 5 -> 8 -> 1."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class AllDtypes(nn.Module):
    """Parameters and buffers of every dtype a state dict commonly holds, a 0-dim one included."""

    def __init__(self) -> None:
        super().__init__()
        self.f32 = nn.Parameter(torch.zeros(3, 4))
        self.f64 = nn.Parameter(torch.zeros(5, dtype=torch.float64))
        self.f16 = nn.Parameter(torch.zeros(7, dtype=torch.float16))
        self.bf16 = nn.Parameter(torch.zeros(2, 3, dtype=torch.bfloat16))
        self.lin = nn.Linear(3, 2)
        self.register_buffer("i64", torch.zeros(3, dtype=torch.int64))
        self.register_buffer("i32", torch.zeros(2, dtype=torch.int32))
        self.register_buffer("u8", torch.zeros(5, dtype=torch.uint8))
        self.register_buffer("flag", torch.zeros(3, dtype=torch.bool))
        self.register_buffer("count", torch.tensor(0, dtype=torch.int64))
        self.register_buffer("c64", torch.zeros(2, dtype=torch.complex64))
