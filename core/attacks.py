"""Removal attacks on a marked model: the attack catalogue of the robustness benchmark.

After Lukas, Jiang, Li, Kerschbaum, "SoK: How Robust is Image Classification
Deep Neural Network Watermarking?" (IEEE S&P 2022), Section IV and Table II,
whose names are kept. Two threat models (DESIGN.md, "What it is for"):

*Weight theft* (the attacker holds the weights). Each attack is a frozen
dataclass called as ``attack(model, data, seed=...)``: it takes an
``nn.Module`` (from a ``.pt2``: :func:`core.modelio.to_trainable`), the
attacker's labelled data and a seed, and returns a **new** module in eval
mode; the input is never mutated.

========================  ===========================================================
``FineTune("last")``      FTLL: fine-tune the last layer only, the rest frozen.
``FineTune("all")``       FTAL: fine-tune every layer.
``Retrain("last")``       RTLL: re-initialise the last layer, train only it.
``Retrain("all")``        RTAL: re-initialise the last layer, train every layer.
``Prune(f)``              Weight pruning: zero the fraction ``f`` of smallest-magnitude
                          weights of every conv / dense layer (no fine-tuning).
``FinePrune(f)``          Fine-pruning (Liu, Dolan-Gavitt, Garg, "Fine-Pruning:
                          Defending Against Backdooring Attacks on Deep Neural
                          Networks", RAID 2018): remove the fraction ``f`` of the
                          last feature layer's units least active on clean data,
                          then fine-tune every layer with those units held at zero.
``Quantize()``            Weight quantisation: every conv / dense weight rounded to
                          int8 levels (symmetric, one scale per tensor); computation
                          stays in float, as after de-quantisation.
``WeightNoise(s)``        Weight shifting by noise: add ``N(0, (s * std(W))^2)`` to
                          each conv / dense weight ``W``.
``Distill()``             Knowledge distillation (Hinton, Vinyals, Dean, "Distilling
                          the Knowledge in a Neural Network", 2015): a freshly
                          initialised student learns the model's temperature-``T``
                          softmax on the attacker's (unlabelled) inputs.
========================  ===========================================================

*Extraction through the API* (the attacker never sees the weights):
:class:`Extract` queries an answer function ``answer(x) -> Tensor`` (labels
int64 ``[N]``, or probabilities float ``[N, C]``) and trains a surrogate of any
architecture on the answers: Tramèr, Zhang, Juels, Reiter, Ristenpart,
"Stealing Machine Learning Models via Prediction APIs" (USENIX Security 2016);
Orekondy, Schiele, Fritz, "Knockoff Nets" (CVPR 2019); with another
architecture than the owner's it is the SoK's *cross-architecture retraining*.
The answer function is all it knows of the victim, so the same attack runs
in-process (:func:`query_model`), against ``wm serve``, or through ``wm guard``
with an HTTP client behind the function. :func:`query_inputs` draws a query set
of any budget from the attacker's pool.

**The attacker's data.** On the built-in ``digits`` task, the attacker pool:
539 real images with labels (:func:`core.data.load_digits`), disjoint from the
owner's 898 training images and from the 360 test images. Fine-tuning,
retraining and fine-pruning use its labels; distillation and extraction use
its images only (and, beyond 539 queries, shifted noisy copies of them).

Randomness (initialisation, shuffling, dropout, noise, query order) flows only
from the ``seed`` argument; each attack's :attr:`name` holds every parameter
that changes its result.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import ClassVar, Literal, Protocol

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils import prune as torch_prune

from core.data import Dataset
from core.errors import InputError
from core.training import batches, train_classifier, train_new

__all__ = [
    "Answer",
    "Distill",
    "Extract",
    "FinePrune",
    "FineTune",
    "Layers",
    "Prune",
    "Quantize",
    "Retrain",
    "WeightAttack",
    "WeightNoise",
    "query_inputs",
    "query_model",
]

Answer = Callable[[torch.Tensor], torch.Tensor]
"""An API as the attacker sees it: inputs ``[N, C, H, W]`` to labels ``[N]`` or probabilities ``[N, K]``."""

Layers = Literal["last", "all"]
_WEIGHTED = (nn.Conv2d, nn.Linear)


class WeightAttack(Protocol):
    """A removal attack by someone who holds the weights."""

    @property
    def name(self) -> str:
        """Canonical name with every parameter, e.g. ``ftal:epochs=20:lr=0.001``."""
        ...

    def __call__(self, model: nn.Module, data: Dataset, *, seed: int) -> nn.Module:
        """A new, attacked model in eval mode; ``model`` is left as it was."""
        ...


def _fmt(v: float) -> str:
    return f"{v:g}"


def _copy(model: nn.Module) -> nn.Module:
    """A deep copy with every parameter trainable (the caller's model is not touched)."""
    if not isinstance(model, nn.Module):
        raise InputError(f"an attack needs an nn.Module, got {type(model).__name__}",
                         hint="wrap a loaded .pt2 with core.modelio.to_trainable")
    if type(model).__module__.startswith("torch.fx"):
        raise InputError("an exported .pt2 module cannot be trained",
                         hint="wrap it with core.modelio.to_trainable")
    out = copy.deepcopy(model)
    for p in out.parameters():
        p.requires_grad_(True)
    return out


def _weighted_layers(model: nn.Module) -> list[nn.Conv2d | nn.Linear]:
    layers: list[nn.Conv2d | nn.Linear] = [m for m in model.modules() if isinstance(m, _WEIGHTED)]
    if not layers:
        raise InputError("the model has no convolutional or dense layer to attack")
    return layers


def _last_layer(model: nn.Module) -> nn.Linear:
    dense = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not dense:
        raise InputError("the model has no dense output layer")
    return dense[-1]


def _check_data(data: Dataset) -> None:
    if len(data) < 1:
        raise InputError("the attacker's data set is empty")


def _check_epochs(epochs: int, lr: float) -> None:
    if epochs < 1:
        raise InputError(f"epochs must be at least 1, got {epochs}")
    if not lr > 0:
        raise InputError(f"the learning rate must be positive, got {lr}")


@contextmanager
def _frozen_except(model: nn.Module, keep: nn.Module) -> Iterator[None]:
    """Freeze every parameter outside ``keep`` for the duration (Adam skips gradient-less ones)."""
    inside = {id(p) for p in keep.parameters()}
    frozen = [p for p in model.parameters() if id(p) not in inside]
    for p in frozen:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in frozen:
            p.requires_grad_(True)


def _train_layers(model: nn.Module, layers: Layers, data: Dataset, *, epochs: int, lr: float,
                  seed: int) -> nn.Module:
    """Train ``model`` in place on ``data``: only its output layer (``"last"``) or all of it."""
    if layers == "last":
        with _frozen_except(model, _last_layer(model)):
            train_classifier(model, data.x, data.y, epochs=epochs, seed=seed, lr=lr)
    else:
        train_classifier(model, data.x, data.y, epochs=epochs, seed=seed, lr=lr)
    return model.eval()


@dataclass(frozen=True)
class FineTune:
    """FTLL / FTAL (SoK, Table II): continue training on the attacker's labelled data.

    Attributes:
        layers: ``"last"`` (FTLL: only the output layer learns) or ``"all"`` (FTAL).
        epochs: passes over the attacker's data.
        lr: Adam learning rate.
    """

    layers: Layers = "all"
    epochs: int = 10
    lr: float = 1e-3

    def __post_init__(self) -> None:
        if self.layers not in ("last", "all"):
            raise InputError(f"layers must be 'last' or 'all', got {self.layers!r}")
        _check_epochs(self.epochs, self.lr)

    @property
    def name(self) -> str:
        """``ftll:...`` or ``ftal:...`` with epochs and learning rate."""
        return f"ft{self.layers[0]}l:epochs={self.epochs}:lr={_fmt(self.lr)}"

    def __call__(self, model: nn.Module, data: Dataset, *, seed: int) -> nn.Module:
        """Fine-tune a copy of ``model`` on ``data`` (labels used)."""
        _check_data(data)
        return _train_layers(_copy(model), self.layers, data, epochs=self.epochs, lr=self.lr,
                             seed=seed)


@dataclass(frozen=True)
class Retrain:
    """RTLL / RTAL (SoK, Table II): re-initialise the output layer, then train.

    Attributes:
        layers: ``"last"`` (RTLL: only the new output layer learns) or
            ``"all"`` (RTAL: every layer learns).
        epochs: passes over the attacker's data.
        lr: Adam learning rate.
    """

    layers: Layers = "all"
    epochs: int = 20
    lr: float = 1e-3

    def __post_init__(self) -> None:
        if self.layers not in ("last", "all"):
            raise InputError(f"layers must be 'last' or 'all', got {self.layers!r}")
        _check_epochs(self.epochs, self.lr)

    @property
    def name(self) -> str:
        """``rtll:...`` or ``rtal:...`` with epochs and learning rate."""
        return f"rt{self.layers[0]}l:epochs={self.epochs}:lr={_fmt(self.lr)}"

    def __call__(self, model: nn.Module, data: Dataset, *, seed: int) -> nn.Module:
        """Re-initialise a copy's output layer from ``seed`` and train it on ``data``."""
        _check_data(data)
        out = _copy(model)
        head = _last_layer(out)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            head.reset_parameters()
        return _train_layers(out, self.layers, data, epochs=self.epochs, lr=self.lr, seed=seed)


def _check_fraction(fraction: float) -> None:
    if not 0.0 <= fraction < 1.0:
        raise InputError(f"the pruned fraction must be in [0, 1), got {fraction}")


@dataclass(frozen=True)
class Prune:
    """Weight pruning (SoK, Table II): zero the smallest-magnitude weights, layer by layer.

    In every conv and dense layer exactly ``round(fraction * size)`` weights,
    those of smallest absolute value (ties by position), are set to zero;
    biases are kept. No fine-tuning follows (:class:`FinePrune` does that).

    Attributes:
        fraction: share of each layer's weights to zero, in ``[0, 1)``.
    """

    fraction: float = 0.5

    def __post_init__(self) -> None:
        _check_fraction(self.fraction)

    @property
    def name(self) -> str:
        """``prune:fraction=...``."""
        return f"prune:fraction={_fmt(self.fraction)}"

    @torch.no_grad()
    def __call__(self, model: nn.Module, data: Dataset | None = None, *, seed: int = 0) -> nn.Module:
        """A pruned copy of ``model`` (``data`` and ``seed`` are not used: the attack is deterministic)."""
        out = _copy(model)
        for layer in _weighted_layers(out):
            w = layer.weight
            k = round(self.fraction * w.numel())
            if k == 0:
                continue
            order = torch.argsort(w.detach().abs().flatten(), stable=True)
            flat = w.data.view(-1)
            flat[order[:k]] = 0.0
        return out.eval()


def _feature_layer(model: nn.Module) -> nn.Conv2d | nn.Linear:
    """The last convolution, or for a dense network the last hidden dense layer."""
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if convs:
        return convs[-1]
    dense = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if len(dense) < 2:
        raise InputError("fine-pruning needs a hidden layer before the output layer")
    return dense[-2]


@torch.no_grad()
def _mean_activation(model: nn.Module, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Mean post-ReLU activation of each of ``layer``'s units (channels) over ``x``."""
    sums: list[torch.Tensor] = []

    def hook(_m: nn.Module, _i: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        a = out.clamp(min=0)
        dims = [0, *range(2, a.dim())]
        sums.append(a.sum(dim=dims))

    handle = layer.register_forward_hook(hook)
    was_training = model.training
    model.eval()
    try:
        for i in range(0, x.shape[0], 1024):
            model(x[i : i + 1024])
    finally:
        handle.remove()
        model.train(was_training)
    return torch.stack(sums).sum(dim=0) / x.shape[0]


@dataclass(frozen=True)
class FinePrune:
    """Fine-pruning (Liu et al., RAID 2018; SoK, Table II).

    Backdoor-style marks tend to live in units that clean inputs leave
    dormant. The attack measures each unit of the last feature layer (a
    convolution's channels, or an MLP's last hidden units) on the attacker's
    clean data, removes the ``fraction`` least active (their weights and bias
    held at zero), then fine-tunes every layer.

    Attributes:
        fraction: share of the layer's units removed, in ``[0, 1)``.
        epochs: fine-tuning passes over the attacker's data.
        lr: Adam learning rate for fine-tuning.
    """

    fraction: float = 0.5
    epochs: int = 10
    lr: float = 1e-3

    def __post_init__(self) -> None:
        _check_fraction(self.fraction)
        _check_epochs(self.epochs, self.lr)

    @property
    def name(self) -> str:
        """``fine-prune:fraction=...:epochs=...:lr=...``."""
        return f"fine-prune:fraction={_fmt(self.fraction)}:epochs={self.epochs}:lr={_fmt(self.lr)}"

    def __call__(self, model: nn.Module, data: Dataset, *, seed: int) -> nn.Module:
        """Prune a copy's dormant units, then fine-tune it on ``data`` (labels used)."""
        _check_data(data)
        out = _copy(model)
        layer = _feature_layer(out)
        activity = _mean_activation(out, layer, data.x)
        k = round(self.fraction * activity.numel())
        dormant = torch.argsort(activity, stable=True)[:k]
        keep = torch.ones(activity.numel())
        keep[dormant] = 0.0
        weight = layer.weight
        w_mask = keep.view(-1, *([1] * (weight.dim() - 1))).expand_as(weight).clone()
        torch_prune.custom_from_mask(layer, "weight", w_mask)
        if layer.bias is not None:
            torch_prune.custom_from_mask(layer, "bias", keep.clone())
        train_classifier(out, data.x, data.y, epochs=self.epochs, seed=seed, lr=self.lr)
        torch_prune.remove(layer, "weight")
        if hasattr(layer, "bias_orig"):
            torch_prune.remove(layer, "bias")
        return out.eval()


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
        out = _copy(model)
        for layer in _weighted_layers(out):
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
        return f"noise:scale={_fmt(self.scale)}"

    @torch.no_grad()
    def __call__(self, model: nn.Module, data: Dataset | None = None, *, seed: int) -> nn.Module:
        """A noisy copy of ``model`` (``data`` is not used)."""
        out = _copy(model)
        gen = torch.Generator().manual_seed(seed)
        for layer in _weighted_layers(out):
            w = layer.weight
            noise = torch.randn(w.shape, generator=gen, dtype=w.dtype)
            w.add_(noise * (self.scale * float(w.std())))
        return out.eval()


def _fresh_like(model: nn.Module, seed: int) -> nn.Module:
    """A copy of ``model``'s architecture with every layer re-initialised from ``seed``."""
    out = _copy(model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for m in out.modules():
            reset = getattr(m, "reset_parameters", None)
            if callable(reset):
                reset()
    return out


@dataclass(frozen=True)
class Distill:
    """Knowledge distillation (Hinton et al. 2015; SoK, Table II).

    The attacker holds the model and unlabelled inputs; a fresh student
    minimises ``T^2 * KL(softmax(teacher / T) || softmax(student / T))``.

    Attributes:
        student: architecture name of the student (:data:`core.arch.ARCHITECTURES`),
            or ``None`` for the teacher's own architecture, re-initialised.
        temperature: softmax temperature ``T``.
        epochs: passes over the attacker's inputs.
        lr: Adam learning rate.
        batch_size: inputs per step.
    """

    student: str | None = None
    temperature: float = 4.0
    epochs: int = 30
    lr: float = 3e-3
    batch_size: int = 64

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise InputError(f"the temperature must be positive, got {self.temperature}")
        _check_epochs(self.epochs, self.lr)

    @property
    def name(self) -> str:
        """``distill:student=...:t=...:epochs=...:lr=...``."""
        return (f"distill:student={self.student or 'same'}:t={_fmt(self.temperature)}"
                f":epochs={self.epochs}:lr={_fmt(self.lr)}")

    def __call__(self, model: nn.Module, data: Dataset, *, seed: int) -> nn.Module:
        """Train a student on ``model``'s softened outputs over ``data.x`` (labels unused)."""
        _check_data(data)
        teacher = _copy(model).eval()
        with torch.no_grad():
            soft = torch.cat([torch.softmax(teacher(data.x[i : i + 1024]) / self.temperature, dim=1)
                              for i in range(0, len(data), 1024)])
        if self.student is None:
            student = _fresh_like(model, seed)
        else:
            from core.arch import build_model

            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                student = build_model(self.student, data.input_shape, soft.shape[1])
        gen = torch.Generator().manual_seed(seed)
        opt = torch.optim.Adam(student.parameters(), lr=self.lr)
        t = self.temperature
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            student.train()
            for _ in range(self.epochs):
                for xb, pb in batches(data.x, soft, self.batch_size, gen):
                    opt.zero_grad(set_to_none=True)
                    log_q = F.log_softmax(student(xb) / t, dim=1)
                    loss = F.kl_div(log_q, pb, reduction="batchmean") * (t * t)
                    loss.backward()
                    opt.step()
        return student.eval()


@torch.no_grad()
def _ask(answer: Answer, queries: torch.Tensor, num_classes: int, batch: int) -> torch.Tensor:
    """All answers, validated: int64 labels ``[N]`` or float32 probabilities ``[N, C]``."""
    parts = []
    for i in range(0, queries.shape[0], batch):
        chunk = queries[i : i + batch]
        a = torch.as_tensor(answer(chunk))
        if a.dim() == 2 and a.shape[1] == 1 and not a.dtype.is_floating_point:
            a = a[:, 0]
        if a.shape[0] != chunk.shape[0]:
            raise InputError(f"the API answered {a.shape[0]} of {chunk.shape[0]} queries")
        parts.append(a)
    out = torch.cat(parts)
    if out.dtype.is_floating_point:
        if out.dim() != 2 or out.shape[1] != num_classes:
            raise InputError(f"probabilities must have shape [N, {num_classes}], got {list(out.shape)}")
        if (out < 0).any() or not torch.allclose(out.sum(dim=1), torch.ones(out.shape[0]), atol=1e-3):
            raise InputError("the API's float answers are not probabilities (rows must sum to 1)")
        return out.float()
    if out.dim() != 1:
        raise InputError(f"labels must have shape [N], got {list(out.shape)}")
    if out.numel() and (out.min() < 0 or out.max() >= num_classes):
        raise InputError(f"the API answered a label outside 0..{num_classes - 1}")
    return out.long()


@dataclass(frozen=True)
class Extract:
    """Model extraction through a prediction API (Tramèr et al. 2016; Orekondy et al. 2019).

    Queries the victim's answer function on the attacker's inputs and trains
    a freshly initialised surrogate on the answers: hard labels as ordinary
    targets, probabilities as soft targets. Nothing else of the victim is
    used, so an HTTP client can stand behind ``answer``. With ``arch`` other
    than the victim's it is the SoK's cross-architecture retraining.

    Attributes:
        arch: the surrogate's architecture (:data:`core.arch.ARCHITECTURES`).
        epochs: passes over the query set.
        lr: Adam learning rate.
        query_batch: inputs per call of ``answer`` (per API request).
    """

    arch: str = "cnn"
    epochs: int = 30
    lr: float = 3e-3
    query_batch: int = 100
    kind: ClassVar[str] = "extract"

    def __post_init__(self) -> None:
        from core.arch import ARCHITECTURES

        if self.arch not in ARCHITECTURES:
            raise InputError(f"unknown architecture {self.arch!r}",
                             hint=f"choose one of {', '.join(ARCHITECTURES)}")
        _check_epochs(self.epochs, self.lr)
        if self.query_batch < 1:
            raise InputError(f"query_batch must be at least 1, got {self.query_batch}")

    @property
    def name(self) -> str:
        """``extract:arch=...:epochs=...:lr=...``."""
        return f"extract:arch={self.arch}:epochs={self.epochs}:lr={_fmt(self.lr)}"

    def answers(self, answer: Answer, queries: torch.Tensor, *, num_classes: int) -> torch.Tensor:
        """Ask the API about every query (in ``query_batch`` chunks) and validate the answers."""
        if queries.dim() < 2 or queries.shape[0] == 0:
            raise InputError("extraction needs at least one query input [N, ...]")
        return _ask(answer, queries, num_classes, self.query_batch)

    def fit(self, queries: torch.Tensor, answers: torch.Tensor, *, num_classes: int,
            seed: int) -> nn.Module:
        """Train the surrogate on already collected ``(queries, answers)``."""
        return train_new(self.arch, queries, answers, num_classes=num_classes, epochs=self.epochs,
                         seed=seed, lr=self.lr)

    def __call__(self, answer: Answer, queries: torch.Tensor, *, num_classes: int,
                 seed: int) -> nn.Module:
        """Query ``answer`` on ``queries`` and return the trained surrogate (eval mode)."""
        return self.fit(queries, self.answers(answer, queries, num_classes=num_classes),
                        num_classes=num_classes, seed=seed)


def query_model(model: Callable[[torch.Tensor], torch.Tensor],
                output: Literal["labels", "probabilities"] = "labels") -> Answer:
    """An in-process API over ``model`` (eval mode): what ``wm serve --output`` would answer."""
    if output not in ("labels", "probabilities"):
        raise InputError(f"output must be 'labels' or 'probabilities', got {output!r}")
    if isinstance(model, nn.Module) and model.training:
        raise InputError("the served model must be in eval mode")

    @torch.no_grad()
    def answer(x: torch.Tensor) -> torch.Tensor:
        logits = model(x)
        if output == "labels":
            return logits.argmax(dim=1)
        return torch.softmax(logits.float(), dim=1)

    return answer


def query_inputs(pool: torch.Tensor, budget: int, *, seed: int, noise: float = 0.05) -> torch.Tensor:
    """``budget`` query inputs from the attacker's ``pool``, in a seeded order.

    The first ``len(pool)`` queries are the pool itself (shuffled by ``seed``),
    so a smaller budget's queries are a prefix of a larger one's. Beyond that,
    each extra query is a pool image shifted by one pixel in a random
    direction (zero fill) plus Gaussian noise of standard deviation ``noise``,
    clipped to [0, 1]: cheap synthetic inputs in the spirit of Papernot et
    al.'s augmentation (AsiaCCS 2017).
    """
    n = pool.shape[0]
    if budget < 1:
        raise InputError(f"the query budget must be at least 1, got {budget}")
    if n == 0 or pool.dim() != 4:
        raise InputError("the query pool must be a non-empty [N, C, H, W] tensor")
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=gen)
    take = order[: min(budget, n)]
    out = [pool[take]]
    extra = budget - n
    rounds = math.ceil(extra / n) if extra > 0 else 0
    for r in range(rounds):
        m = min(n, extra - r * n)
        src = pool[order[:m]]
        shifts = torch.randint(0, 8, (m,), generator=gen)
        moved = torch.empty_like(src)
        for j, s in enumerate(shifts.tolist()):
            dy, dx = [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)][s]
            moved[j] = _shift(src[j], dy, dx)
        jitter = torch.randn(moved.shape, generator=gen, dtype=moved.dtype) * noise
        out.append((moved + jitter).clamp(0.0, 1.0))
    return torch.cat(out).contiguous()


def _shift(img: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """``img`` ``[C, H, W]`` moved by ``(dy, dx)`` pixels, vacated pixels zero."""
    out = torch.zeros_like(img)
    h, w = img.shape[-2:]
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    out[..., yd, xd] = img[..., ys, xs]
    return out
