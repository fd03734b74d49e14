"""Fine-tuning and retraining (FTLL, FTAL, RTLL, RTAL) after Lukas et al.'s SoK (S&P 2022), Table II.

The attacker holds the weights and some labelled data of the task, and keeps
training: only the output layer or every layer, from the marked weights or
with the output layer re-initialised first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from attacks.base import (
    Layers,
    check_data,
    check_epochs,
    check_layers,
    fmt,
    last_layer,
    train_layers,
    trainable_copy,
)
from core.data import Dataset
from core.errors import InputError

__all__ = ["FineTune", "Retrain"]


@dataclass(frozen=True)
class _ContinuedTraining:
    """What fine-tuning and retraining share: which layers learn, for how long, how fast."""

    layers: Layers = "all"
    epochs: int = 10
    lr: float = 1e-3
    weight_decay: float = 0.0
    prefix: ClassVar[str]

    def __post_init__(self) -> None:
        check_layers(self.layers)
        check_epochs(self.epochs, self.lr)
        if not self.weight_decay >= 0:
            raise InputError(f"weight decay must be at least 0, got {self.weight_decay}")

    @property
    def name(self) -> str:
        """``<prefix>ll:...`` or ``<prefix>al:...`` with epochs, learning rate and any weight decay."""
        wd = f":wd={fmt(self.weight_decay)}" if self.weight_decay else ""
        return f"{self.prefix}{self.layers[0]}l:epochs={self.epochs}:lr={fmt(self.lr)}{wd}"


@dataclass(frozen=True)
class FineTune(_ContinuedTraining):
    """FTLL / FTAL (SoK, Table II): continue training on the attacker's labelled data.

    Attributes:
        layers: ``"last"`` (FTLL: only the output layer learns) or ``"all"`` (FTAL).
        epochs: passes over the attacker's data.
        lr: Adam learning rate.
        weight_decay: Adam's L2 weight decay (0, none, as in the SoK's catalogue here).
    """

    prefix: ClassVar[str] = "ft"

    def __call__(self, model: nn.Module, data: Dataset, *, seed: int) -> nn.Module:
        """Fine-tune a copy of ``model`` on ``data`` (labels used)."""
        check_data(data)
        return train_layers(trainable_copy(model), self.layers, data, epochs=self.epochs, lr=self.lr,
                            seed=seed, weight_decay=self.weight_decay)


@dataclass(frozen=True)
class Retrain(_ContinuedTraining):
    """RTLL / RTAL (SoK, Table II): re-initialise the output layer, then train.

    Attributes:
        layers: ``"last"`` (RTLL: only the new output layer learns) or
            ``"all"`` (RTAL: every layer learns).
        epochs: passes over the attacker's data.
        lr: Adam learning rate.
        weight_decay: Adam's L2 weight decay (0, none, as in the SoK's catalogue here).
    """

    epochs: int = 20
    prefix: ClassVar[str] = "rt"

    def __call__(self, model: nn.Module, data: Dataset, *, seed: int) -> nn.Module:
        """Re-initialise a copy's output layer from ``seed`` and train it on ``data``."""
        check_data(data)
        out = trainable_copy(model)
        head = last_layer(out)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            head.reset_parameters()
        return train_layers(out, self.layers, data, epochs=self.epochs, lr=self.lr, seed=seed,
                            weight_decay=self.weight_decay)
