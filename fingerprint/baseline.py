"""Baseline fingerprint: plain (non-conferrable) adversarial examples of the owner model.

The "earlier fingerprints" Lukas et al. (ICLR 2021, Section 6) compare against:
untargeted L-infinity PGD (Madry et al., ICLR 2018) on the owner model alone,
from seeds it classifies correctly, labelled with the owner's prediction on
the result. Adversarial examples transfer to surrogates *and* to independent
models, which is why they separate the two poorly; the benchmark measures it
with the same calibration as :mod:`fingerprint.cae`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from core.errors import DataError, InputError
from fingerprint.cae import pick_seeds

__all__ = ["AdversarialExamples"]


@dataclass(frozen=True)
class AdversarialExamples:
    """Plain PGD adversarial examples; every parameter is part of :attr:`name`.

    Attributes:
        n: fingerprint size.
        eps: L-infinity radius (inputs live in [0, 1]).
        steps: PGD steps.
        step_size: size of each signed-gradient step.
    """

    n: int = 100
    eps: float = 0.25
    steps: int = 40
    step_size: float = 0.02
    family: ClassVar[str] = "adv-pgd"

    def __post_init__(self) -> None:
        if self.n < 1 or self.steps < 1:
            raise InputError("adv-pgd: n and steps must be at least 1")
        if not 0.0 < self.eps <= 1.0 or not self.step_size > 0:
            raise InputError("adv-pgd: eps must be in (0, 1] and step_size positive")

    @property
    def name(self) -> str:
        """Canonical name, e.g. ``adv-pgd:n=100:eps=0.25:steps=40:step=0.02``."""
        return f"{self.family}:n={self.n}:eps={self.eps:g}:steps={self.steps}:step={self.step_size:g}"

    def generate(self, owner: nn.Module, data_x: torch.Tensor, data_y: torch.Tensor, *,
                 seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(inputs, owner labels)`` of ``n`` successful adversarial examples.

        Seeds are drawn with ``seed`` among inputs the owner classifies
        correctly (twice as many as needed); the first ``n`` on which the
        owner's label changed are kept.

        Raises:
            DataError: fewer than ``n`` attacks succeed.
        """
        idx = pick_seeds(owner, data_x, data_y, 2 * self.n, seed)
        x0, y0 = data_x[idx].clone(), data_y[idx]
        x = x0.clone()
        for _ in range(self.steps):
            x.requires_grad_(True)
            loss = F.cross_entropy(owner(x), y0, reduction="sum")
            (grad,) = torch.autograd.grad(loss, x)
            with torch.no_grad():
                x = x + self.step_size * grad.sign()
                x = torch.clamp(torch.minimum(torch.maximum(x, x0 - self.eps), x0 + self.eps),
                                0.0, 1.0)
        with torch.no_grad():
            labels = owner(x).argmax(dim=1)
        ok = torch.nonzero(labels != y0).flatten()
        if ok.numel() < self.n:
            raise DataError(f"adv-pgd: only {ok.numel()} of {len(idx)} attacks succeeded; "
                            f"{self.n} are needed", hint="raise eps or steps")
        keep = ok[: self.n]
        return x[keep].detach().clone(), labels[keep].clone()
