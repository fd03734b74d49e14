"""Weight quantisation and weight noise after Lukas et al.'s SoK (S&P 2022), Table II.

Both change every weight a little without any data: rounding to integer
levels (what int8 deployment does) or adding Gaussian noise scaled to each
tensor's own spread.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from attacks.base import fmt, trainable_copy, weighted_layers
from core.data import Dataset
from core.errors import InputError

__all__ = ["Quantize", "WeightNoise"]


@dataclass(frozen=True)
class Quantize:
    """Weight quantisation (SoK, Table II): weights rounded to signed integer levels.

    Each conv / dense weight tensor ``W`` becomes ``s * clamp(round(W / s), -L, L)``
    with ``L = 2^(bits-1) - 1`` and one scale ``s = max|W| / L`` per tensor
    (symmetric, per-tensor: the cruder, stronger variant). Biases stay in
    float, as int8 inference keeps them at higher precision; activations are
    computed in float, which is what a de-quantised model serves.

    Attributes:
        bits: bit width (8 for int8).
    """

    bits: int = 8

    def __post_init__(self) -> None:
        if not 2 <= self.bits <= 16:
            raise InputError(f"bits must be between 2 and 16, got {self.bits}")

    @property
    def levels(self) -> int:
        """The largest integer level ``L`` (127 for int8)."""
        return 2 ** (self.bits - 1) - 1

    @property
    def name(self) -> str:
        """``quantize:bits=...:scale=per-tensor``."""
        return f"quantize:bits={self.bits}:scale=per-tensor"

    @torch.no_grad()
    def __call__(self, model: nn.Module, data: Dataset | None = None, *, seed: int = 0) -> nn.Module:
        """A quantised copy of ``model`` (``data`` and ``seed`` are not used)."""
        out = trainable_copy(model)
        for layer in weighted_layers(out):
            w = layer.weight
            top = float(w.abs().max())
            if top == 0.0:
                continue
            scale = top / self.levels
            w.copy_(torch.clamp(torch.round(w / scale), -self.levels, self.levels) * scale)
        return out.eval()


@dataclass(frozen=True)
class WeightNoise:
    """Weight shifting by Gaussian noise (SoK, Table II, "adding noise").

    Every conv / dense weight tensor ``W`` gets independent noise
    ``N(0, (scale * std(W))^2)`` drawn from ``seed``.

    Attributes:
        scale: noise standard deviation relative to each tensor's own.
    """

    scale: float = 0.1

    def __post_init__(self) -> None:
        if not self.scale >= 0:
            raise InputError(f"the noise scale must be non-negative, got {self.scale}")

    @property
    def name(self) -> str:
        """``noise:scale=...``."""
        return f"noise:scale={fmt(self.scale)}"

    @torch.no_grad()
    def __call__(self, model: nn.Module, data: Dataset | None = None, *, seed: int) -> nn.Module:
        """A noisy copy of ``model`` (``data`` is not used)."""
        out = trainable_copy(model)
        gen = torch.Generator().manual_seed(seed)
        for layer in weighted_layers(out):
            w = layer.weight
            noise = torch.randn(w.shape, generator=gen, dtype=w.dtype)
            w.add_(noise * (self.scale * float(w.std())))
        return out.eval()
