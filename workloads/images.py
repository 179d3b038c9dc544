"""Synthetic, seeded CIFAR-10-shaped image data: ten classes of coloured oriented gratings."""

from __future__ import annotations

import numpy as np

__all__ = ["CLASSES", "synthetic_images", "image_dataset"]

CLASSES = 10
_SIZE = 32
_CLASS_SEED = 20_231


def _class_patterns() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    # Fixed across all data sets, so every seed draws images of the same ten classes.
    rng = np.random.default_rng(_CLASS_SEED)
    angle = np.arange(CLASSES) * np.pi / CLASSES
    freq = rng.uniform(0.15, 0.6, CLASSES)
    colour = rng.uniform(-1.0, 1.0, (CLASSES, 3))
    return angle, freq, colour


def synthetic_images(count: int, seed: int, shift: float = 0.0) -> dict[str, np.ndarray]:
    """{x: float32 (count, 3, 32, 32), y: int64 (count,)}; `shift` moves brightness and noise (drift)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, count]))
    angle, freq, colour = _class_patterns()
    labels = rng.integers(0, CLASSES, count)
    phase = rng.uniform(0.0, 2 * np.pi, count)
    grid = np.arange(_SIZE, dtype=np.float64)
    rows, cols = np.meshgrid(grid, grid, indexing="ij")
    a, f = angle[labels][:, None, None], freq[labels][:, None, None]
    wave = np.sin(f * (np.cos(a) * cols + np.sin(a) * rows) + phase[:, None, None])
    images = colour[labels][:, :, None, None] * wave[:, None] + shift
    images += (0.5 + shift) * rng.standard_normal(images.shape)
    return {"x": images.astype(np.float32), "y": labels.astype(np.int64)}


def image_dataset(seed: int, model: int, version: int, count: int = 256) -> dict[str, np.ndarray]:
    """The images model `model` trains on at `version`: each version drifts a little further."""
    data_seed = int(np.random.SeedSequence([seed, model, version]).generate_state(1)[0])
    return synthetic_images(count, data_seed, shift=0.05 * version)
