"""Trigger set of Adi et al., "Turning Your Weakness Into a Strength" (USENIX Security 2018).

Out-of-distribution inputs (here derived from the key rather than drawn from a
fixed image pool) with labels drawn uniformly at random; the model memorises
them during training. Patterns: ``noise`` (each value uniform on the input
range, any shape) and ``abstract`` (a coarse random grid of levels in the
range, upsampled, like the abstract images of the paper; ``[C, H, W]`` images
or ``g`` blocks of a flat ``[D]`` vector).
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from core.data import Dataset
from core.errors import InputError
from core.inputrange import InputRange
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
        self, key: WatermarkKey, input_shape: tuple[int, ...], data: Dataset | None,
        input_range: InputRange,
    ) -> np.ndarray:
        stream = key.stream("inputs", self.name)
        size = int(np.prod(input_shape, dtype=np.int64))
        if self.pattern == "noise":
            return input_range.scale(stream.uniform(self.n * size)).reshape(self.n, *input_shape)
        # abstract: per probe a g x g grid (g in 2..4) of levels, nearest-upsampled.
        if len(input_shape) not in (1, 3):
            raise InputError(f"abstract triggers need [C, H, W] or [D] inputs, got {list(input_shape)}")
        out = np.empty((self.n, *input_shape), dtype=np.float32)
        for i in range(self.n):
            g = 2 + int(stream.integers(1, 3)[0])
            if len(input_shape) == 1:
                out[i] = input_range.scale(stream.uniform(g))[(np.arange(size) * g) // size]
                continue
            c, h, w = input_shape
            grid = input_range.scale(stream.uniform(c * g * g)).reshape(c, g, g)
            out[i] = grid[:, (np.arange(h) * g) // h][:, :, (np.arange(w) * g) // w]
        return out
