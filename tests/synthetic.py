"""Small synthetic classification tasks of any input shape, for tests of shape and range generality.

Each class has a fixed random template; an example is its class's template
plus Gaussian noise, so models learn the task in a few epochs. ``normalise``
standardises the inputs the way image pipelines do (``(x - mean) / std``
per channel, or per feature for flat inputs), so values run about -3 to 3
instead of lying in [0, 1].
"""

from __future__ import annotations

import numpy as np
import torch

from core.data import Dataset

__all__ = ["synthetic_arrays", "synthetic_dataset"]


def synthetic_arrays(shape: tuple[int, ...], n: int, *, num_classes: int = 10, seed: int = 0,
                     task_seed: int = 1234, noise: float = 0.6,
                     normalise: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """``x`` float32 ``[n, *shape]`` and ``y`` int64 ``[n]``; ``task_seed`` fixes the templates."""
    templates = np.random.default_rng(task_seed).random((num_classes, *shape), dtype=np.float32)
    rng = np.random.default_rng(seed)
    y = rng.integers(0, num_classes, n).astype(np.int64)
    x = templates[y] + noise * rng.standard_normal((n, *shape), dtype=np.float32)
    x = np.clip(x, 0.0, 1.0)  # raw "pixels" in [0, 1], as a camera gives them
    if normalise:
        axes = (0, 2, 3) if len(shape) == 3 else (0,)
        mean, std = x.mean(axis=axes, keepdims=True), x.std(axis=axes, keepdims=True)
        x = (x - mean) / std
    return np.ascontiguousarray(x, dtype=np.float32), y


def synthetic_dataset(shape: tuple[int, ...], n: int, *, num_classes: int = 10, seed: int = 0,
                      normalise: bool = True) -> Dataset:
    """:func:`synthetic_arrays` as a :class:`Dataset`."""
    x, y = synthetic_arrays(shape, n, num_classes=num_classes, seed=seed, normalise=normalise)
    return Dataset(torch.from_numpy(x), torch.from_numpy(y), num_classes)
