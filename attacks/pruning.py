"""Weight pruning and fine-pruning after Lukas et al.'s SoK (S&P 2022), Table II.

Pruning zeroes the smallest-magnitude weights of every layer; fine-pruning
(Liu, Dolan-Gavitt, Garg, "Fine-Pruning: Defending Against Backdooring
Attacks on Deep Neural Networks", RAID 2018) removes the units that clean
inputs leave dormant, where backdoor-style marks tend to live, then fine-tunes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from attacks.base import check_data, check_epochs, fmt, trainable_copy, weighted_layers
from core.arch import dormant_units, feature_layer, unit_activity
from core.data import Dataset
from core.errors import InputError
from core.training import train_classifier

__all__ = ["FinePrune", "Prune"]


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
        return f"prune:fraction={fmt(self.fraction)}"

    @torch.no_grad()
    def __call__(self, model: nn.Module, data: Dataset | None = None, *, seed: int = 0) -> nn.Module:
        """A pruned copy of ``model`` (``data`` and ``seed`` are not used: the attack is deterministic)."""
        out = trainable_copy(model)
        for layer in weighted_layers(out):
            w = layer.weight
            k = round(self.fraction * w.numel())
            if k == 0:
                continue
            order = torch.argsort(w.detach().abs().flatten(), stable=True)
            flat = w.data.view(-1)
            flat[order[:k]] = 0.0
        return out.eval()


@torch.no_grad()
def _mean_activation(model: nn.Module, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Mean positive part of each of ``layer``'s units (channels) over ``x``."""
    sums: list[torch.Tensor] = []

    def hook(_m: nn.Module, _i: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        sums.append(unit_activity(out) * out.shape[0])

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

    The attack measures each unit of the last feature layer (a convolution's
    channels, or an MLP's last hidden units) on the attacker's clean data,
    removes the ``fraction`` least active (their weights and bias held at
    zero), then fine-tunes every layer. In a residual network the last
    convolution feeds a batch norm and a shortcut, so its removed channels
    still pass the norm's bias: the attack is then weaker, as it would be in
    practice.

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
        check_epochs(self.epochs, self.lr)

    @property
    def name(self) -> str:
        """``fine-prune:fraction=...:epochs=...:lr=...``."""
        return f"fine-prune:fraction={fmt(self.fraction)}:epochs={self.epochs}:lr={fmt(self.lr)}"

    def __call__(self, model: nn.Module, data: Dataset, *, seed: int) -> nn.Module:
        """Prune a copy's dormant units, then fine-tune it on ``data`` (labels used)."""
        check_data(data)
        out = trainable_copy(model)
        layer = feature_layer(out)
        activity = _mean_activation(out, layer, data.x)
        dormant = dormant_units(activity, self.fraction)
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
