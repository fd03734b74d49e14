"""The interface every watermark scheme implements.

A scheme turns a :class:`~watermark.keys.WatermarkKey` (and, for schemes that
stamp in-distribution inputs, the owner's training data) into a
:class:`~core.probeset.ProbeSet`. Labels are drawn uniformly by the set's
derivation key (:meth:`WatermarkKey.derivation_key`, :func:`core.derive.derive_label`),
independently of the inputs, so the null is exactly ``Binomial(1/C)``
(DESIGN.md, "The shared concept: ProbeSet"); the set's
:class:`~core.derive.Derivation` lets a checker re-derive them once the key is opened.

Inputs lie in the model's input range (:class:`~core.inputrange.InputRange`,
[0, 1] unless told otherwise), which the probe set records. A scheme that
cannot mark inputs of some shape says so with an :class:`InputError`.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from core.data import Dataset
from core.derive import Derivation, InputRule, derive_labels, key_commitment
from core.errors import InputError
from core.inputrange import UNIT, InputRange
from core.probeset import SALT_SIZE, Binomial, ProbeSet
from watermark.hook import WatermarkHook
from watermark.keys import WatermarkKey

__all__ = ["EXPOSURES", "Scheme", "default_per_batch", "keeps_batch_size", "mixing_for_run"]


EXPOSURES = 90
"""Times :func:`default_per_batch` has each probe seen over a training run, where the run is known.

Measured on Fashion-MNIST (``convnet``, 10 epochs of 235 batches, 300 noise
triggers; ``benchmarks/embed.py``): seen 47 times each (6 per batch) the
marked model recalled 97.0% of them; 70 times (9 per batch) 95.3% and 100.0%
with two keys; 78 (10 per batch) and 94 (12 per batch) 100%.
"""


def default_per_batch(n: int, steps: int | None = None) -> int:
    """Probes mixed into each training batch for a set of ``n`` over ``steps`` training batches.

    At most 6 per 100 probes (at least 6): 6 per batch embeds 100 triggers to
    100% in 30 epochs of 64 on ``digits`` (450 batches, each probe seen 27
    times; ``benchmarks/embed.py``), and scaling with ``n`` keeps that for a
    larger set. A longer run needs fewer per batch for each probe to be seen
    as often as it needs: where ``steps`` (epochs x batches per epoch) is
    known, just enough for :data:`EXPOSURES` sightings each, at least 2. On
    Fashion-MNIST (10 epochs of 235 batches) that is 12 per batch for 300
    probes, not 18: two thirds of the extra training cost.
    """
    cap = max(6, math.ceil(6 * n / 100))
    if steps is None:
        return cap
    return min(cap, max(2, math.ceil(EXPOSURES * n / max(1, steps))))


def keeps_batch_size(per_batch: int, batch_size: int) -> bool:
    """Whether ``wm train`` puts ``per_batch`` probes in place of as many of a batch's
    ``batch_size`` examples (:class:`~watermark.hook.WatermarkHook`'s ``keep_batch_size``)
    rather than after them: where they are at most a tenth of the batch.

    Appending costs time in proportion to the extra examples; taking their
    place costs the examples left out, which a tenth of the batch or less
    barely does. Measured on Fashion-MNIST (``convnet``, 10 epochs of 128, 300
    triggers, the same key): 12 per batch in place, clean accuracy 0.9148 as
    unmarked and watermark 99.7% at 0.98x the CPU; appended, 0.9128 and 100%
    at 1.08x (``benchmarks/embed.py``). On ``digits`` (18 in 64) they are
    appended.
    """
    return 10 * per_batch <= batch_size


def mixing_for_run(scheme: Scheme, n: int, *, train_size: int, epochs: int, batch_size: int,
                   per_batch: int | None = None) -> tuple[int, bool]:
    """How ``wm train`` mixes ``scheme``'s ``n`` probes into a run: probes per batch (``per_batch``
    if given, else the scheme's default for the run's batches) and whether they take the place
    of as many examples (:func:`keeps_batch_size`)."""
    steps = epochs * -(-train_size // batch_size)  # batches in the whole run
    k = per_batch or scheme.default_per_batch(n, steps)
    return k, keeps_batch_size(k, batch_size)


class Scheme(ABC):
    """A watermark scheme: key (+ data) in, probe set out."""

    family: ClassVar[str]
    needs_data: ClassVar[bool] = False
    mixes: ClassVar[bool] = True
    """Whether the hook mixes examples into each batch (``--per-batch`` applies); dark marks do not."""

    def __init__(self, n: int) -> None:
        if not 1 <= n <= 100_000:
            raise InputError(f"{self.family}: n must be between 1 and 100000, got {n}")
        self.n = n

    @property
    def params(self) -> dict[str, str]:
        """Every parameter that shapes the probes, as strings."""
        return {"n": str(self.n)}

    @property
    def name(self) -> str:
        """Canonical name: family then ``key=value`` parameters, sorted, ``:``-separated."""
        return ":".join([self.family, *(f"{k}={v}" for k, v in sorted(self.params.items()))])

    @property
    def input_rule(self) -> InputRule:
        """How the inputs follow from the key: a data-free rule of :mod:`core.derive`, or ``committed``."""
        return "committed"

    @abstractmethod
    def make_inputs(
        self, key: WatermarkKey, input_shape: tuple[int, ...], data: Dataset | None,
        input_range: InputRange,
    ) -> np.ndarray:
        """The probe inputs, float32 ``[n, *input_shape]`` in ``input_range``.

        Raises:
            InputError: if the scheme cannot mark inputs of ``input_shape``.
        """

    def probes(
        self,
        key: WatermarkKey,
        *,
        num_classes: int,
        input_shape: tuple[int, ...],
        data: Dataset | None = None,
        input_range: InputRange = UNIT,
    ) -> ProbeSet:
        """The scheme's probe set for ``key``: inputs, key-random labels, salts, exact null.

        Args:
            key: the watermark key.
            num_classes: the task's class count ``C`` (labels are uniform on it).
            input_shape: one input's shape, ``[C, H, W]`` or ``[D]``.
            data: the owner's training data (for schemes that stamp it).
            input_range: where the model's inputs lie (the data's range; [0, 1]
                for the built-in sets): every probe value is drawn or clipped in it.
        """
        if self.needs_data and (data is None or len(data) == 0):
            raise InputError(f"{self.family} marks stamp the owner's training data; none given")
        if num_classes < 2:
            raise InputError("a watermark needs at least two classes")
        if data is not None and len(data) and tuple(data.input_shape) != tuple(input_shape):
            raise InputError(f"{self.family}: the data's inputs are {list(data.input_shape)}, "
                             f"not {list(input_shape)}")
        x = self.make_inputs(key, tuple(input_shape), data, input_range)
        if x.dtype != np.float32 or x.shape != (self.n, *input_shape):
            raise AssertionError(f"{self.family} made inputs of shape {x.shape}")
        derivation_key = key.derivation_key(self.name)
        labels = derive_labels(derivation_key, self.n, num_classes)
        salt_bytes = key.stream("salts", self.name).read(SALT_SIZE * self.n)
        salts = tuple(salt_bytes[i * SALT_SIZE : (i + 1) * SALT_SIZE] for i in range(self.n))
        return ProbeSet(
            inputs=torch.from_numpy(np.ascontiguousarray(x)),
            expected=torch.from_numpy(labels),
            kind="watermark",
            scheme=self.name,
            null=Binomial(1.0 / num_classes),
            num_classes=num_classes,
            salts=salts,
            input_range=input_range,
            derivation=Derivation(key_commitment(derivation_key), "uniform/v1", self.input_rule,
                                  input_range.low, input_range.high),
            derivation_key=derivation_key,
        )

    def default_per_batch(self, n: int, steps: int | None = None) -> int:
        """Examples :meth:`hook` appends to each batch unless told otherwise, for a set of ``n``
        over ``steps`` training batches (where known).

        Here :func:`watermark.schemes.default_per_batch`; schemes whose hook
        trains differently (fresh composites, margin steps) say their own.
        """
        return default_per_batch(n, steps)

    def hook(self, probes: ProbeSet, *, key: WatermarkKey, model: nn.Module, data: Dataset | None,
             per_batch: int = 6) -> WatermarkHook:
        """The training hook that embeds ``probes`` (made by this scheme from ``key``) in ``model``.

        Here: :class:`~watermark.hook.WatermarkHook`, which mixes the probes
        into each batch as they are. Schemes that need the model (gradient
        steps on their probes) or the data (re-drawn training examples, marks
        on ordinary inputs) return their own subclass.

        Args:
            probes: this scheme's probe set for ``key``.
            key: the watermark key that made ``probes``.
            model: the network the hook's batches will train.
            data: the owner's training data, as given to :meth:`probes`.
            per_batch: examples appended to each batch.
        """
        return WatermarkHook(probes, per_batch=per_batch)

    def _image_shape(self, input_shape: tuple[int, ...]) -> tuple[int, int, int]:
        """``(C, H, W)``, or :class:`InputError` for a scheme that marks images only."""
        if len(input_shape) != 3:
            raise InputError(f"{self.family} marks need image inputs [C, H, W], got {list(input_shape)}",
                             hint="for flat features use trigger-set or noise")
        c, h, w = input_shape
        return c, h, w

    def _select_sources(self, key: WatermarkKey, data: Dataset) -> np.ndarray:
        """``n`` in-distribution inputs chosen by the key (with replacement if data is small)."""
        x = data.x.numpy()
        if len(x) >= self.n:
            idx = key.stream("select", self.name).permutation(len(x))[: self.n]
        else:
            idx = key.stream("select", self.name).integers(self.n, len(x))
        return np.ascontiguousarray(x[idx], dtype=np.float32)
