"""Model extraction through a prediction API, and the query sets it sends.

Tramèr, Zhang, Juels, Reiter, Ristenpart, "Stealing Machine Learning Models
via Prediction APIs" (USENIX Security 2016); Orekondy, Schiele, Fritz,
"Knockoff Nets" (CVPR 2019). The attacker never sees the weights: it sends
inputs to an answer function (an :data:`AnswerFn`: labels int64 ``[N]`` or
probabilities float ``[N, C]``) and trains a surrogate of any architecture
on the answers; with another architecture than the owner's it is the SoK's
*cross-architecture retraining* (Lukas et al., S&P 2022, Table II). The same
attack runs in-process (:func:`query_model`), against ``wm serve``, or
through ``wm guard``, with an HTTP client behind the function.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import nn

from attacks.base import check_epochs, fmt
from core.arch import resolve_arch
from core.errors import InputError
from core.inputrange import UNIT, InputRange
from core.training import train_new

__all__ = ["AnswerFn", "Extract", "query_inputs", "query_model"]

AnswerFn = Callable[[torch.Tensor], torch.Tensor]
"""An API as the attacker sees it: inputs ``[N, ...]`` to labels ``[N]`` or probabilities ``[N, K]``."""


@torch.no_grad()
def _ask(answer: AnswerFn, queries: torch.Tensor, num_classes: int, batch: int) -> torch.Tensor:
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
    used, so an HTTP client can stand behind ``answer``.

    Attributes:
        arch: the surrogate's architecture (a name or ``MODULE:FUNCTION``,
            :func:`core.arch.resolve_arch`).
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
        resolve_arch(self.arch)
        check_epochs(self.epochs, self.lr)
        if self.query_batch < 1:
            raise InputError(f"query_batch must be at least 1, got {self.query_batch}")

    @property
    def name(self) -> str:
        """``extract:arch=...:epochs=...:lr=...``."""
        return f"extract:arch={self.arch}:epochs={self.epochs}:lr={fmt(self.lr)}"

    def answers(self, answer: AnswerFn, queries: torch.Tensor, *, num_classes: int) -> torch.Tensor:
        """Ask the API about every query (in ``query_batch`` chunks) and validate the answers."""
        if queries.dim() < 2 or queries.shape[0] == 0:
            raise InputError("extraction needs at least one query input [N, ...]")
        return _ask(answer, queries, num_classes, self.query_batch)

    def fit(self, queries: torch.Tensor, answers: torch.Tensor, *, num_classes: int,
            seed: int) -> nn.Module:
        """Train the surrogate on already collected ``(queries, answers)``."""
        return train_new(self.arch, queries, answers, num_classes=num_classes, epochs=self.epochs,
                         seed=seed, lr=self.lr)

    def __call__(self, answer: AnswerFn, queries: torch.Tensor, *, num_classes: int,
                 seed: int) -> nn.Module:
        """Query ``answer`` on ``queries`` and return the trained surrogate (eval mode)."""
        return self.fit(queries, self.answers(answer, queries, num_classes=num_classes),
                        num_classes=num_classes, seed=seed)


def query_model(model: Callable[[torch.Tensor], torch.Tensor],
                output: Literal["labels", "probabilities"] = "labels") -> AnswerFn:
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


_SHIFTS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))


def query_inputs(pool: torch.Tensor, budget: int, *, seed: int, noise: float = 0.05,
                 input_range: InputRange = UNIT) -> torch.Tensor:
    """``budget`` query inputs from the attacker's ``pool`` ``[N, ...]``, in a seeded order.

    The first ``len(pool)`` queries are the pool itself (shuffled by ``seed``),
    so a smaller budget's queries are a prefix of a larger one's. Beyond that,
    each extra query is a pool input plus Gaussian noise of standard deviation
    ``noise * input_range.span``, clipped to ``input_range``; images
    (``[C, H, W]``) are first shifted by one pixel in a random direction, the
    vacated pixels set to ``input_range.low``: cheap synthetic inputs in the
    spirit of Papernot et al.'s augmentation (AsiaCCS 2017).
    """
    n = pool.shape[0]
    if budget < 1:
        raise InputError(f"the query budget must be at least 1, got {budget}")
    if n == 0 or pool.dim() < 2:
        raise InputError("the query pool must be a non-empty tensor [N, ...]")
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=gen)
    take = order[: min(budget, n)]
    out = [pool[take]]
    extra = budget - n
    rounds = math.ceil(extra / n) if extra > 0 else 0
    for r in range(rounds):
        m = min(n, extra - r * n)
        src = pool[order[:m]]
        if pool.dim() == 4:
            shifts = torch.randint(0, len(_SHIFTS), (m,), generator=gen)
            moved = torch.empty_like(src)
            for j, s in enumerate(shifts.tolist()):
                moved[j] = _shift(src[j], *_SHIFTS[s], fill=input_range.low)
            src = moved
        jitter = torch.randn(src.shape, generator=gen, dtype=src.dtype) * (noise * input_range.span)
        out.append((src + jitter).clamp(input_range.low, input_range.high))
    return torch.cat(out).contiguous()


def _shift(img: torch.Tensor, dy: int, dx: int, *, fill: float) -> torch.Tensor:
    """``img`` ``[C, H, W]`` moved by ``(dy, dx)`` pixels, vacated pixels ``fill``."""
    out = torch.full_like(img, fill)
    h, w = img.shape[-2:]
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    out[..., yd, xd] = img[..., ys, xs]
    return out
