"""Small image-classifier architectures, chosen by name (``--arch``).

Two families, so that surrogates and references can differ from the owner's
architecture: convolutional (``cnn``, ``cnn-wide``) and fully connected
(``mlp``, ``mlp-wide``). Each takes float32 ``[N, C, H, W]`` and returns logits
``[N, classes]``; each has a dropout layer before its head (the conferrable
example ensembles of :mod:`fingerprint` average softmax with dropout active).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from core.errors import InputError

__all__ = ["ARCHITECTURES", "Architecture", "build_model", "family_of"]


@dataclass(frozen=True)
class Architecture:
    """A named architecture and the family it belongs to."""

    name: str
    family: str
    build: Callable[[tuple[int, ...], int], nn.Module]


class SmallCNN(nn.Module):
    """Two 3x3 conv layers, max-pool, one hidden dense layer."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, width: int = 16) -> None:
        super().__init__()
        c, h, w = input_shape
        self.features = nn.Sequential(
            nn.Conv2d(c, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        flat = 2 * width * (h // 2) * (w // 2)
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(flat, 128), nn.ReLU(), nn.Dropout(0.1), nn.Linear(128, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class MLP(nn.Module):
    """Flatten, two hidden ReLU layers."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, hidden: int = 256) -> None:
        super().__init__()
        d = 1
        for s in input_shape:
            d *= s
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(d, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden // 2),
            nn.ReLU(),
            nn.Dropout(0.1),
            nn.Linear(hidden // 2, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _shape3(input_shape: tuple[int, ...]) -> tuple[int, int, int]:
    if len(input_shape) != 3:
        raise InputError(f"architectures take inputs [C, H, W], got {list(input_shape)}")
    c, h, w = input_shape
    return c, h, w


ARCHITECTURES: dict[str, Architecture] = {
    a.name: a
    for a in (
        Architecture("cnn", "cnn", lambda s, k: SmallCNN(_shape3(s), k, width=16)),
        Architecture("cnn-wide", "cnn", lambda s, k: SmallCNN(_shape3(s), k, width=32)),
        Architecture("mlp", "mlp", lambda s, k: MLP(_shape3(s), k, hidden=256)),
        Architecture("mlp-wide", "mlp", lambda s, k: MLP(_shape3(s), k, hidden=512)),
    )
}


def build_model(arch: str, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """A freshly initialised model of the named architecture (seed torch first)."""
    try:
        spec = ARCHITECTURES[arch]
    except KeyError:
        raise InputError(
            f"unknown architecture {arch!r}", hint=f"choose one of {', '.join(ARCHITECTURES)}"
        ) from None
    return spec.build(tuple(input_shape), num_classes)


def family_of(arch: str) -> str:
    """The family (``cnn`` or ``mlp``) of a named architecture."""
    if arch not in ARCHITECTURES:
        raise InputError(f"unknown architecture {arch!r}")
    return ARCHITECTURES[arch].family
