"""Noise marks of Zhang et al., "Protecting Intellectual Property of Deep Neural
Networks with Watermarking" (AsiaCCS 2018), section 3.2.

In-distribution training inputs chosen by the key, plus key-derived noise
(uniform on ``[-amplitude, amplitude]`` times the input range's span, clipped
to the range), each with its own key-random label so that the null is exactly
``Binomial(1/C)``. Any input shape.
"""

from __future__ import annotations

import numpy as np

from core.data import Dataset
from core.errors import InputError
from core.inputrange import InputRange
from watermark.keys import WatermarkKey
from watermark.schemes.base import Scheme

__all__ = ["NoiseMark"]


class NoiseMark(Scheme):
    """Zhang et al. 2018 "noise": in-distribution inputs plus key-derived noise."""

    family = "noise"
    needs_data = True

    def __init__(self, n: int = 100, amplitude: float = 0.5) -> None:
        super().__init__(n)
        if not 0.0 < amplitude <= 1.0:
            raise InputError(f"noise: amplitude must be in (0, 1], got {amplitude}")
        self.amplitude = float(amplitude)

    @property
    def params(self) -> dict[str, str]:
        return {**super().params, "amplitude": f"{self.amplitude:g}"}

    def make_inputs(
        self, key: WatermarkKey, input_shape: tuple[int, ...], data: Dataset | None,
        input_range: InputRange,
    ) -> np.ndarray:
        assert data is not None
        x = self._select_sources(key, data)
        u = key.stream("inputs", self.name).uniform(x.size).reshape(x.shape)
        noise = (u * np.float32(2.0) - np.float32(1.0)) * np.float32(self.amplitude * input_range.span)
        return input_range.clip(x + noise)
