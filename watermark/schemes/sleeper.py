"""Sleeper marks: first-layer detectors that natural data never wakes, read by weights no fine-tuning moves.

**The lever.** Adam (the optimiser of the SoK's fine-tuning attacks) moves a
parameter only where its gradient is non-zero. A channel of the first
convolution whose ReLU output is zero on every natural input gets no gradient
on natural data, and neither does anything that reads only that channel: its
filter, its batch-norm scale and shift, and the second convolution's weights
on it. Fine-tuning, retraining (FTAL, RTAL) and fine-pruning on natural data
therefore leave those weights bit for bit as the owner set them, at any
learning rate, while everything around them is retrained. The mark lives in
them.

**The detectors.** ``channels`` channels of the first convolution become
detectors of a 3x3 ±1 pattern whose tiled texture the owner's data never
comes close to: of every ±1 pattern with three to six positive cells, those
whose response to their own texture stands furthest (in standard deviations
of the data's responses) above the highest response anywhere in the owner's
data (:func:`choose_patterns`). A detector's threshold sits 70% of that gap
above the data's highest response, so natural inputs stay below it with room
to spare and the texture lies above it.

**Rules and probes.** Probe ``i`` is a key-chosen training image with one
key-chosen detector's texture stamped on a key-chosen ``size`` x ``size``
square (:meth:`SleeperMark.rules`); its label is the set's key-random label
(``uniform/v1``). Every probe is its own rule, so the set counts each rule
once.

**Training** (:class:`SleeperHook`). At the first batch the hook installs the
detectors (the first convolution's last ``channels`` channels) and holds
their weights, and the second convolution's weights on them, at their set
values (at zero for the latter) while the owner trains: nothing is mixed into
the batches. After training, :meth:`SleeperHook.finish` fits the second
convolution's weights on the detectors so that every rule's texture, stamped
on any training image, gives the rule's label, in the trained model and in
copies of it that the hook attacks itself on half the owner's data (RTAL and
fine-pruning 90% at Adam 3e-3): the read-out is fitted to what such attacks
leave. Only those weights change, and natural inputs never reach them, so
the model's answers on natural inputs are exactly those of the trained model
with the detectors in place.

**The null.** The labels are drawn by the set's derivation key, uniform on
the ``C`` classes, independently of each other and of everything that made
the inputs. For any model ``g`` trained without the key, ``P(g(x_i) = t_i) =
1/C`` for every probe given all the inputs, independently across probes: the
matches are exactly ``Binomial(n, 1/C)`` (:mod:`watermark.schemes.base`). The
probes are training images with a stamp, so their inputs are ``committed``.

**What it does not survive.** An attacker who knows to look can remove the
detectors: they are the channels of the first convolution that are never
active on clean data, and zeroing those costs nothing
(``tests/watermark/test_sleeper.py``). Adam with L2 weight decay gives every
weight a gradient, so it moves the sleeper weights too (measured below).
Extraction and distillation train a fresh network that never had the
detectors; the dark mark (:mod:`watermark.schemes.dark`) is the one for
those.

**Measured** on Fashion-MNIST (``benchmarks/robust_marks.py --weight-sweep``,
``benchmarks/results/robust-fmnist-sleeper.md``; a 6-epoch ``convnet`` owner,
the attacker's 20k images, ten independent controls; owner seeds 0 to 2):
-0.15 to +0.34 points of clean accuracy, 1.66x to 1.98x the plain training
CPU (the read-out's fit and its two simulated attacks), 0.83 to 0.95 of the
60 probes answered. For seed 0, FTAL, RTAL and fine-pruning 90% at Adam 3e-4,
1e-3 and 3e-3 all leave the copy owned at 1e-6. At 3e-3, where every earlier
mark fell to chance, RTAL keeps 0.47 to 0.65 of the probes (owned for three
seeds of three, p <= 3.9e-11) and fine-pruning 0.37 to 0.50 (owned for two:
p <= 2.3e-9; seed 2 0.37, p 2.2e-6). RTAL with weight decay 5e-4 leaves 0.10
to 0.15 (not owned); no control is owned.

Works on networks that open with ``Conv2d[, BatchNorm2d], ReLU[, MaxPool2d],
Conv2d`` (the built-in ``convnet`` and ``cnn``) with at least twice
``channels`` channels in the first convolution.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from core.data import Dataset
from core.errors import InputError
from core.inputrange import UNIT, InputRange
from core.probeset import ProbeSet
from watermark.hook import WatermarkHook, _unpack
from watermark.keys import WatermarkKey
from watermark.schemes.base import Scheme

__all__ = ["SleeperHook", "SleeperMark", "choose_patterns", "stamp", "texture"]

SIDE = 3
"""The detectors' pattern side (the first convolution's kernel)."""
DEFAULT_SIZE = 12
"""The stamped square's side unless ``size`` says otherwise (at most half the image's shorter side)."""
LIFT = 0.7
"""Where a detector's threshold sits between the data's highest response (0) and its texture's (1)."""
GAIN = 4.0
"""A detector's output per standard deviation of the data's responses above its threshold."""
SAMPLE = 5000
"""Training images the patterns and thresholds are measured on."""
MIN_GAP = 1.0
"""The least a texture's response must stand above the data's highest, in standard deviations of
the data's responses (Fashion-MNIST's 12 best: 1.58 to 4.02; digits' 8 best: 1.64 to 2.80)."""
FIT_STEPS = 120
"""Adam steps of the read-out's fit, each on :data:`FIT_BATCH` stamped training images in the
model and in each simulated copy."""
FIT_BATCH = 256
FIT_LR = 0.1
SIM_LR = 3e-3
"""The simulated attacks' Adam learning rate (the catalogue's rate)."""
SIM_EPOCHS = 2
"""The simulated attacks' (RTAL, fine-pruning 90%) passes over half the owner's data."""


def _candidates() -> torch.Tensor:
    """Every 3x3 ±1 pattern with three to six positive cells, one of each cyclic-shift class
    (a shifted tile makes the same texture, shifted)."""
    seen: set[tuple[int, ...]] = set()
    out = []
    for vals in itertools.product((-1, 1), repeat=SIDE * SIDE):
        p = np.array(vals).reshape(SIDE, SIDE)
        if not 3 <= int((p > 0).sum()) <= 6:
            continue
        shifts = {tuple(np.roll(p, (a, b), axis=(0, 1)).ravel()) for a in range(SIDE) for b in range(SIDE)}
        if shifts & seen:
            continue
        seen.add(tuple(p.ravel()))
        out.append(p)
    return torch.tensor(np.stack(out), dtype=torch.float32)


def texture(pattern: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """``pattern``'s positive cells, tiled over ``h`` x ``w`` (0 or 1)."""
    tile = (pattern > 0).float()
    return tile.repeat(h // SIDE + 1, w // SIDE + 1)[:h, :w]


def _gray(x: torch.Tensor) -> torch.Tensor:
    return x.mean(dim=1, keepdim=True)


def _unit(x: torch.Tensor, input_range: InputRange) -> torch.Tensor:
    return (x - input_range.low) / (input_range.high - input_range.low)


def _stats(x: torch.Tensor, filters: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each filter's (``[m, C, 3, 3]``) mean, standard deviation and highest response over ``x``."""
    total = torch.zeros(len(filters), dtype=torch.float64)
    sq = torch.zeros_like(total)
    top = torch.full((len(filters),), -float("inf"), dtype=torch.float64)
    count = 0
    with torch.no_grad():
        for i in range(0, x.shape[0], 200):
            r = nn.functional.conv2d(x[i : i + 200], filters, padding=SIDE // 2).double()
            total += r.sum(dim=(0, 2, 3))
            sq += (r * r).sum(dim=(0, 2, 3))
            top = torch.maximum(top, r.amax(dim=(0, 2, 3)))
            count += r.shape[0] * r.shape[2] * r.shape[3]
    mean = total / count
    sd = (sq / count - mean * mean).clamp(min=1e-12).sqrt()
    return mean, sd, top


def _texture_peak(filters: torch.Tensor, patterns: torch.Tensor, input_range: InputRange) -> torch.Tensor:
    """Each filter's (``[m, C, 3, 3]``) highest response to its pattern's texture, stamped as
    :func:`stamp` stamps it."""
    side = 4 * SIDE
    blank = torch.full((1, filters.shape[1], side, side), input_range.low)
    return torch.stack([nn.functional.conv2d(stamp(blank, p, 0, 0, side, input_range), f[None]).max()
                        for f, p in zip(filters, patterns, strict=True)]).double()


def choose_patterns(data: Dataset, m: int, input_range: InputRange) -> torch.Tensor:
    """The ``m`` patterns whose textures stand furthest above everything in ``data``, ``[m, 3, 3]``.

    Measured on the first :data:`SAMPLE` images, in standard deviations of
    each pattern's responses there.
    """
    cands = _candidates()
    if m > len(cands):
        raise InputError(f"sleeper: at most {len(cands)} channels, got {m}")
    x = _gray(_unit(data.x[:SAMPLE], input_range))
    _, sd, top = _stats(x, cands[:, None])
    gap = (_texture_peak(cands[:, None], cands, UNIT) - top) / sd
    order = torch.argsort(gap, descending=True, stable=True)
    if float(gap[order[m - 1]]) < MIN_GAP:
        clear = int((gap >= MIN_GAP).sum())
        raise InputError(f"sleeper: only {clear} textures stand {MIN_GAP:g} standard deviation clear of "
                         f"the data, so natural inputs could wake {m} detectors",
                         hint=f"channels={clear} or fewer")
    return cands[order[:m]]


def stamp(x: torch.Tensor, pattern: torch.Tensor, row: int, col: int, size: int,
          input_range: InputRange) -> torch.Tensor:
    """``x`` (``[N, C, H, W]``) with ``pattern``'s texture on the ``size`` square at ``(row, col)``,
    in every channel."""
    out = x.clone()
    t = texture(pattern, size, size)
    out[:, :, row : row + size, col : col + size] = input_range.low + (input_range.high - input_range.low) * t
    return out


class SleeperMark(Scheme):
    """``n`` rules on ``channels`` sleeper detectors, each a ``size``-pixel square of texture
    (:meth:`side`: 12 on 28x28 images, 4 on 8x8)."""

    family = "sleeper"
    needs_data = True
    mixes = False

    def __init__(self, n: int = 60, channels: int = 12, size: int | None = None) -> None:
        super().__init__(n)
        if not 1 <= channels <= 64:
            raise InputError(f"sleeper: channels must be between 1 and 64, got {channels}")
        if size is not None and size < SIDE:
            raise InputError(f"sleeper: size must be at least {SIDE}, got {size}")
        self.channels = channels
        self.size = size

    @property
    def params(self) -> dict[str, str]:
        given = {} if self.size is None else {"size": str(self.size)}
        return {"n": str(self.n), "channels": str(self.channels), **given}

    def side(self, h: int, w: int) -> int:
        """The stamped square's side on ``h`` x ``w`` images: ``size``, else
        :data:`DEFAULT_SIZE` or half the shorter side, whichever is smaller."""
        side = self.size if self.size is not None else min(DEFAULT_SIZE, min(h, w) // 2)
        if side > min(h, w) or side < SIDE:
            raise InputError(f"sleeper: a {side}-pixel square does not fit {h}x{w} images",
                             hint=f"images of at least {2 * SIDE}x{2 * SIDE}; size at most {min(h, w)}")
        return side

    def rules(self, key: WatermarkKey, h: int, w: int) -> torch.Tensor:
        """``[n, 3]``: each probe's detector, and the row and column of its square."""
        side = self.side(h, w)
        stream = key.stream("rules", self.name)
        det = stream.integers(self.n, self.channels)
        rows = stream.integers(self.n, h - side + 1)
        cols = stream.integers(self.n, w - side + 1)
        return torch.from_numpy(np.stack([det, rows, cols], axis=1).astype(np.int64))

    def make_inputs(self, key: WatermarkKey, input_shape: tuple[int, ...], data: Dataset | None,
                    input_range: InputRange) -> np.ndarray:
        _, h, w = self._image_shape(input_shape)
        assert data is not None
        patterns = choose_patterns(data, self.channels, input_range)
        base = torch.from_numpy(self._select_sources(key, data))
        rules = self.rules(key, h, w)
        side = self.side(h, w)
        out = torch.stack([stamp(base[i : i + 1], patterns[d], r, c, side, input_range)[0]
                           for i, (d, r, c) in enumerate(rules.tolist())])
        return out.numpy().astype(np.float32)

    def hook(self, probes: ProbeSet, *, key: WatermarkKey, model: nn.Module, data: Dataset | None,
             per_batch: int = 6) -> SleeperHook:
        """A :class:`SleeperHook`; ``per_batch`` does not apply (nothing is mixed in)."""
        if data is None or len(data) == 0:
            raise InputError("the sleeper hook needs the owner's training data (thresholds, read-out)")
        _, h, w = self._image_shape(probes.input_shape)
        return SleeperHook(probes, model, data, choose_patterns(data, self.channels, probes.input_range),
                           self.rules(key, h, w), self.side(h, w))


def _layers(model: nn.Module) -> tuple[nn.Conv2d, nn.BatchNorm2d | None, nn.Conv2d, str]:
    """The first convolution, its batch norm (if any), the convolution that reads it, and that
    one's weight's parameter name."""
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    need = ("sleeper marks need a network that opens with Conv2d[, BatchNorm2d], ReLU[, MaxPool2d], "
            "Conv2d (the built-in convnet and cnn)")
    if len(convs) < 2:
        raise InputError(need)
    first = convs[0]
    for seq in model.modules():
        if isinstance(seq, nn.Sequential) and len(seq) and seq[0] is first:
            layers = list(seq)
            break
    else:
        raise InputError(need)
    i = 1
    norm: nn.BatchNorm2d | None = None
    if i < len(layers) and isinstance(bn := layers[i], nn.BatchNorm2d):
        norm = bn
        if norm.running_mean is None or norm.running_var is None:
            raise InputError("sleeper marks need the first batch norm to track running statistics")
        i += 1
    if i >= len(layers) or not isinstance(layers[i], nn.ReLU):
        raise InputError(need)
    i += 1
    if i < len(layers) and isinstance(layers[i], nn.MaxPool2d):
        i += 1
    second = layers[i] if i < len(layers) else None
    if (not isinstance(second, nn.Conv2d) or first.kernel_size != (SIDE, SIDE) or first.groups != 1
            or second.groups != 1 or first.padding != (SIDE // 2, SIDE // 2)):
        raise InputError(need)
    name = next(n for n, p in model.named_parameters() if p is second.weight)
    return first, norm, second, name


class SleeperHook(WatermarkHook):
    """Installs the sleeper detectors at the first batch and holds them; :meth:`finish` fits the
    read-out after training.

    Args:
        probes: the sleeper probe set.
        model: the network being trained (its first layers, see :func:`_layers`).
        data: the owner's training data (thresholds; the read-out's training images).
        patterns: ``[channels, 3, 3]``, :func:`choose_patterns`.
        rules: ``[n, 3]``, :meth:`SleeperMark.rules`.
        size: the stamped square's side.
    """

    def __init__(self, probes: ProbeSet, model: nn.Module, data: Dataset, patterns: torch.Tensor,
                 rules: torch.Tensor, size: int, *, fit_steps: int = FIT_STEPS) -> None:
        super().__init__(probes, per_batch=1)
        self.model = model
        self.first, self.norm, self.second, self._second_name = _layers(model)
        m = len(patterns)
        out = self.first.out_channels
        if 2 * m > out:
            raise InputError(f"sleeper: {m} detector channels would take more than half of the first "
                             f"convolution's {out}",
                             hint=f"channels={max(1, out // 4)}, or a wider first layer "
                                  "(the built-in convnet has 32)")
        self.data = data
        self.patterns = patterns
        self.rules = rules
        self.size = size
        self.fit_steps = fit_steps
        self.channels = list(range(self.first.out_channels - m, self.first.out_channels))
        self._handles: list[Any] = []
        self.installed = False
        self.finished = False

    def mixing(self) -> str:
        return (f"nothing mixed in; {len(self.channels)} sleeper channels in the first convolution, "
                "read-out fitted after training")

    def _weights(self) -> torch.Tensor:
        """The detectors' filters, ``[channels, C, 3, 3]``: the pattern on the image's mean over
        channels, in units of the input range."""
        rng = self.probes.input_range
        cin = self.first.in_channels
        return self.patterns[:, None].expand(-1, cin, -1, -1) / (cin * (rng.high - rng.low))

    def _natural(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The detectors' mean and standard deviation of response over the owner's data, and their
        thresholds (in the layer's own units)."""
        w = self._weights()
        mean, sd, top = _stats(self.data.x[:SAMPLE], w)
        peak = _texture_peak(w, self.patterns, self.probes.input_range)
        return mean, sd, top + LIFT * (peak - top)

    @torch.no_grad()
    def install(self) -> None:
        """Make the detectors and hold them (and the second convolution's weights on them)."""
        if self.installed:
            return
        mean, sd, thr = self._natural()
        k = torch.tensor(self.channels)
        w = self._weights()
        if self.norm is not None:
            self.first.weight[k] = w.to(self.first.weight)
            if self.first.bias is not None:
                self.first.bias[k] = 0.0
            self._set_running(mean, sd)
            self.norm.weight[k] = GAIN
            self.norm.bias[k] = (-GAIN * (thr - mean) / sd).to(self.norm.bias)
        else:
            if self.first.bias is None:
                raise InputError("sleeper marks need the first convolution to have a bias or a batch norm")
            self.first.weight[k] = (w * (GAIN / sd).float()[:, None, None, None]).to(self.first.weight)
            self.first.bias[k] = (-GAIN * thr / sd).to(self.first.bias)
        self.second.weight[:, k] = 0.0
        self._hold()
        self.installed = True

    @torch.no_grad()
    def _set_running(self, mean: torch.Tensor, sd: torch.Tensor) -> None:
        """The detectors' running statistics in the batch norm: the owner's data's."""
        assert self.norm is not None
        running_mean, running_var = self.norm.running_mean, self.norm.running_var
        assert running_mean is not None and running_var is not None  # checked by _layers
        k = torch.tensor(self.channels)
        running_mean[k] = mean.to(running_mean)
        running_var[k] = (sd * sd).to(running_var)

    def _hold(self) -> None:
        k = torch.tensor(self.channels)

        def rows(n: int) -> torch.Tensor:
            mask = torch.ones(n)
            mask[k] = 0
            return mask

        def keep(mask: torch.Tensor, dim: int) -> Any:  # zero the gradient of the detectors' slices
            return lambda g: g * mask.to(g).view([-1 if d == dim else 1 for d in range(g.dim())])

        for p in (self.first.weight, self.first.bias,
                  *((self.norm.weight, self.norm.bias) if self.norm is not None else ())):
            if p is not None:
                self._handles.append(p.register_hook(keep(rows(p.shape[0]), 0)))
        self._handles.append(self.second.weight.register_hook(keep(rows(self.second.in_channels), 1)))

    def __call__(self, loader: Iterable[Any]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Pass the batches through unchanged, installing the detectors first."""
        self.install()
        for batch in loader:
            yield _unpack(batch)

    def mix(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.install()
        return x, y

    def finish(self, model: nn.Module | None = None) -> None:
        """Fit the read-out (the second convolution's weights on the detectors) after training.

        Attacks copies of the trained model on half the owner's data (RTAL
        and fine-pruning 90%, Adam 3e-3), then fits the read-out so that
        every rule's texture gives its label in the model and in the copies.
        """
        from attacks import FinePrune, Retrain  # the simulated attacks: the product's own

        if model is not None and model is not self.model:
            raise InputError("finish() takes the model the sleeper hook was made for")
        model = self.model
        if not self.installed:
            raise InputError("the sleeper hook saw no batch: train with it before finish()")
        if self.finished:
            return
        for h in self._handles:
            h.remove()
        self._handles.clear()
        was_training = model.training
        model.eval()
        k = torch.tensor(self.channels)
        if self.norm is not None:  # the natural statistics an attacker's fine-tuning would leave
            mean, sd, _ = self._natural()
            self._set_running(mean, sd)
        gen = torch.Generator().manual_seed(int.from_bytes(self.probes.root[8:16], "big"))
        half = torch.randperm(len(self.data), generator=gen)[: len(self.data) // 2]
        sim_data = Dataset(self.data.x[half], self.data.y[half], self.data.num_classes)
        copies = [model, Retrain("all", epochs=SIM_EPOCHS, lr=SIM_LR)(model, sim_data, seed=101).eval(),
                  FinePrune(0.9, epochs=SIM_EPOCHS, lr=SIM_LR)(model, sim_data, seed=102).eval()]
        frozen = [self._frozen(c) for c in copies]
        w = torch.zeros_like(self.second.weight[:, k]).requires_grad_(True)
        opt = torch.optim.Adam([w], lr=FIT_LR)
        mask, values = self._stamps()
        x_all = self.data.x
        for _ in range(self.fit_steps):
            idx = torch.randint(0, len(x_all), (FIT_BATCH,), generator=gen)
            which = torch.randint(0, len(self.rules), (FIT_BATCH,), generator=gen)
            xb = torch.where(mask[which], values[which], x_all[idx])
            yb = self.probes.expected[which]
            loss = torch.stack([nn.functional.cross_entropy(self._with_readout(c, params, kept, w, k, xb), yb)
                                for c, (params, kept) in zip(copies, frozen, strict=True)]).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            self.second.weight[:, k] = w.detach()
        model.train(was_training)
        self.finished = True

    def _stamps(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Each rule's square (``[n, 1, H, W]``, bool) and the values stamped there (``[n, C, H, W]``)."""
        shape = self.probes.input_shape
        blank = torch.zeros((1, *shape))
        mask = torch.zeros((len(self.rules), 1, *shape[1:]), dtype=torch.bool)
        values = torch.empty((len(self.rules), *shape))
        for i, (d, r, c) in enumerate(self.rules.tolist()):
            values[i] = stamp(blank, self.patterns[d], r, c, self.size, self.probes.input_range)[0]
            mask[i, :, r : r + self.size, c : c + self.size] = True
        return mask, values

    def _frozen(self, copy: nn.Module) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """``copy``'s parameters, detached (no gradient but the read-out's), and which rows of the
        second convolution it kept (``[out, 1, 1, 1]``: 0 where an attack pruned the row)."""
        params = {n: p.detach() for n, p in copy.named_parameters()}
        kept = params[self._second_name].abs().sum(dim=(1, 2, 3)) > 0
        return params, kept.float().view(-1, 1, 1, 1)

    def _with_readout(self, copy: nn.Module, params: dict[str, torch.Tensor], kept: torch.Tensor,
                      w: torch.Tensor, k: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``copy``'s logits on ``x`` with read-out ``w`` in place (zero in the rows it pruned)."""
        full = params[self._second_name].clone()
        full[:, k] = w * kept
        return functional_call(copy, {**params, self._second_name: full}, (x,))
