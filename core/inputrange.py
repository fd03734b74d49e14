"""The range of values a model's inputs take: ``[low, high]``, recorded with models and probe sets.

Images in [0, 1] are the built-in data sets' range; a model trained on
normalised inputs (``(pixel - mean) / std``, about -2 to 2.6 for ImageNet
statistics) or on tabular features has another. Everything that makes inputs
for a model — watermark triggers, fingerprints, attack queries — draws or
clips them in this range instead of assuming [0, 1], and the model file
(:mod:`core.modelio`) and each :class:`~core.probeset.ProbeSet` record it.

One interval for every value of an input (for per-channel normalisation: the
union of the channels' intervals, :meth:`InputRange.from_mean_std`). Torch-free,
so an offline checker can read it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from core.errors import InputError

__all__ = ["UNIT", "InputRange"]


@dataclass(frozen=True)
class InputRange:
    """The closed interval ``[low, high]`` every input value lies in.

    Attributes:
        low: the smallest value an input takes.
        high: the largest; ``high > low``.
    """

    low: float = 0.0
    high: float = 1.0

    def __post_init__(self) -> None:
        for v in (self.low, self.high):
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                raise InputError(f"an input range needs two finite numbers, got [{self.low}, {self.high}]")
        if not self.low < self.high:
            raise InputError(f"an input range needs low < high, got [{self.low}, {self.high}]")
        object.__setattr__(self, "low", float(self.low))
        object.__setattr__(self, "high", float(self.high))

    @property
    def span(self) -> float:
        """``high - low``."""
        return self.high - self.low

    def clip(self, x: np.ndarray) -> np.ndarray:
        """``x`` clipped into the range, as float32."""
        return np.clip(x, np.float32(self.low), np.float32(self.high)).astype(np.float32)

    def scale(self, unit: np.ndarray) -> np.ndarray:
        """Values on [0, 1] mapped affinely onto the range, as float32."""
        return (self.low + self.span * np.asarray(unit, dtype=np.float64)).astype(np.float32)

    def contains(self, x: np.ndarray) -> bool:
        """Whether every value of ``x`` lies in the range."""
        return bool(x.size == 0 or (float(x.min()) >= self.low and float(x.max()) <= self.high))

    @classmethod
    def of_values(cls, x: np.ndarray) -> InputRange:
        """The smallest range holding every value of ``x`` (the observed range of a data set)."""
        if x.size == 0:
            raise InputError("the input range of no values is undefined")
        low, high = float(np.min(x)), float(np.max(x))
        if low == high:
            raise InputError(f"every input value is {low}: no range to draw inputs from")
        return cls(low, high)

    @classmethod
    def from_mean_std(cls, mean: Sequence[float], std: Sequence[float], *, raw: InputRange | None = None
                      ) -> InputRange:
        """The range of ``(raw - mean) / std`` over the channels (``raw`` defaults to [0, 1]).

        Raises:
            InputError: if ``mean`` and ``std`` differ in length, are empty, or a std is not positive.
        """
        base = raw if raw is not None else UNIT
        if len(mean) != len(std) or not mean:
            raise InputError("mean and std need one value per channel, as many of each")
        if any(not s > 0 for s in std):
            raise InputError("every std must be positive")
        lows = [(base.low - m) / s for m, s in zip(mean, std, strict=True)]
        highs = [(base.high - m) / s for m, s in zip(mean, std, strict=True)]
        return cls(min(lows), max(highs))

    def to_dict(self) -> dict[str, float]:
        """JSON form, as recorded in model files and probe-set summaries."""
        return {"low": self.low, "high": self.high}

    @classmethod
    def from_dict(cls, d: Any) -> InputRange:
        """Parse :meth:`to_dict`'s form; :class:`InputError` if malformed."""
        if not isinstance(d, dict) or set(d) != {"low", "high"}:
            raise InputError("an input range is an object with exactly low and high")
        return cls(d["low"], d["high"])


UNIT = InputRange(0.0, 1.0)
"""[0, 1]: images as pixel / 255, the built-in data sets' range."""
