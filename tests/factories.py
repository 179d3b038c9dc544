"""Helpers that build model sets with adversarial bit patterns for the tests."""

from __future__ import annotations

import numpy as np
import torch

from mmstore import ModelSet
from mmstore.layout import torch_dtype

from .archs import AllDtypes

SPECIALS = {
    torch.float32: [float("nan"), -0.0, float("inf"), -float("inf"), 1e-45],
    torch.float64: [float("nan"), -0.0, 5e-324],
    torch.float16: [float("nan"), -0.0, 6e-8],
    torch.bfloat16: [float("nan"), -0.0],
    torch.float8_e4m3fn: [float("nan"), -0.0],
    torch.float8_e5m2: [float("nan"), -0.0, float("inf")],
}


def random_state(module: torch.nn.Module, rng: np.random.Generator) -> None:
    """Overwrite every tensor of `module` with random bits (NaN payloads, denormals, -0.0 appear).

    Bytes are written through a uint8 view, so unsigned and float8 tensors get every bit pattern
    without any arithmetic on their dtype.
    """
    with torch.no_grad():
        for name, t in module.state_dict(keep_vars=True).items():
            if t.dtype == torch.bool:
                t.copy_(torch.from_numpy(rng.integers(0, 2, t.shape).astype(bool)))
                continue
            raw = rng.integers(0, 256, t.numel() * t.element_size(), dtype=np.uint8)
            t.view(-1).view(torch.uint8).copy_(torch.from_numpy(raw))
            specials = SPECIALS.get(t.dtype)
            if specials and t.numel() > len(specials):
                t.view(-1)[: len(specials)] = torch.tensor(specials, dtype=torch.float32).to(t.dtype)


def adversarial_set(n: int, seed: int) -> ModelSet:
    """n AllDtypes models filled with random bits, special floats included."""
    rng = np.random.default_rng(seed)
    modules = []
    for _ in range(n):
        m = AllDtypes()
        random_state(m, rng)
        modules.append(m)
    return ModelSet.from_modules(modules)


def random_rows(model_set: ModelSet, seed: int) -> ModelSet:
    """A set with the same layout and fresh random bytes in every row."""
    data = np.random.default_rng(seed).integers(0, 256, model_set.data.shape, dtype=np.uint8)
    data[:, model_set.layout.used_nbytes :] = 0
    return ModelSet(model_set.arch, model_set.layout, data)


def bits_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bitwise equality (NaN payloads and -0.0 distinguished), for every dtype float8 included."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return torch.equal(a.contiguous().view(-1).view(torch.uint8), b.contiguous().view(-1).view(torch.uint8))


__all__ = ["adversarial_set", "random_rows", "random_state", "bits_equal", "torch_dtype"]
