"""Dark-knowledge marks: a key-random second choice on every natural input, read as a suspect's runner-up.

A thief who extracts a model through its API, or distils stolen weights,
trains a copy on the owner's answers to *natural* inputs. A mark that lives on
inputs the thief never sends (a trigger, a composite, a margin point) reaches
the copy only by accident (``benchmarks/results/robust-fmnist.md``: composite
and margin marks at chance after extraction and distillation). This scheme
puts the mark where the thief looks: in the owner's answers to ordinary
inputs, in the part of them a probability API and a distillation loss pass on
(Hinton et al.'s "dark knowledge": the relative scores of the wrong classes).

**Cells and probes.** The owner's training images of each class ``c`` are
split into cells by k-means (on 2x2-pooled inputs, seeded by the key); the
``n`` cells are shared among the classes as evenly as possible. Each cell's
probe is the training image nearest its centre (a natural image, so the
inputs are ``committed``), and its label ``t_u`` is drawn by the set's
derivation key (``uniform/v1``, as for every key-random set). Once made, the
probes *are* the cells: an input of class ``c`` belongs to the cell of the
nearest probe of class ``c`` (:meth:`DarkHook.cells`).

**Training** (:class:`DarkHook`). Every training example of class ``c`` in
cell ``u`` is given the soft target ``(1 - mass)`` on ``c`` and ``mass`` on
``t_u`` (just ``c`` where ``t_u = c``): label smoothing aimed at one
key-random class per cell. Nothing is appended and no step costs more; the
loss must take probability targets, as ``torch.nn.functional.cross_entropy``
does. The owner's top answer stays ``c`` (``mass < 1/2``); its runner-up on
the cell becomes ``t_u``, on every natural image of the cell, so any copy
trained on the owner's probabilities or soft labels learns it.

**Reading and the null.** A suspect answers probe ``u`` with its **second
choice**, the class of its second-highest score (:func:`core.probeset.answer_rank`
is 2 for this family; the verifier reads it from probability or logit
answers and counts a label-only answer as a miss). Let ``g`` be any model
trained without the key: its second choice ``s_g(x_u)`` depends only on the
probe's input, which the key's selection stream chose, while ``t_u`` is
uniform on the ``C`` classes and independent of ``x_u``, of ``g`` and of the
other labels. So ``P(s_g(x_u) = t_u) = 1/C`` for every cell, the events are
independent across cells, and the number of matches is exactly
``Binomial(n, 1/C)``: the null of every key-random set. (A cell whose label
is its own class can match only for a model that misclassifies its probe;
it still counts, at the same 1/C over keys.) Independent models agree on
second choices far more than chance (shirts look like T-shirts to all of
them), which is why the label must be key-random and counted per cell: a
fixed or data-chosen runner-up would be matched by the Rashomon set.

Measured on Fashion-MNIST (``benchmarks/robust_marks.py``,
``benchmarks/results/robust-fmnist.md``; a 6-epoch ``convnet`` owner, 80
cells, mass 0.15): 0.44 to 0.66 points of clean accuracy, no extra training
time; copies extracted through an API answering probabilities (5k and 20k
queries, the owner's architecture or another) and distilled copies (T = 3)
owned at 1e-6 for three owner seeds (p <= 3.6e-11); copies extracted from
labels alone, RTAL and 90% fine-pruning are not (matches 0.09 to 0.16: hard
labels carry no runner-up). No independent control was owned. With mass 0.3
the drop was 3.6 points, with 0.1 a 5k-query copy was not always owned.
Cells need data: on ``digits`` (898 training images) 80 cells cost 4.2
points and 40 cells 0.6 (``benchmarks/embed.py``, ``tests/watermark/test_dark.py``),
so give small data sets fewer cells (``dark:n=40``).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from core.data import Dataset
from core.errors import InputError
from core.inputrange import InputRange
from core.probeset import ProbeSet
from watermark.hook import WatermarkHook
from watermark.keys import WatermarkKey
from watermark.schemes.base import Scheme

__all__ = ["DarkHook", "DarkMark", "features"]

_KMEANS_ITERS = 20


def features(x: torch.Tensor) -> torch.Tensor:
    """What cells are measured on: images ``[N, C, H, W]`` pooled 2x2 (flat features as they are)."""
    x = x.float()
    if x.dim() == 4 and x.shape[-1] >= 2 and x.shape[-2] >= 2:
        x = F.avg_pool2d(x, 2)
    return x.flatten(1)


class DarkMark(Scheme):
    """``n`` cells of the owner's data, each with a key-random runner-up class trained in with ``mass``."""

    family = "dark"
    needs_data = True
    mixes = False

    def __init__(self, n: int = 80, mass: float = 0.15) -> None:
        super().__init__(n)
        if not 0.0 < mass < 0.5:
            raise InputError(f"dark: mass must lie strictly between 0 and 0.5, got {mass}")
        self.mass = mass

    @property
    def params(self) -> dict[str, str]:
        return {"n": str(self.n), "mass": f"{self.mass:g}"}

    def cells_per_class(self, classes: list[int]) -> dict[int, int]:
        """How many of the ``n`` cells each class gets: as even as can be, the first classes one more."""
        base, extra = divmod(self.n, len(classes))
        return {c: base + (i < extra) for i, c in enumerate(classes)}

    def make_inputs(
        self, key: WatermarkKey, input_shape: tuple[int, ...], data: Dataset | None,
        input_range: InputRange,
    ) -> np.ndarray:
        assert data is not None
        classes = sorted({int(c) for c in data.y.tolist()})
        per_class = self.cells_per_class(classes)
        f = features(data.x)
        stream = key.stream("select", self.name)
        rows: list[int] = []
        for c in classes:
            members = torch.nonzero(data.y == c).flatten()
            j = per_class[c]
            if j == 0:
                continue
            if len(members) < j:
                raise InputError(f"dark: class {c} has {len(members)} training examples, "
                                 f"fewer than its {j} cells", hint="choose a smaller n")
            fc = f[members]
            seed = int(stream.integers(1, 2**31)[0])
            centres = _kmeans(fc, j, seed)
            taken: set[int] = set()
            for centre in centres:  # the member nearest each centre, each member at most once
                order = ((fc - centre) ** 2).sum(1).argsort()
                pick = next(int(i) for i in order if int(i) not in taken)
                taken.add(pick)
                rows.append(int(members[pick]))
        x = data.x[torch.tensor(rows)].numpy()
        return input_range.clip(np.ascontiguousarray(x, dtype=np.float32))

    def default_per_batch(self, n: int, steps: int | None = None) -> int:
        """Nothing is mixed in (every example's target is softened); 1 keeps the hook's contract."""
        return 1

    def hook(self, probes: ProbeSet, *, key: WatermarkKey, model: nn.Module, data: Dataset | None,
             per_batch: int = 1) -> DarkHook:
        """A :class:`DarkHook` over the cells of ``probes`` (their classes found in ``data``)."""
        if data is None or len(data) == 0:
            raise InputError("dark marks are trained from the owner's training data; none given")
        return DarkHook(probes, data, mass=self.mass)


class DarkHook(WatermarkHook):
    """Turns a batch's hard labels into soft targets: ``1 - mass`` on the class, ``mass`` on its cell's label.

    Args:
        probes: the dark probe set; probe ``u`` is cell ``u``'s centre.
        data: the owner's training data, in which every probe is one of the images
            (that is how each cell's class is known).
        mass: the probability the target gives the cell's label.
    """

    def __init__(self, probes: ProbeSet, data: Dataset, *, mass: float) -> None:
        super().__init__(probes, per_batch=1)
        if tuple(data.input_shape) != probes.input_shape:
            raise InputError(f"the data's inputs are {list(data.input_shape)}, "
                             f"the probes' {list(probes.input_shape)}")
        self.mass = mass
        self._centres = features(probes.inputs)
        self.classes = _classes_of(probes.inputs, data)
        self.marked = 0  # examples given a softened target so far

    def mixing(self) -> str:
        return f"every example's target softened ({self.mass:g} on its cell's label), nothing added"

    def cells(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Each input's cell (the nearest probe of its class ``y``), or -1 where its class has none."""
        d = torch.cdist(features(x), self._centres)
        d[self.classes[None, :] != y[:, None]] = float("inf")
        u = d.argmin(dim=1)
        return torch.where(torch.isfinite(d.min(dim=1).values), u, torch.full_like(u, -1))

    def targets(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Soft targets ``[N, C]`` for a batch with hard labels ``y``."""
        u = self.cells(x, y)
        soft = F.one_hot(y, self.probes.num_classes).to(torch.float32)
        has = u >= 0
        t = self.probes.expected[u.clamp(min=0)]
        moved = has & (t != y)
        rows = torch.nonzero(moved).flatten()
        soft[rows, y[rows]] -= self.mass
        soft[rows, t[rows]] += self.mass
        self.marked += int(moved.sum())
        return soft

    def mix(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch as it is, with soft targets ``[N, C]`` (float32, on ``y``'s device) for its labels."""
        self._check_inputs(x)
        if y.dtype.is_floating_point or y.dim() != 1:
            raise InputError("the dark-knowledge hook needs hard labels, an integer tensor [N]")
        soft = self.targets(x.detach().cpu(), y.detach().cpu().long())
        return x, soft.to(device=y.device)


def _classes_of(inputs: torch.Tensor, data: Dataset) -> torch.Tensor:
    """The class of each probe, found as the training example it is (fail closed if one is not)."""
    f = features(inputs)
    d, j = (torch.cdist(f, features(data.x)) ** 2).min(dim=1)
    off = d > 1e-6 * (f**2).sum(1).clamp(min=1.0)
    if bool(off.any()):
        raise InputError(f"dark: probe {int(off.nonzero()[0])} is not one of the training examples given; "
                         "train with the data its probes were made from")
    return data.y[j].to(torch.int64)


def _kmeans(x: torch.Tensor, j: int, seed: int) -> torch.Tensor:
    """``j`` k-means centres of ``x`` (Lloyd's algorithm from ``j`` seeded rows)."""
    g = torch.Generator().manual_seed(seed)
    centres = x[torch.randperm(len(x), generator=g)[:j]].clone()
    for _ in range(_KMEANS_ITERS):
        assign = torch.cdist(x, centres).argmin(dim=1)
        for i in range(j):
            members = x[assign == i]
            if len(members):
                centres[i] = members.mean(dim=0)
    return centres
