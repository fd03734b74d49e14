"""Knowledge distillation as a removal attack (Lukas et al.'s SoK, S&P 2022, Table II).

Hinton, Vinyals, Dean, "Distilling the Knowledge in a Neural Network" (2015):
the attacker holds the model and unlabelled inputs of the task, and trains a
fresh student on the model's temperature-softened outputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from attacks.base import check_data, check_epochs, fmt, trainable_copy
from core.arch import build_model, resolve_arch
from core.data import Dataset
from core.errors import InputError
from core.training import batches

__all__ = ["Distill"]


def _fresh_like(model: nn.Module, seed: int) -> nn.Module:
    """A copy of ``model``'s architecture with every layer re-initialised from ``seed``."""
    out = trainable_copy(model)
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
        student: the student's architecture (a name or ``MODULE:FUNCTION``,
            :func:`core.arch.resolve_arch`), or ``None`` for the teacher's own
            architecture, re-initialised.
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
        check_epochs(self.epochs, self.lr)
        if self.student is not None:
            resolve_arch(self.student)

    @property
    def name(self) -> str:
        """``distill:student=...:t=...:epochs=...:lr=...``."""
        return (f"distill:student={self.student or 'same'}:t={fmt(self.temperature)}"
                f":epochs={self.epochs}:lr={fmt(self.lr)}")

    def __call__(self, model: nn.Module, data: Dataset, *, seed: int) -> nn.Module:
        """Train a student on ``model``'s softened outputs over ``data.x`` (labels unused)."""
        check_data(data)
        teacher = trainable_copy(model).eval()
        with torch.no_grad():
            soft = torch.cat([torch.softmax(teacher(data.x[i : i + 1024]) / self.temperature, dim=1)
                              for i in range(0, len(data), 1024)])
        if self.student is None:
            student = _fresh_like(model, seed)
        else:
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
