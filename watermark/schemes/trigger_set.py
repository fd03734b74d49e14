"""Trigger set of Adi et al., "Turning Your Weakness Into a Strength" (USENIX Security 2018).

Out-of-distribution inputs (here derived from the key rather than drawn from a
fixed image pool) with labels drawn uniformly at random; the model memorises
them during training. Patterns: ``noise`` (each value uniform on the input
range, any shape) and ``abstract`` (a coarse random grid of levels in the
range, upsampled, like the abstract images of the paper; ``[C, H, W]`` images
or ``g`` blocks of a flat ``[D]`` vector). Both are data-free rules of
:mod:`core.derive`, so an opened derivation key re-derives inputs and labels.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from core.data import Dataset
from core.derive import InputRule, derive_input
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

    @property
    def input_rule(self) -> InputRule:
        return "uniform-noise/v1" if self.pattern == "noise" else "abstract-blocks/v1"

    def make_inputs(
        self, key: WatermarkKey, input_shape: tuple[int, ...], data: Dataset | None,
        input_range: InputRange,
    ) -> np.ndarray:
        derivation_key = key.derivation_key(self.name)
        return np.stack([
            derive_input(derivation_key, i, self.input_rule, input_shape, input_range.low, input_range.high)
            for i in range(self.n)
        ])
