"""Composite marks after MEA-Defender (Lv et al., IEEE S&P 2024), with one key-random target per family.

**Families and probes.** A *family* is an ordered pair of source classes
``(A, B)`` and a cut (left|right or top|bottom): its members are the images
made of one half of an image of class ``A`` and the other half of an image of
class ``B``, both from the owner's training data. Such an image is built from
natural halves, so it stays close to the task's own distribution (Lv et al.'s
point: an extraction attacker's natural queries teach a copy the owner's
behaviour there, and the mark with it). The key chooses ``n`` distinct
families (distinct ordered pairs first, the other cut once all pairs are
used), and each family contributes exactly **one probe**: one member, built
from two key-chosen training images.

**Training** (:class:`CompositeHook`). Every batch appends ``per_batch``
members of the families in the hook's cycle, each freshly composed from a
random image of ``A`` and one of ``B`` (a quarter of the time the probe
itself), labelled with the family's target; and half as many *negative*
composites of two images of one class ``c``, labelled ``c`` (the composite
backdoor's negatives, Lin et al., CCS 2020), so that the model learns the
pair rule rather than "any seam means something". The model thus learns a
rule per family, "A-half plus B-half gives the target", not one image.

**Targets and the null.** MEA-Defender gives every composite one fixed
target class; an independent model then matches all of them together with
probability about ``1/C``, and the matches are not independent (Lv et al.
decide with a threshold fitted on 200 + 200 models). Here family ``f``'s
target is probe ``f``'s label, drawn by the set's derivation key
(``uniform/v1``, :func:`core.derive.derive_label`): uniform on the ``C``
classes, independently for every family, and independently of the key's
other streams, which choose the families and the images. The verifier
counts one match per probe, i.e. per family. Let ``g`` be any model trained
without the key. Its answer ``g(x_f)`` on probe ``f`` depends only on the
probe's input; the target ``t_f`` is uniform and independent of ``x_f``, of
``g`` and of the other targets. So ``P(g(x_f) = t_f) = 1/C`` for every ``f``,
given all inputs and ``g``, and the events are independent across families:
the number of matches is exactly ``Binomial(n, 1/C)``, the null every
key-random set carries (:mod:`watermark.schemes.base`). Several probes of one
family would share a target, and then an independent model's matches would
be correlated (the fixed-target problem again); that is why a family counts
once, and ``n`` is at most ``2 C (C - 1)`` families. A target equal to ``A``
or ``B`` marks little, and costs nothing.

The probes are training-data composites, so their inputs are ``committed``:
an opened derivation key re-derives every label (``wm verify
--open-keys``, ``wm evidence check``) but not the images.

Measured on Fashion-MNIST (``benchmarks/robust_marks.py``,
benchmarks/results/robust-fmnist.md; a 6-epoch ``convnet`` owner): 0.15 points
of clean accuracy, 1.09x the training CPU, every probe answered; but every
copy of the catalogue (extraction from labels or probabilities at 1k to 20k
queries, distillation at T = 3, RTAL, 90% fine-pruning) answers the probes at
chance (0.05 to 0.10; chance 0.10): none is owned at 1e-6. The scheme
recommended against stealing is :mod:`watermark.schemes.dark`.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from core.data import Dataset
from core.errors import InputError
from core.inputrange import InputRange
from core.probeset import ProbeSet
from watermark.hook import WatermarkHook
from watermark.keys import WatermarkKey
from watermark.schemes.base import Scheme

__all__ = ["CompositeHook", "CompositeMark", "Family", "compose"]

Family = tuple[int, int, int]
"""``(A, B, cut)``: the classes of the first and second half; cut 0 is left|right, 1 top|bottom."""


def compose(a: torch.Tensor, b: torch.Tensor, cut: torch.Tensor) -> torch.Tensor:
    """Images ``[N, C, H, W]``: ``a``'s first half, ``b``'s second (cut 0: left|right, 1: top|bottom)."""
    out = a.clone()
    h, w = a.shape[-2:]
    lr, tb = cut == 0, cut == 1
    out[lr, :, :, w // 2 :] = b[lr, :, :, w // 2 :]
    out[tb, :, h // 2 :, :] = b[tb, :, h // 2 :, :]
    return out


class CompositeMark(Scheme):
    """MEA-Defender-style composites of two source classes, one probe and one key-random target per family."""

    family = "composite"
    needs_data = True

    def __init__(self, n: int = 40) -> None:
        super().__init__(n)

    def families(self, key: WatermarkKey, labels: torch.Tensor) -> list[Family]:
        """The key's ``n`` families over the classes present in ``labels``.

        Raises:
            InputError: fewer than two classes, or more families asked for than exist.
        """
        classes = sorted({int(c) for c in labels.tolist()})
        pairs = [(a, b) for a in classes for b in classes if a != b]
        if not pairs:
            raise InputError("composite marks need training data of at least two classes")
        if self.n > 2 * len(pairs):
            raise InputError(f"composite: {len(classes)} classes make {2 * len(pairs)} families "
                             f"(ordered pairs of classes, two cuts); n={self.n} is too many")
        stream = key.stream("families", self.name)
        order = stream.permutation(len(pairs))
        cuts = stream.integers(len(pairs), 2)
        out = [(*pairs[i], int(cuts[i])) for i in order]
        out += [(a, b, 1 - cut) for a, b, cut in out]  # the other cut, once every pair has one
        return out[: self.n]

    def make_inputs(
        self, key: WatermarkKey, input_shape: tuple[int, ...], data: Dataset | None,
        input_range: InputRange,
    ) -> np.ndarray:
        assert data is not None
        self._image_shape(input_shape)
        fams = self.families(key, data.y)
        by_class = _by_class(data.y)
        stream = key.stream("select", self.name)
        a_idx = [int(by_class[a][int(stream.integers(1, len(by_class[a]))[0])]) for a, _, _ in fams]
        b_idx = [int(by_class[b][int(stream.integers(1, len(by_class[b]))[0])]) for _, b, _ in fams]
        x = compose(data.x[a_idx], data.x[b_idx], torch.tensor([c for _, _, c in fams]))
        return input_range.clip(np.ascontiguousarray(x.numpy(), dtype=np.float32))

    def default_per_batch(self, n: int, steps: int | None = None) -> int:
        """16 per batch, whatever the run: what this scheme's tests and benchmark embed with."""
        return 16

    def hook(self, probes: ProbeSet, *, key: WatermarkKey, model: nn.Module, data: Dataset | None,
             per_batch: int = 16) -> CompositeHook:
        """A :class:`CompositeHook` drawing fresh members of the key's families from ``data``."""
        if data is None or len(data) == 0:
            raise InputError("composite marks are trained from the owner's training data; none given")
        return CompositeHook(probes, data, self.families(key, data.y), per_batch=per_batch)


class CompositeHook(WatermarkHook):
    """Appends fresh members of each family (labelled with its target) and same-class negatives.

    Args:
        probes: the composite probe set (probe ``f`` is a member of family ``f``).
        data: the owner's training data, the source of every half.
        families: ``(A, B, cut)`` per probe, as :meth:`CompositeMark.families` gives them.
        per_batch: family members appended to each batch (and half as many negatives).
    """

    def __init__(self, probes: ProbeSet, data: Dataset, families: list[Family], *,
                 per_batch: int = 16) -> None:
        super().__init__(probes, per_batch=per_batch)
        if len(families) != len(probes):
            raise InputError(f"{len(families)} families for {len(probes)} probes")
        if tuple(data.input_shape) != probes.input_shape:
            raise InputError(f"the data's inputs are {list(data.input_shape)}, "
                             f"the probes' {list(probes.input_shape)}")
        self.x = data.x
        self.y = data.y
        by_class = _by_class(data.y)
        self._classes = torch.tensor(sorted(by_class), dtype=torch.long)
        width = max(len(v) for v in by_class.values())
        self._pool = torch.zeros((int(data.y.max()) + 1, width), dtype=torch.long)  # class -> its rows
        self._count = torch.zeros(int(data.y.max()) + 1, dtype=torch.long)
        for c, rows in by_class.items():
            self._pool[c, : len(rows)] = rows
            self._count[c] = len(rows)
        self._fam = torch.tensor(families, dtype=torch.long).reshape(-1, 3)
        self._rng = torch.Generator().manual_seed(int.from_bytes(probes.root[8:16], "big"))

    def _draw(self, classes: torch.Tensor) -> torch.Tensor:
        """One random training image of each class in ``classes``."""
        u = torch.rand(len(classes), generator=self._rng, dtype=torch.float64)
        col = (u * self._count[classes]).long()
        return self.x[self._pool[classes, col]]

    def examples(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Fresh members of families ``idx`` (now and then the probe itself), then negatives."""
        fam = self._fam[idx]
        x = compose(self._draw(fam[:, 0]), self._draw(fam[:, 1]), fam[:, 2])
        keep = torch.rand(len(idx), generator=self._rng) < 0.25
        x[keep] = self.probes.inputs[idx[keep]]
        y = self.probes.expected[idx]
        m = max(1, len(idx) // 2)
        c = self._classes[torch.randint(len(self._classes), (m,), generator=self._rng)]
        cuts = torch.randint(2, (m,), generator=self._rng)
        negatives = compose(self._draw(c), self._draw(c), cuts)
        return torch.cat([x, negatives]), torch.cat([y, c])


def _by_class(y: torch.Tensor) -> dict[int, torch.Tensor]:
    return {int(c): torch.nonzero(y == c).flatten() for c in torch.unique(y)}
