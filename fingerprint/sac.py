"""SAC fingerprints: sample correlation (Guan, Liang, He, "Are You Stealing My Model? Sample
Correlation for Fingerprinting Deep Neural Networks", NeurIPS 2022).

A model's fingerprint is the *correlation matrix* of its outputs over a set of
inputs, ``C[i, j] = cos(o_i, o_j)``; a suspect is scored by the mean absolute
difference of its matrix from the owner's (:func:`sac_distance`, lower is
closer). The inputs are

- **SAC-w**: inputs the owner's model misclassifies (its idiosyncrasies,
  which a copy inherits and independent models do not share);
- **SAC-m**: CutMix inputs (Yun et al., ICCV 2019): a random box of one
  pool image pasted into another, so that no input is a natural one.

The **label-only** variant uses one-hot outputs (``C[i, j] = 1`` when the
two labels agree), for suspects that answer labels only.

As a committed probe set (``wm fingerprint --method sac``), the inputs are
labelled with the owner's predictions and the verifier counts label
agreement on them (what a label-only suspect reveals probe by probe); the
correlation distances are the benchmark's figures beside it
(``benchmarks/fingerprint_fmnist.py``), with conformal p-values on the same
references.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from core.errors import DataError, InputError
from fingerprint.akh import Selection

__all__ = ["SAC", "correlation_matrix", "cutmix", "parse_sac", "sac_distance"]

Model = Callable[[torch.Tensor], torch.Tensor]
Mode = Literal["w", "m"]


@torch.no_grad()
def _outputs(model: Model, x: torch.Tensor, labels_only: bool) -> torch.Tensor:
    logits = torch.cat([model(x[i : i + 2048]).float() for i in range(0, x.shape[0], 2048)])
    if labels_only:
        return torch.nn.functional.one_hot(logits.argmax(dim=1), logits.shape[1]).float()
    return torch.softmax(logits, dim=1)


def correlation_matrix(model: Model, x: torch.Tensor, *, labels_only: bool = False) -> torch.Tensor:
    """``[n, n]`` cosine similarities of the model's outputs (softmax, or one-hot labels) on ``x``."""
    o = torch.nn.functional.normalize(_outputs(model, x, labels_only), dim=1)
    return o @ o.T


def sac_distance(owner_corr: torch.Tensor, model: Model, x: torch.Tensor, *,
                 labels_only: bool = False) -> float:
    """Mean absolute difference between the owner's correlation matrix and ``model``'s on ``x``."""
    return float((correlation_matrix(model, x, labels_only=labels_only) - owner_corr).abs().mean())


def cutmix(x: torch.Tensor, count: int, *, seed: int) -> torch.Tensor:
    """``count`` CutMix images ``[count, C, H, W]`` from ``x``: a random box of one pasted into another.

    The box's area share is drawn uniformly from [0.25, 0.75] (Yun et al. draw it
    from Beta(1, 1), i.e. uniform on [0, 1]; the ends give near-natural images).
    """
    if x.dim() != 4:
        raise InputError("CutMix needs images [N, C, H, W]")
    g = torch.Generator().manual_seed(seed)
    n, _, h, w = x.shape
    a = torch.randint(0, n, (count,), generator=g)
    b = torch.randint(0, n, (count,), generator=g)
    share = 0.25 + 0.5 * torch.rand(count, generator=g)
    out = x[a].clone()
    for i in range(count):
        bh = max(1, round(h * float(share[i]) ** 0.5))
        bw = max(1, round(w * float(share[i]) ** 0.5))
        y0 = int(torch.randint(0, h - bh + 1, (1,), generator=g))
        x0 = int(torch.randint(0, w - bw + 1, (1,), generator=g))
        out[i, :, y0 : y0 + bh, x0 : x0 + bw] = x[b[i], :, y0 : y0 + bh, x0 : x0 + bw]
    return out.contiguous()


@dataclass(frozen=True)
class SAC:
    """SAC-w (``mode="w"``, the owner's misclassified inputs) or SAC-m (``"m"``, CutMix), ``n`` inputs."""

    n: int = 100
    mode: Mode = "w"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n < 2:
            raise InputError(f"a SAC fingerprint needs at least two inputs, got n={self.n}")
        if self.mode not in ("w", "m"):
            raise InputError(f"SAC mode must be w or m, got {self.mode!r}")

    @property
    def name(self) -> str:
        """Canonical scheme name, e.g. ``sac-w:n=100:seed=0``."""
        return f"sac-{self.mode}:n={self.n}:seed={self.seed}"

    @torch.no_grad()
    def select(self, owner: Model, references: Sequence[Model], pool_x: torch.Tensor,
               pool_y: torch.Tensor) -> Selection:
        """The inputs (labelled with the owner's predictions); ``references`` are not used.

        SAC-w takes the owner's misclassified pool inputs it is most confident
        about (a random ``n`` of them, seeded, when more qualify); SAC-m makes
        ``n`` CutMix inputs from the pool.

        Raises:
            DataError: SAC-w and fewer than ``n`` misclassified inputs.
        """
        del references
        if self.mode == "m":
            x = cutmix(pool_x, self.n, seed=self.seed)
            p = torch.softmax(torch.cat([owner(x[i : i + 2048]).float()
                                         for i in range(0, x.shape[0], 2048)]), dim=1)
            conf, label = p.max(dim=1)
            return Selection(index=torch.arange(self.n), inputs=x, labels=label,
                             refs_right=torch.full((self.n,), float("nan")), owner_conf=conf,
                             candidates=self.n)
        p = torch.softmax(torch.cat([owner(pool_x[i : i + 2048]).float()
                                     for i in range(0, pool_x.shape[0], 2048)]), dim=1)
        conf, label = p.max(dim=1)
        wrong = torch.nonzero(label != pool_y)[:, 0]
        if wrong.numel() < self.n:
            raise DataError(f"the owner misclassifies only {wrong.numel()} pool inputs; "
                            f"SAC-w needs {self.n}", hint="lower the size, or use sac-m")
        g = torch.Generator().manual_seed(self.seed)
        keep = wrong[torch.randperm(wrong.numel(), generator=g)[: self.n]].sort().values
        return Selection(index=keep, inputs=pool_x[keep].contiguous(), labels=label[keep].contiguous(),
                         refs_right=torch.full((self.n,), float("nan")), owner_conf=conf[keep],
                         candidates=int(wrong.numel()))


def parse_sac(spec: str) -> SAC:
    """``sac[-w|-m][:k=v,...]`` with ``n``, ``seed``; :class:`InputError` if malformed."""
    name, _, rest = spec.partition(":")
    modes = {"sac": "w", "sac-w": "w", "sac-m": "m"}
    if name not in modes:
        raise InputError(f"not a SAC scheme: {spec!r}; use sac-w or sac-m")
    kw: dict[str, int] = {}
    for part in filter(None, rest.replace(":", ",").split(",")):
        k, sep, v = part.partition("=")
        if k not in ("n", "seed") or not sep:
            raise InputError(f"bad SAC parameter {part!r}; use n=INT or seed=INT")
        try:
            kw[k] = int(v)
        except ValueError:
            raise InputError(f"bad SAC parameter {part!r}; use n=INT or seed=INT") from None
    return SAC(mode=modes[name], **kw)  # type: ignore[arg-type]
