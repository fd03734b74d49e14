"""Conferrable adversarial examples (CAEs): the optimisation and the scheme.

Lukas, Zhang, Kerschbaum, "Deep Neural Network Fingerprinting by Conferrable
Adversarial Examples" (ICLR 2021), Section 4 (Definitions 1-2, Eq. 1-3):

- transferability ``T(M, x; t)`` = share of models in M predicting ``t`` on x;
- conferrability ``Conf(x; t) = T(S, x; t) * (1 - T(R, x; t))``;
- ensembles ``E_S``, ``E_R`` average softmax over members, dropout active;
  ``sigma(x') = E_S(x') * (1 - E_R(x'))`` elementwise;
- from a seed ``x0`` the owner classifies correctly, Adam minimises, over
  ``x'`` in the L-infinity ball of radius ``eps`` around ``x0`` clipped to
  [0, 1],
  ``alpha*H(1, max_t sigma_t) - beta*H(M(x0), M(x')) + gamma*H(M(x'), E_S(x'))``
  where ``H(p, q) = -sum p log q``;
- keep the ``x'`` whose conferrability passes a cut-off, labelled with the
  owner's prediction.

Beyond the paper, against the hardest null (references of the owner's own
architecture trained on the same data, DESIGN.md "Statistics"), two options
that the benchmark measures one by one:

- ``ref_weight``: the owner-architecture references weigh ``ref_weight`` times
  as much as the others in ``E_R`` (and in the measured ``T(R, .)``), so the
  optimisation pushes hardest away from what independent models of the same
  family do;
- ``select=worst-group``: candidates are ranked by
  ``T(S, x; t) * (1 - max_g T(R_g, x; t))`` over architecture groups ``g``,
  i.e. by the group of references that agrees most with the owner, instead
  of by the pooled ``T(R, .)``;

and ``steps`` (longer optimisation) and ``candidates`` (seeds tried per kept
example) are ordinary parameters. Every parameter is in :attr:`ConferrableExamples.name`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import numpy as np
import torch
from torch import nn

from core.errors import DataError, InputError
from fingerprint.ensembles import Member

__all__ = [
    "Candidates",
    "ConferrableExamples",
    "Selection",
    "conferrability",
    "ensemble_softmax",
    "parse_cae",
    "pick_seeds",
    "transferability",
]

Selection = Literal["conf", "worst-group"]
SELECTIONS: tuple[str, ...] = ("conf", "worst-group")
Model = Callable[[torch.Tensor], torch.Tensor]
_TINY = 1e-12


def _fmt(v: float) -> str:
    return f"{v:g}"


@torch.no_grad()
def _labels(model: Model, x: torch.Tensor) -> torch.Tensor:
    return torch.cat([model(x[i : i + 2048]).argmax(dim=1) for i in range(0, x.shape[0], 2048)])


def transferability(members: Sequence[Member], x: torch.Tensor, t: torch.Tensor,
                    weights: Sequence[float] | None = None) -> torch.Tensor:
    """``T(M, x; t)``: the (weighted) share of members predicting ``t`` on each x, ``[N]``.

    Members are evaluated as they are (eval mode: no dropout).
    """
    if not members:
        raise InputError("transferability over an empty set of models is undefined")
    w = torch.ones(len(members)) if weights is None else torch.as_tensor(weights, dtype=torch.float32)
    votes = torch.stack([(_labels(m.module, x) == t).float() for m in members], dim=1)
    return (votes * w).sum(dim=1) / w.sum()


def conferrability(surrogates: Sequence[Member], references: Sequence[Member], x: torch.Tensor,
                   t: torch.Tensor, *, weights: Sequence[float] | None = None,
                   worst_group: bool = False) -> torch.Tensor:
    """``Conf(x; t) = T(S, x; t) * (1 - T(R, x; t))``, ``[N]``.

    Args:
        surrogates: S.
        references: R.
        x: inputs ``[N, ...]``.
        t: target label per input, int64 ``[N]``.
        weights: per-reference weights in ``T(R, .)`` (default uniform, the paper's).
        worst_group: use ``max`` over architecture groups of ``T(R_g, x; t)``
            instead of the pooled ``T(R, x; t)``.
    """
    ts = transferability(surrogates, x, t)
    if worst_group:
        groups: dict[str, list[Member]] = {}
        for m in references:
            groups.setdefault(m.spec.arch, []).append(m)
        tr = torch.stack([transferability(g, x, t) for g in groups.values()], dim=1).amax(dim=1)
    else:
        tr = transferability(references, x, t, weights)
    return ts * (1.0 - tr)


def ensemble_softmax(members: Sequence[Member], x: torch.Tensor,
                     weights: torch.Tensor | None = None) -> torch.Tensor:
    """Weighted mean softmax of members on ``x`` (differentiable), ``[N, C]``."""
    probs = torch.stack([torch.softmax(m.module(x), dim=1) for m in members], dim=0)
    if weights is None:
        return probs.mean(dim=0)
    w = (weights / weights.sum()).view(-1, 1, 1)
    return (probs * w).sum(dim=0)


def pick_seeds(owner: Model, x: torch.Tensor, y: torch.Tensor, count: int,
               seed: int) -> torch.Tensor:
    """Indices of ``count`` inputs the owner classifies correctly, drawn with ``seed``."""
    correct = torch.nonzero(_labels(owner, x) == y).flatten().numpy()
    if correct.size == 0:
        raise DataError("the owner model classifies none of the seed inputs correctly")
    rng = np.random.default_rng(seed)
    chosen = rng.permutation(correct)[: min(count, correct.size)]
    return torch.from_numpy(np.ascontiguousarray(chosen)).long()


@dataclass(frozen=True, eq=False)
class Candidates:
    """Optimised candidates and their measured conferrability.

    Attributes:
        inputs: float32 ``[K, ...]`` optimised inputs.
        labels: owner's prediction on each, int64 ``[K]``.
        conferrability: measured ``Conf(x'; label)`` on the generation
            ensembles (eval mode, as selected by the scheme), ``[K]``.
        seed_index: index of each candidate's seed in the seed data, ``[K]``.
        history: ``(step, mean measured conferrability)`` over the optimisation.
    """

    inputs: torch.Tensor
    labels: torch.Tensor
    conferrability: torch.Tensor
    seed_index: torch.Tensor
    history: tuple[tuple[int, float], ...] = field(default=())

    def select(self, n: int, threshold: float) -> torch.Tensor:
        """Indices of the ``n`` most conferrable candidates at or above ``threshold``.

        Raises:
            DataError: fewer than ``n`` candidates pass the cut-off.
        """
        order = torch.argsort(-self.conferrability, stable=True)
        passing = order[self.conferrability[order] >= threshold]
        if passing.numel() < n:
            raise DataError(
                f"only {passing.numel()} of {len(self.conferrability)} candidates reach "
                f"conferrability {threshold:g}; {n} are needed",
                hint="try more candidates, more surrogates and references, more steps, "
                "a larger eps or a lower cut-off",
            )
        return passing[:n]


@dataclass(frozen=True)
class ConferrableExamples:
    """The CAE fingerprint scheme; every parameter is part of :attr:`name`.

    Attributes:
        n: fingerprint size (probes kept).
        eps: L-infinity radius around each seed (inputs live in [0, 1]).
        steps: Adam steps.
        lr: Adam learning rate.
        alpha: weight of ``H(1, max_t sigma_t)`` (conferrability).
        beta: weight of ``-H(M(x0), M(x'))`` (leave the seed's label).
        gamma: weight of ``H(M(x'), E_S(x'))`` (surrogates agree with the owner).
        threshold: conferrability cut-off for keeping a candidate.
        candidates: seeds optimised per kept example.
        ref_weight: weight of owner-architecture references in ``E_R`` and
            ``T(R, .)`` relative to the others (1 = the paper).
        select: ``conf`` (the paper) or ``worst-group`` (see the module docstring).

    Defaults differ from the reimplementations' ``beta = 1``, ``lr = 0.01``,
    ``eps = 0.25``, cut-off 0.85: on ``digits`` with those, the unbounded
    ``-beta*H(M(x0), M(x'))`` term dominates (the owner is pushed ever deeper
    into another class, which every model follows) and almost no candidate
    passes 0.85; ``benchmarks/fingerprint.py`` measures both.
    """

    n: int = 100
    eps: float = 0.4
    steps: int = 100
    lr: float = 0.03
    alpha: float = 1.0
    beta: float = 0.1
    gamma: float = 1.0
    threshold: float = 0.5
    candidates: int = 4
    ref_weight: float = 1.0
    select: Selection = "conf"
    family: ClassVar[str] = "cae"

    def __post_init__(self) -> None:
        if self.n < 1:
            raise InputError(f"cae: n must be at least 1, got {self.n}")
        if not 0.0 < self.eps <= 1.0:
            raise InputError(f"cae: eps must be in (0, 1], got {self.eps}")
        if self.steps < 1:
            raise InputError(f"cae: steps must be at least 1, got {self.steps}")
        if not self.lr > 0:
            raise InputError(f"cae: lr must be positive, got {self.lr}")
        if min(self.alpha, self.beta, self.gamma) < 0:
            raise InputError("cae: alpha, beta and gamma must not be negative")
        if not 0.0 <= self.threshold <= 1.0:
            raise InputError(f"cae: threshold must be in [0, 1], got {self.threshold}")
        if self.candidates < 1:
            raise InputError(f"cae: candidates must be at least 1, got {self.candidates}")
        if not self.ref_weight > 0:
            raise InputError(f"cae: ref_weight must be positive, got {self.ref_weight}")
        if self.select not in SELECTIONS:
            raise InputError(f"cae: unknown selection {self.select!r}; choose one of {SELECTIONS}")

    @property
    def name(self) -> str:
        """Canonical name, e.g. ``cae:n=100:eps=0.25:steps=100:...:select=conf``."""
        return (
            f"{self.family}:n={self.n}:eps={_fmt(self.eps)}:steps={self.steps}:lr={_fmt(self.lr)}"
            f":alpha={_fmt(self.alpha)}:beta={_fmt(self.beta)}:gamma={_fmt(self.gamma)}"
            f":conf={_fmt(self.threshold)}:candidates={self.candidates}"
            f":ref-weight={_fmt(self.ref_weight)}:select={self.select}"
        )

    def reference_weights(self, references: Sequence[Member], owner_arch: str | None) -> list[float]:
        """Per-reference weights: ``ref_weight`` for the owner's architecture, else 1."""
        return [self.ref_weight if m.spec.arch == owner_arch else 1.0 for m in references]

    def measure(self, surrogates: Sequence[Member], references: Sequence[Member],
                owner_arch: str | None, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Conferrability as this scheme measures it (weights and selection rule)."""
        return conferrability(surrogates, references, x, t,
                              weights=self.reference_weights(references, owner_arch),
                              worst_group=self.select == "worst-group")

    def optimise(
        self,
        owner: nn.Module,
        owner_arch: str | None,
        surrogates: Sequence[Member],
        references: Sequence[Member],
        seeds_x: torch.Tensor,
        seed_index: torch.Tensor,
        *,
        seed: int,
        record_every: int = 10,
    ) -> Candidates:
        """Run the CAE optimisation from every seed input (Lukas et al., Eq. 3).

        Args:
            owner: the owner's model, in eval mode (it is not put in train mode).
            owner_arch: the owner's architecture name (for ``ref_weight``).
            surrogates: generation surrogates (put in train mode for dropout
                while optimising, restored to eval mode after).
            references: generation references (likewise).
            seeds_x: seed inputs ``[K, ...]`` in [0, 1].
            seed_index: their indices in the seed data (carried through).
            seed: seeds the dropout masks.
            record_every: how often (in steps) to record the measured conferrability.
        """
        if not surrogates or not references:
            raise InputError("cae needs at least one surrogate and one reference")
        rw = torch.tensor(self.reference_weights(references, owner_arch))
        x0 = seeds_x.detach().clone().float()
        history: list[tuple[int, float]] = []

        def record(step: int, x: torch.Tensor) -> None:
            t = _labels(owner, x)
            history.append((step, float(self.measure(surrogates, references, owner_arch, x, t)
                                        .mean())))

        with torch.no_grad():
            p0 = torch.softmax(owner(x0), dim=1)
        members = [m.module for m in (*surrogates, *references)]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            record(0, x0)
            x = x0.clone().requires_grad_(True)
            opt = torch.optim.Adam([x], lr=self.lr)
            for mod in members:
                mod.train()
            try:
                for step in range(1, self.steps + 1):
                    opt.zero_grad(set_to_none=True)
                    loss = self.loss(owner, surrogates, references, rw, x, p0).sum()
                    loss.backward()
                    opt.step()
                    with torch.no_grad():
                        x.copy_(torch.clamp(torch.minimum(torch.maximum(x, x0 - self.eps),
                                                          x0 + self.eps), 0.0, 1.0))
                    if step % record_every == 0 or step == self.steps:
                        for mod in members:
                            mod.eval()
                        record(step, x.detach())
                        for mod in members:
                            mod.train()
            finally:
                for mod in members:
                    mod.eval()
        xf = x.detach().clone()
        labels = _labels(owner, xf)
        conf = self.measure(surrogates, references, owner_arch, xf, labels)
        return Candidates(xf, labels, conf, seed_index.clone(), tuple(history))

    def loss(self, owner: Model, surrogates: Sequence[Member], references: Sequence[Member],
             ref_weights: torch.Tensor, x: torch.Tensor, p0: torch.Tensor) -> torch.Tensor:
        """Per-example CAE loss (Lukas et al., Eq. 3), ``[K]``; differentiable in ``x``."""
        e_s = ensemble_softmax(surrogates, x)
        e_r = ensemble_softmax(references, x, ref_weights)
        sigma = e_s * (1.0 - e_r)
        conf_term = -torch.log(sigma.amax(dim=1) + _TINY)  # H(1, max_t sigma_t)
        log_m = torch.log_softmax(owner(x), dim=1)
        leave_term = -(p0 * log_m).sum(dim=1)  # H(M(x0), M(x'))
        agree_term = -(log_m.exp() * torch.log(e_s + _TINY)).sum(dim=1)  # H(M(x'), E_S(x'))
        return self.alpha * conf_term - self.beta * leave_term + self.gamma * agree_term

    def generate(
        self,
        owner: nn.Module,
        owner_arch: str | None,
        surrogates: Sequence[Member],
        references: Sequence[Member],
        data_x: torch.Tensor,
        data_y: torch.Tensor,
        *,
        seed: int,
    ) -> Candidates:
        """Pick ``n * candidates`` correctly classified seeds and optimise them all."""
        idx = pick_seeds(owner, data_x, data_y, self.n * self.candidates, seed)
        return self.optimise(owner, owner_arch, surrogates, references, data_x[idx], idx,
                             seed=seed)


def parse_cae(spec: str) -> ConferrableExamples:
    """A scheme from its canonical name or ``cae[:k=v[,k=v]...]``."""
    family, _, rest = spec.strip().partition(":")
    if family != ConferrableExamples.family:
        raise InputError(f"unknown fingerprint scheme {family!r}", hint="use 'cae'")
    names = {"n": ("n", int), "eps": ("eps", float), "steps": ("steps", int), "lr": ("lr", float),
             "alpha": ("alpha", float), "beta": ("beta", float), "gamma": ("gamma", float),
             "conf": ("threshold", float), "candidates": ("candidates", int),
             "ref-weight": ("ref_weight", float), "select": ("select", str)}
    kwargs: dict[str, object] = {}
    for item in (p for p in rest.replace(",", ":").split(":") if p):
        k, eq, v = item.partition("=")
        if not eq or k not in names:
            raise InputError(f"cae: unknown parameter {item!r}",
                             hint=f"parameters: {', '.join(names)}")
        attr, typ = names[k]
        try:
            kwargs[attr] = typ(v)
        except ValueError:
            raise InputError(f"cae: parameter {k}={v!r} is not a valid {typ.__name__}") from None
    return ConferrableExamples(**kwargs)  # type: ignore[arg-type]
