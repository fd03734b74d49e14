"""AKH fingerprints: where the owner's model is wrong and independent models are right.

After the AKH fingerprint of QuRD (AAAI 2025), in its plainest form: among
inputs the owner holds, keep those the owner's model *misclassifies* while
independently trained reference models classify them *correctly*, and
commit the owner's wrong label as the probe's label. Independent models of
the task (the Rashomon set) agree on what is easy; they part ways on the
owner's idiosyncratic mistakes, and a model extracted from the owner's
answers inherits those mistakes. No adversarial optimisation: one forward
pass of the owner and of a few generation references over the pool.

Ranking: the share of generation references that get an input right
(highest first, at least ``agree``), then the owner's confidence in its
wrong label (highest first). The generation references come from a seed
stream disjoint from the null's (:mod:`fingerprint.zoo`), so the null's
references took no part in the choice.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from core.errors import DataError, InputError

__all__ = ["AKH", "Selection", "parse_akh"]

Model = Callable[[torch.Tensor], torch.Tensor]


@torch.no_grad()
def _probs(model: Model, x: torch.Tensor) -> torch.Tensor:
    return torch.cat([torch.softmax(model(x[i : i + 2048]).float(), dim=1)
                      for i in range(0, x.shape[0], 2048)])


@dataclass(frozen=True, eq=False)
class Selection:
    """Probes chosen from a pool: pool indices, inputs, committed labels, and why.

    ``refs_right`` is each probe's share of generation references predicting
    the true label; ``owner_conf`` the owner's probability on its (wrong)
    label; ``candidates`` how many pool inputs passed the filter.
    """

    index: torch.Tensor
    inputs: torch.Tensor
    labels: torch.Tensor
    refs_right: torch.Tensor
    owner_conf: torch.Tensor
    candidates: int


@dataclass(frozen=True)
class AKH:
    """The AKH scheme: ``n`` probes, kept where at least ``agree`` of the references are right."""

    n: int = 100
    agree: float = 0.8

    def __post_init__(self) -> None:
        if self.n < 1:
            raise InputError(f"an AKH fingerprint needs at least one probe, got n={self.n}")
        if not 0.0 <= self.agree <= 1.0:
            raise InputError(f"agree must lie in [0, 1], got {self.agree}")

    @property
    def name(self) -> str:
        """Canonical scheme name, e.g. ``akh:n=100:agree=0.8``."""
        return f"akh:n={self.n}:agree={self.agree:g}"

    def select(self, owner: Model, references: Sequence[Model], pool_x: torch.Tensor,
               pool_y: torch.Tensor) -> Selection:
        """Choose the probes from ``(pool_x, pool_y)``.

        Raises:
            InputError: no references, or a pool without labels for each input.
            DataError: fewer than ``n`` pool inputs pass the filter.
        """
        if not references:
            raise InputError("AKH needs generation reference models")
        if pool_x.shape[0] != pool_y.shape[0]:
            raise InputError("the pool needs one label per input")
        p_owner = _probs(owner, pool_x)
        owner_label = p_owner.argmax(dim=1)
        right = torch.stack([_probs(r, pool_x).argmax(dim=1) == pool_y for r in references])
        share = right.float().mean(dim=0)
        conf = p_owner.gather(1, owner_label[:, None])[:, 0]
        ok = (owner_label != pool_y) & (share >= self.agree)
        candidates = int(ok.sum())
        if candidates < self.n:
            raise DataError(
                f"only {candidates} inputs are misclassified by the owner and right for "
                f"{self.agree:.0%} of the references; {self.n} are needed",
                hint="lower the size or agree=, or give more data",
            )
        idx = torch.nonzero(ok)[:, 0]
        # Lexicographic: the share of references right first, the owner's confidence second.
        order = torch.argsort(share[idx] * 2.0 + conf[idx], descending=True, stable=True)[: self.n]
        keep = idx[order]
        return Selection(index=keep, inputs=pool_x[keep].contiguous(),
                         labels=owner_label[keep].contiguous(), refs_right=share[keep],
                         owner_conf=conf[keep], candidates=candidates)


def parse_akh(spec: str) -> AKH:
    """``akh[:k=v,...]`` with ``agree`` (and ``n``); :class:`InputError` if malformed."""
    name, _, rest = spec.partition(":")
    if name != "akh":
        raise InputError(f"not an AKH scheme: {spec!r}")
    kw: dict[str, float | int] = {}
    for part in filter(None, rest.replace(":", ",").split(",")):
        k, sep, v = part.partition("=")
        try:
            if k == "n" and sep:
                kw["n"] = int(v)
            elif k == "agree" and sep:
                kw["agree"] = float(v)
            else:
                raise ValueError
        except ValueError:
            raise InputError(f"bad AKH parameter {part!r}; use agree=FLOAT or n=INT") from None
    return AKH(**kw)  # type: ignore[arg-type]
