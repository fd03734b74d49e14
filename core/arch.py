"""Image and feature classifiers, chosen by name or by ``MODULE:FUNCTION`` (``--arch``).

Built in, in three families so that surrogates and references can differ from
the owner's architecture:

===============  ======  ==================================================================
``cnn``          cnn     two 3x3 convolutions (16, 32), max-pool, a dense layer (digits' default)
``cnn-wide``     cnn     the same with 32 and 64 channels
``convnet``      cnn     two blocks of a 3x3 convolution (32, 64 channels), batch norm and
                         max-pool, a dense layer (Fashion-MNIST's default)
``resnet``       resnet  a small ResNet (He, Zhang, Ren, Sun, CVPR 2016, Section 4.2's
                         CIFAR design with one basic block per stage, 16/32/64 channels,
                         global average pooling)
``resnet-wide``  resnet  the same with 32/64/128 channels (0.31M parameters; above 91% on
                         Fashion-MNIST with ``wm train``'s recipe)
``mlp``          mlp     flatten, two hidden ReLU layers (256, 128); any input shape
``mlp-wide``     mlp     the same with 512 and 256 units
===============  ======  ==================================================================

Each takes float32 ``[N, C, H, W]`` (``mlp``: any ``[N, ...]``, so also flat
``[N, D]`` features) of any size and returns logits ``[N, classes]``; each has
a dropout layer before its head (the conferrable example ensembles of
:mod:`fingerprint` average softmax with dropout active).

**Your own architecture.** Anywhere an architecture is named, ``MODULE:FUNCTION``
(for example ``mymodels:resnet18``) imports ``MODULE`` (from the Python path,
then the current directory) and calls ``FUNCTION(input_shape, num_classes)``,
which must return an ``nn.Module``. From Python, :func:`register_architecture`
adds a name for the rest of the process. Model files record the name or the
``MODULE:FUNCTION`` string, so a saved model can be rebuilt for fine-tuning.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from core.errors import InputError

__all__ = [
    "ARCHITECTURES",
    "Architecture",
    "Builder",
    "build_model",
    "dormant_units",
    "family_of",
    "feature_layer",
    "register_architecture",
    "resolve_arch",
    "unit_activity",
]

Builder = Callable[[tuple[int, ...], int], nn.Module]
"""``build(input_shape, num_classes) -> nn.Module``: what an architecture is."""


@dataclass(frozen=True)
class Architecture:
    """A named architecture and the family it belongs to.

    Attributes:
        name: a built-in or registered name, or ``MODULE:FUNCTION``.
        family: architectures of one family are alike (``cnn``, ``resnet``,
            ``mlp``; ``custom`` for a user's own unless registered otherwise).
        build: ``build(input_shape, num_classes)`` returns a fresh ``nn.Module``.
    """

    name: str
    family: str
    build: Builder


def _shape3(input_shape: tuple[int, ...], arch: str) -> tuple[int, int, int]:
    if len(input_shape) != 3:
        raise InputError(f"architecture {arch!r} takes inputs [C, H, W], got {list(input_shape)}",
                         hint="use mlp, or your own architecture, for flat [D] features")
    c, h, w = input_shape
    return c, h, w


class SmallCNN(nn.Module):
    """Two 3x3 conv layers, max-pool, one hidden dense layer."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, width: int = 16) -> None:
        super().__init__()
        c, h, w = _shape3(input_shape, "cnn")
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


def _conv_bn(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout)]


class ConvNet(nn.Module):
    """Two blocks of a 3x3 conv, batch norm, ReLU and max-pool (32, 64 channels), then a dense layer."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, width: int = 32) -> None:
        super().__init__()
        c, h, w = _shape3(input_shape, "convnet")
        if min(h, w) < 4:
            raise InputError(f"convnet pools twice and needs inputs of at least 4x4, got {h}x{w}")
        self.features = nn.Sequential(
            *_conv_bn(c, width), nn.ReLU(), nn.MaxPool2d(2),
            *_conv_bn(width, 2 * width), nn.ReLU(), nn.MaxPool2d(2),
        )
        flat = 2 * width * (h // 4) * (w // 4)
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(flat, 128), nn.ReLU(), nn.Dropout(0.3), nn.Linear(128, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class BasicBlock(nn.Module):
    """Two 3x3 conv + batch-norm layers with an identity (or 1x1 projection) shortcut."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(*_conv_bn(cin, cout, stride), nn.ReLU(), *_conv_bn(cout, cout))
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.shortcut(x))


class SmallResNet(nn.Module):
    """A CIFAR-style ResNet (He et al. 2016, Section 4.2): stem, three stages, global pooling."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, width: int = 16,
                 blocks: int = 1) -> None:
        super().__init__()
        c, _, _ = _shape3(input_shape, "resnet")
        layers: list[nn.Module] = [*_conv_bn(c, width), nn.ReLU()]
        cin = width
        for stage in range(3):
            cout = width * 2**stage
            for b in range(blocks):
                layers.append(BasicBlock(cin, cout, 2 if stage > 0 and b == 0 else 1))
                cin = cout
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Sequential(nn.Dropout(0.1), nn.Linear(cin, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class MLP(nn.Module):
    """Flatten, two hidden ReLU layers; any input shape."""

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


ARCHITECTURES: dict[str, Architecture] = {
    a.name: a
    for a in (
        Architecture("cnn", "cnn", lambda s, k: SmallCNN(s, k, width=16)),
        Architecture("cnn-wide", "cnn", lambda s, k: SmallCNN(s, k, width=32)),
        Architecture("convnet", "cnn", lambda s, k: ConvNet(s, k, width=32)),
        Architecture("resnet", "resnet", lambda s, k: SmallResNet(s, k, width=16, blocks=1)),
        Architecture("resnet-wide", "resnet", lambda s, k: SmallResNet(s, k, width=32, blocks=1)),
        Architecture("mlp", "mlp", lambda s, k: MLP(s, k, hidden=256)),
        Architecture("mlp-wide", "mlp", lambda s, k: MLP(s, k, hidden=512)),
    )
}
"""The architectures known by name: the built-ins and those added by :func:`register_architecture`."""


def register_architecture(name: str, build: Builder, *, family: str = "custom") -> Architecture:
    """Make ``name`` an architecture for the rest of the process (``--arch NAME`` in Python code).

    Args:
        name: the new name; letters, digits, ``-``, ``_`` and ``.``, not taken.
        build: ``build(input_shape, num_classes)`` returning a fresh ``nn.Module``.
        family: the family it belongs to (ensembles mix families).

    Raises:
        InputError: if the name is malformed or already taken.
    """
    if not name or not all(ch.isalnum() or ch in "-_." for ch in name):
        raise InputError(f"an architecture name is letters, digits, '-', '_' and '.', got {name!r}")
    if name in ARCHITECTURES:
        raise InputError(f"architecture {name!r} is already registered")
    if not callable(build):
        raise InputError(f"architecture {name!r} needs a callable builder")
    arch = Architecture(name, family, build)
    ARCHITECTURES[name] = arch
    return arch


def _import_builder(spec: str) -> Builder:
    module_name, _, func_name = spec.partition(":")
    if not module_name or not func_name or ":" in func_name:
        raise InputError(f"unknown architecture {spec!r}",
                         hint=f"choose one of {', '.join(ARCHITECTURES)} or give MODULE:FUNCTION")
    added = os.getcwd() not in sys.path
    if added:
        sys.path.append(os.getcwd())  # `wm` as a console script does not search the current directory
    try:
        module = importlib.import_module(module_name)
    except (ImportError, SyntaxError) as exc:
        raise InputError(f"--arch {spec}: cannot import {module_name!r} ({exc.__class__.__name__}: {exc})",
                         hint="MODULE must be importable from the current directory or the Python path"
                         ) from exc
    finally:
        if added:
            sys.path.remove(os.getcwd())
    build = getattr(module, func_name, None)
    if not callable(build):
        raise InputError(f"--arch {spec}: {module_name} has no function {func_name!r}")
    return build


def resolve_arch(spec: str) -> Architecture:
    """The architecture a name or a ``MODULE:FUNCTION`` string stands for.

    Raises:
        InputError: an unknown name, or a module or function that cannot be found.
    """
    if spec in ARCHITECTURES:
        return ARCHITECTURES[spec]
    if ":" not in spec:
        raise InputError(f"unknown architecture {spec!r}",
                         hint=f"choose one of {', '.join(ARCHITECTURES)} or give MODULE:FUNCTION")
    return Architecture(spec, "custom", _import_builder(spec))


def build_model(arch: str, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """A freshly initialised model of ``arch`` (a name or ``MODULE:FUNCTION``; seed torch first).

    Raises:
        InputError: an unknown architecture, one that cannot take ``input_shape``,
            or a builder that does not return an ``nn.Module``.
    """
    spec = resolve_arch(arch)
    shape = tuple(int(s) for s in input_shape)
    try:
        model = spec.build(shape, int(num_classes))
    except (TypeError, ValueError, RuntimeError) as exc:
        raise InputError(f"architecture {arch!r} could not be built for inputs {list(shape)} and "
                         f"{num_classes} classes ({exc.__class__.__name__}: {exc})") from exc
    if not isinstance(model, nn.Module):
        raise InputError(f"architecture {arch!r} returned {type(model).__name__}, not an nn.Module")
    return model


def family_of(arch: str) -> str:
    """The family of an architecture (``cnn``, ``resnet``, ``mlp``, or ``custom``)."""
    return resolve_arch(arch).family


def feature_layer(model: nn.Module) -> nn.Linear | nn.modules.conv._ConvNd:
    """The layer fine-pruning prunes: the last convolution, or for a dense network the last hidden
    dense layer (Liu et al., RAID 2018; the SoK's fine-pruning, :class:`attacks.FinePrune`).

    Raises:
        InputError: if ``model`` has no convolution and fewer than two dense layers.
    """
    convs: list[nn.modules.conv._ConvNd] = [m for m in model.modules()
                                              if isinstance(m, nn.modules.conv._ConvNd)]
    if convs:
        return convs[-1]
    dense: list[nn.Linear] = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if len(dense) < 2:
        raise InputError("fine-pruning needs a hidden layer before the output layer")
    return dense[-2]


def unit_activity(out: torch.Tensor) -> torch.Tensor:
    """Each unit's activity in a batch of ``out`` (a layer's output ``[N, units, ...]``): the
    positive part summed over positions, averaged over the batch, as fine-pruning measures it."""
    return out.clamp(min=0).sum(dim=[0, *range(2, out.dim())]) / out.shape[0]


def dormant_units(activity: torch.Tensor, fraction: float) -> torch.Tensor:
    """Indices of the least active ``fraction`` of the units (ties in index order): the units
    fine-pruning removes."""
    return torch.argsort(activity, stable=True)[: round(fraction * activity.numel())]
