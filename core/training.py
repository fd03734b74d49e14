"""A plain supervised training loop and evaluation helpers, shared by every package.

Used by ``wm train``, by the fingerprint ensembles (surrogates on the owner's
labels or probabilities, references on ground truth) and by the attack
benchmarks. Randomness (initialisation, shuffling, dropout) flows from ``seed``.
:func:`default_recipe` says how ``wm train`` and the benchmarks train on each
kind of task unless told otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Literal, Protocol

import torch
from torch import nn
from torch.nn import functional as F

from core.arch import build_model
from core.data import Splits
from core.errors import InputError
from core.nulls import ranked

__all__ = [
    "FASHION_MNIST_RECIPE",
    "BatchHook",
    "Recipe",
    "Schedule",
    "accuracy",
    "batches",
    "default_recipe",
    "predict",
    "train_classifier",
    "train_new",
    "training_epochs",
]

Batch = tuple[torch.Tensor, torch.Tensor]
Progress = Callable[[int, int, float], None]


class BatchHook(Protocol):
    """Anything that wraps an iterable of ``(x, y)`` batches, like :class:`watermark.WatermarkHook`."""

    def __call__(self, loader: Iterable[Batch]) -> Iterator[Batch]: ...


Schedule = Literal["constant", "cosine"]


@dataclass(frozen=True)
class Recipe:
    """How to train a model for a task: architecture, passes over the data, batch size, learning rate."""

    arch: str
    epochs: int
    batch_size: int
    lr: float = 3e-3
    schedule: Schedule = "constant"


FASHION_MNIST_RECIPE = Recipe("convnet", 10, 128, lr=3e-3, schedule="cosine")
"""``convnet``, 10 epochs of 128, Adam 3e-3 with cosine decay: above 91% test accuracy
(benchmarks/README.md, "Models")."""


def default_recipe(splits: Splits) -> Recipe:
    """The default recipe for a task (what ``wm train`` uses without ``--arch``/``--epochs``).

    ``digits``: ``cnn``, 30 epochs of 64. ``fashion-mnist``:
    :data:`FASHION_MNIST_RECIPE`. Other images: ``cnn``, 30 epochs of 64;
    flat features: ``mlp``, 30 epochs of 64.
    """
    if splits.spec == "fashion-mnist":
        return FASHION_MNIST_RECIPE
    return Recipe("cnn" if len(splits.input_shape) == 3 else "mlp", 30, 64)


def batches(
    x: torch.Tensor, y: torch.Tensor, batch_size: int, generator: torch.Generator
) -> Iterator[Batch]:
    """Shuffled mini-batches of ``(x, y)``: what a ``DataLoader(shuffle=True)`` yields."""
    perm = torch.randperm(x.shape[0], generator=generator)
    for i in range(0, x.shape[0], batch_size):
        idx = perm[i : i + batch_size]
        yield x[idx], y[idx]


def training_epochs(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int,
    seed: int,
    batch_size: int = 64,
    lr: float = 3e-3,
    weight_decay: float = 0.0,
    hook: BatchHook | None = None,
    schedule: Schedule = "constant",
) -> Iterator[float]:
    """Train ``model`` with Adam on cross-entropy, one epoch per step of the iterator.

    Yields each epoch's mean loss, with ``model`` in eval mode between epochs;
    arguments are checked at once, training starts with the first step.
    :func:`train_classifier` runs it to the end; the embedding benchmark
    advances a clean and a marked training in turn, epoch by epoch, so that
    machine noise hits both alike. The arguments are :func:`train_classifier`'s.
    """
    if epochs < 1:
        raise InputError(f"epochs must be at least 1, got {epochs}")
    if batch_size < 1:
        raise InputError(f"batch size must be at least 1, got {batch_size}")
    soft = y.dtype.is_floating_point
    if soft and hook is not None:
        raise InputError("a batch hook mixes hard labels; it cannot be used with soft targets")
    if schedule not in ("constant", "cosine"):
        raise InputError(f"unknown learning-rate schedule {schedule!r}; use constant or cosine")
    return _epochs(model, x, y, epochs=epochs, seed=seed, batch_size=batch_size, lr=lr,
                   weight_decay=weight_decay, hook=hook, schedule=schedule)


def _epochs(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epochs: int, seed: int,
            batch_size: int, lr: float, weight_decay: float, hook: BatchHook | None,
            schedule: Schedule) -> Iterator[float]:
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    for epoch in range(epochs):
        if schedule == "cosine":  # Loshchilov & Hutter, SGDR (ICLR 2017), one cycle, per epoch
            for group in opt.param_groups:
                group["lr"] = 0.5 * lr * (1.0 + math.cos(math.pi * epoch / epochs))
        model.train()
        loader: Iterable[Batch] = batches(x, y, batch_size, gen)
        if hook is not None:
            loader = hook(loader)
        total, count = 0.0, 0
        for xb, yb in loader:
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(xb), yb)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * xb.shape[0]
            count += xb.shape[0]
        model.eval()
        yield total / max(count, 1)


def train_classifier(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int,
    seed: int,
    batch_size: int = 64,
    lr: float = 3e-3,
    weight_decay: float = 0.0,
    hook: BatchHook | None = None,
    progress: Progress | None = None,
    schedule: Schedule = "constant",
) -> nn.Module:
    """Train ``model`` with Adam on cross-entropy; returns it in eval mode.

    Args:
        model: the network to train (trained in place).
        x: float32 inputs ``[N, ...]``.
        y: int64 labels ``[N]``, or float32 class probabilities ``[N, C]``
            (soft targets, as a surrogate trained on an API's probabilities).
        epochs: passes over the data.
        seed: seeds shuffling and dropout.
        batch_size: examples per step, before any hook adds its own.
        lr: Adam learning rate.
        weight_decay: Adam weight decay.
        hook: wraps each epoch's batches, e.g. a watermark hook mixing in probes.
        progress: called after each epoch with ``(epoch, epochs, mean loss)``.
        schedule: ``constant`` learning rate, or ``cosine`` decay from ``lr``
            towards 0 over the epochs (set at the start of each epoch).
    """
    steps = training_epochs(model, x, y, epochs=epochs, seed=seed, batch_size=batch_size, lr=lr,
                            weight_decay=weight_decay, hook=hook, schedule=schedule)
    for epoch, loss in enumerate(steps, start=1):
        if progress is not None:
            progress(epoch, epochs, loss)
    return model.eval()


def train_new(
    arch: str,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    num_classes: int,
    epochs: int,
    seed: int,
    **kwargs: object,
) -> nn.Module:
    """Build a fresh model of ``arch`` (initialised from ``seed``) and train it."""
    torch.manual_seed(seed)
    model = build_model(arch, tuple(int(s) for s in x.shape[1:]), num_classes)
    return train_classifier(model, x, y, epochs=epochs, seed=seed, **kwargs)  # type: ignore[arg-type]


@torch.no_grad()
def predict(
    model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, batch_size: int = 1024, *,
    rank: int = 1,
) -> torch.Tensor:
    """Predicted labels (argmax of the logits), int64 ``[N]``; with ``rank=2`` the runner-up classes
    (how dark-knowledge probes are answered, :func:`core.probeset.answer_rank`)."""
    if isinstance(model, nn.Module) and model.training:
        raise InputError("predict() needs a model in eval mode")
    if rank == 1:
        out = [model(x[i : i + batch_size]).argmax(dim=1) for i in range(0, x.shape[0], batch_size)]
    else:
        out = [torch.from_numpy(ranked(model(x[i : i + batch_size]).float().numpy(), rank))
               for i in range(0, x.shape[0], batch_size)]
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.int64)


def accuracy(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor, *,
             rank: int = 1) -> float:
    """Share of ``x`` on which ``model`` predicts ``y`` (with ``rank=2``: as its second choice)."""
    if x.shape[0] == 0:
        raise InputError("accuracy of an empty set is undefined")
    return float((predict(model, x, rank=rank) == y).float().mean())
