"""Architectures used by the tests: importable, so stores can name them."""

import torch
from torch import nn

from mmstore import register_factory


class Small(nn.Module):
    """Two linear layers: 5 -> 8 -> 1."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class AllDtypes(nn.Module):
    """Parameters and buffers of every dtype safetensors can export, 0-dim and zero-size ones included."""

    def __init__(self) -> None:
        super().__init__()
        self.f32 = nn.Parameter(torch.zeros(3, 4))
        self.f64 = nn.Parameter(torch.zeros(5, dtype=torch.float64))
        self.f16 = nn.Parameter(torch.zeros(7, dtype=torch.float16))
        self.bf16 = nn.Parameter(torch.zeros(2, 3, dtype=torch.bfloat16))
        self.empty = nn.Parameter(torch.zeros(0))
        self.lin = nn.Linear(3, 2)
        self.register_buffer("i64", torch.zeros(3, dtype=torch.int64))
        self.register_buffer("i32", torch.zeros(2, dtype=torch.int32))
        self.register_buffer("i16", torch.zeros(3, dtype=torch.int16))
        self.register_buffer("i8", torch.zeros(5, dtype=torch.int8))
        self.register_buffer("u64", torch.zeros(2, dtype=torch.uint64))
        self.register_buffer("u16", torch.zeros(3, dtype=torch.uint16))
        self.register_buffer("u8", torch.zeros(5, dtype=torch.uint8))
        self.register_buffer("e4m3", torch.zeros(6, dtype=torch.float8_e4m3fn))
        self.register_buffer("e5m2", torch.zeros(2, 3, dtype=torch.float8_e5m2))
        self.register_buffer("flag", torch.zeros(3, dtype=torch.bool))
        self.register_buffer("count", torch.tensor(0, dtype=torch.int64))
        self.register_buffer("c64", torch.zeros(2, dtype=torch.complex64))
        self.register_buffer("empty2d", torch.zeros(3, 0, dtype=torch.int16))


class EveryDtype(AllDtypes):
    """AllDtypes plus complex128, which a set stores but the safetensors format cannot hold."""

    def __init__(self) -> None:
        super().__init__()
        self.c128 = nn.Parameter(torch.zeros(3, dtype=torch.complex128))


class TiedLM(nn.Module):
    """A tiny language model whose output layer reuses the embedding matrix (tied weights)."""

    def __init__(self, vocab: int = 11, dim: int = 6) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.hidden = nn.Linear(dim, dim)
        self.lm_head = nn.Linear(dim, vocab, bias=False)
        self.lm_head.weight = self.embed.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.lm_head(torch.tanh(self.hidden(self.embed(tokens))))


@register_factory
def small_of_width(width: int) -> nn.Module:
    """A 5 -> width -> 1 network, built by a registered factory function with JSON kwargs."""
    return nn.Sequential(nn.Linear(5, width), nn.ReLU(), nn.Linear(width, 1))


def unregistered_factory(width: int) -> nn.Module:
    """The same network, but not registered: stored sets may not name it."""
    return small_of_width(width)
