"""Trigger set of Adi et al., "Turning Your Weakness Into a Strength" (USENIX Security 2018).

Out-of-distribution inputs (here derived from the key rather than drawn from a
fixed image pool) with labels drawn uniformly at random; the model memorises
them during training. Patterns: ``noise`` (each pixel uniform on [0, 1]) and
``abstract`` (a coarse random grid of grey levels, upsampled, like the
abstract images of the paper).
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from core.data import Dataset
from core.errors import InputError
from watermark.keys import WatermarkKey
from watermark.schemes.base import Scheme

__all__ = ["TriggerSet"]

Pattern = Literal["noise", "abstract"]


class TriggerSet(Scheme):
    """Adi et al. 2018: key-derived out-of-distribution triggers, key-random labels."""

    family = "trigger-set"

    def __init__(self, n: int = 100, pattern: str = "noise") -> None:
        super().__init__(n)
        if pattern not in ("noise", "abstract"):
            raise InputError(f"trigger-set: unknown pattern {pattern!r}; use noise or abstract")
        self.pattern = pattern

    @property
    def params(self) -> dict[str, str]:
        return {**super().params, "pattern": self.pattern}

    def make_inputs(
        self, key: WatermarkKey, input_shape: tuple[int, ...], data: Dataset | None
    ) -> np.ndarray:
        c, h, w = input_shape
        stream = key.stream("inputs", self.name)
        if self.pattern == "noise":
            return stream.uniform(self.n * c * h * w).reshape(self.n, c, h, w)
        # abstract: per probe a g x g grid (g in 2..4) of grey levels, nearest-upsampled.
        out = np.empty((self.n, c, h, w), dtype=np.float32)
        for i in range(self.n):
            g = 2 + int(stream.integers(1, 3)[0])
            grid = stream.uniform(c * g * g).reshape(c, g, g)
            rows = (np.arange(h) * g) // h
            cols = (np.arange(w) * g) // w
            out[i] = grid[:, rows][:, :, cols]
        return out
