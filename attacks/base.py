"""What the removal attacks share: the attack protocol, model copies, layer selection, checks.

Kept apart from the attacks themselves (:mod:`attacks.finetune`,
:mod:`attacks.pruning`, :mod:`attacks.perturb`, :mod:`attacks.distill`,
:mod:`attacks.extract`) so each of those reads as the paper it follows.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal, Protocol

from torch import nn

from core.data import Dataset
from core.errors import InputError
from core.training import train_classifier

__all__ = ["Layers", "WeightAttack", "Weighted"]

Layers = Literal["last", "all"]
Weighted = nn.Linear | nn.modules.conv._ConvNd
"""A layer with a weight tensor that the weight attacks change: dense, or a 1-, 2- or 3-d convolution."""


class WeightAttack(Protocol):
    """A removal attack by someone who holds the weights."""

    @property
    def name(self) -> str:
        """Canonical name with every parameter, e.g. ``ftal:epochs=20:lr=0.001``."""
        ...

    def __call__(self, model: nn.Module, data: Dataset, *, seed: int) -> nn.Module:
        """A new, attacked model in eval mode; ``model`` is left as it was."""
        ...


def fmt(v: float) -> str:
    """A number as it appears in an attack's canonical name."""
    return f"{v:g}"


def trainable_copy(model: nn.Module) -> nn.Module:
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


def weighted_layers(model: nn.Module) -> list[Weighted]:
    """Every convolution (1-, 2- or 3-d) and dense layer, in module order."""
    layers: list[Weighted] = [m for m in model.modules() if isinstance(m, Weighted)]
    if not layers:
        raise InputError("the model has no convolutional or dense layer to attack")
    return layers


def last_layer(model: nn.Module) -> nn.Linear:
    """The last dense layer: the output layer of a classifier."""
    dense = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not dense:
        raise InputError("the model has no dense output layer")
    return dense[-1]


def check_data(data: Dataset) -> None:
    """:class:`InputError` if the attacker's data set is empty."""
    if len(data) < 1:
        raise InputError("the attacker's data set is empty")


def check_epochs(epochs: int, lr: float) -> None:
    """:class:`InputError` unless ``epochs >= 1`` and ``lr > 0``."""
    if epochs < 1:
        raise InputError(f"epochs must be at least 1, got {epochs}")
    if not lr > 0:
        raise InputError(f"the learning rate must be positive, got {lr}")


def check_layers(layers: str) -> None:
    """:class:`InputError` unless ``layers`` is ``"last"`` or ``"all"``."""
    if layers not in ("last", "all"):
        raise InputError(f"layers must be 'last' or 'all', got {layers!r}")


@contextmanager
def frozen_except(model: nn.Module, keep: nn.Module) -> Iterator[None]:
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


def train_layers(model: nn.Module, layers: Layers, data: Dataset, *, epochs: int, lr: float,
                 seed: int, weight_decay: float = 0.0) -> nn.Module:
    """Train ``model`` in place on ``data``: only its output layer (``"last"``) or all of it."""
    if layers == "last":
        with frozen_except(model, last_layer(model)):
            train_classifier(model, data.x, data.y, epochs=epochs, seed=seed, lr=lr,
                             weight_decay=weight_decay)
    else:
        train_classifier(model, data.x, data.y, epochs=epochs, seed=seed, lr=lr, weight_decay=weight_decay)
    return model.eval()
