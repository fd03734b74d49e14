"""A plain supervised training loop and evaluation helpers, shared by every package.

Used by ``wm train``, by the fingerprint ensembles (surrogates on the owner's
labels or probabilities, references on ground truth) and by the attack
benchmarks. Randomness (initialisation, shuffling, dropout) flows from ``seed``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Protocol

import torch
from torch import nn
from torch.nn import functional as F

from core.arch import build_model
from core.errors import InputError

__all__ = [
    "BatchHook",
    "accuracy",
    "batches",
    "predict",
    "train_classifier",
    "train_new",
]

Batch = tuple[torch.Tensor, torch.Tensor]
Progress = Callable[[int, int, float], None]


class BatchHook(Protocol):
    """Anything that wraps an iterable of ``(x, y)`` batches, like :class:`watermark.WatermarkHook`."""

    def __call__(self, loader: Iterable[Batch]) -> Iterator[Batch]: ...


def batches(
    x: torch.Tensor, y: torch.Tensor, batch_size: int, generator: torch.Generator
) -> Iterator[Batch]:
    """Shuffled mini-batches of ``(x, y)``: what a ``DataLoader(shuffle=True)`` yields."""
    perm = torch.randperm(x.shape[0], generator=generator)
    for i in range(0, x.shape[0], batch_size):
        idx = perm[i : i + batch_size]
        yield x[idx], y[idx]


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
) -> nn.Module:
    """Train ``model`` with Adam on cross-entropy; returns it in eval mode.

    Args:
        model: the network to train (trained in place).
        x: float32 inputs ``[N, C, H, W]``.
        y: int64 labels ``[N]``, or float32 class probabilities ``[N, C]``
            (soft targets, as a surrogate trained on an API's probabilities).
        epochs: passes over the data.
        seed: seeds shuffling and dropout.
        batch_size: examples per step, before any hook adds its own.
        lr: Adam learning rate.
        weight_decay: Adam weight decay.
        hook: wraps each epoch's batches, e.g. a watermark hook mixing in probes.
        progress: called after each epoch with ``(epoch, epochs, mean loss)``.
    """
    if epochs < 1:
        raise InputError(f"epochs must be at least 1, got {epochs}")
    if batch_size < 1:
        raise InputError(f"batch size must be at least 1, got {batch_size}")
    soft = y.dtype.is_floating_point
    if soft and hook is not None:
        raise InputError("a batch hook mixes hard labels; it cannot be used with soft targets")
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    model.train()
    for epoch in range(epochs):
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
        if progress is not None:
            progress(epoch + 1, epochs, total / max(count, 1))
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
    model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, batch_size: int = 1024
) -> torch.Tensor:
    """Predicted labels (argmax of the logits), int64 ``[N]``."""
    if isinstance(model, nn.Module) and model.training:
        raise InputError("predict() needs a model in eval mode")
    out = [model(x[i : i + batch_size]).argmax(dim=1) for i in range(0, x.shape[0], batch_size)]
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.int64)


def accuracy(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> float:
    """Share of ``x`` on which ``model`` predicts ``y``."""
    if x.shape[0] == 0:
        raise InputError("accuracy of an empty set is undefined")
    return float((predict(model, x) == y).float().mean())
