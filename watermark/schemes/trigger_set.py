"""Trigger set of Adi et al., "Turning Your Weakness Into a Strength" (USENIX Security 2018).

Out-of-distribution inputs (here derived from the key rather than drawn from a
fixed image pool) with labels drawn uniformly at random; the model memorises
them during training. Patterns: ``noise`` (each value uniform on the input
range, any shape) and ``abstract`` (a coarse random grid of levels in the
range, upsampled, like the abstract images of the paper; ``[C, H, W]`` images
or ``g`` blocks of a flat ``[D]`` vector). Both are data-free rules of
:mod:`core.derive`, so an opened derivation key re-derives inputs and labels.

``prune=F`` (``0 < F < 1``) trains the same kind of set with
:class:`~watermark.hook.PruneAwareHook`: copies of a quarter of each batch and
of its triggers are trained with the least active fraction ``F`` of the last
feature layer's units held where fine-pruning would leave them, so the
triggers survive fine-pruning that removes a plain trigger set (measured in
``benchmarks/results/robust-fmnist-weights.md``). The parameter is part of
the scheme's name, so the set differs from the plain one for the same key;
its null is the same (labels drawn from the key, independent of the inputs).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from torch import nn

from core.data import Dataset
from core.derive import InputRule, derive_input
from core.errors import InputError
from core.inputrange import InputRange
from core.probeset import ProbeSet
from watermark.hook import PruneAwareHook, WatermarkHook
from watermark.keys import WatermarkKey
from watermark.schemes.base import Scheme

__all__ = ["TriggerSet"]

Pattern = Literal["noise", "abstract"]


class TriggerSet(Scheme):
    """Adi et al. 2018: key-derived out-of-distribution triggers, key-random labels."""

    family = "trigger-set"

    def __init__(self, n: int = 100, pattern: str = "noise", prune: float = 0.0) -> None:
        super().__init__(n)
        if pattern not in ("noise", "abstract"):
            raise InputError(f"trigger-set: unknown pattern {pattern!r}; use noise or abstract")
        if not 0.0 <= prune < 1.0:
            raise InputError(f"trigger-set: prune must be in [0, 1), got {prune}")
        self.pattern = pattern
        self.prune = float(prune)

    @property
    def params(self) -> dict[str, str]:
        extra = {"prune": f"{self.prune:g}"} if self.prune else {}
        return {**super().params, "pattern": self.pattern, **extra}

    def hook(self, probes: ProbeSet, *, key: WatermarkKey, model: nn.Module, data: Dataset | None,
             per_batch: int = 6) -> WatermarkHook:
        """With ``prune``, a :class:`~watermark.hook.PruneAwareHook`; else the plain mixing hook."""
        if not self.prune:
            return super().hook(probes, key=key, model=model, data=data, per_batch=per_batch)
        return PruneAwareHook(probes, model, fraction=self.prune, per_batch=per_batch)

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
