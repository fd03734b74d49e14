"""The fingerprint null: a beta-binomial fitted on held-out references, made conservative.

A fingerprint's labels are the owner model's own predictions, so an
independent model does not match them at chance level: independently trained
models of one task agree far more than chance, most of all those of the
owner's own architecture trained on the same data (DESIGN.md, "Statistics";
Lukas et al., ICLR 2021, Section 5 calibrate the same way). The null is
therefore measured on reference models that took no part in generating the
fingerprint, and the measurement's own uncertainty goes into it:

1. Group the held-out references by architecture. For each group fit
   ``BetaBinomial(n, mu, rho)`` to the match counts by the method of moments
   (mean ``mu``, intra-model correlation ``rho``).
2. Parametric bootstrap (``bootstrap`` replicates from the fitted model, the
   same number of references) gives the sampling distribution of ``mu`` and
   ``rho`` with that few references. Take the one-sided upper quantile of each,
   at level ``1 - (1 - confidence) / (2 G)`` (Bonferroni over two parameters
   and ``G`` groups).
3. The stored null is the *envelope*: mean ``max_g mu_upper``, dispersion
   ``max_g rho_upper``. A beta-binomial's upper tail grows with its mean and,
   above the mean, with its dispersion, so the envelope's tail dominates every
   group's plausible tail wherever a verdict could be reached: whatever kind of
   independent model the suspect is (owner's architecture or another), the
   p-value is valid for it with the stated confidence in the fit.

**The floor** (``p_floor``). With ``N`` exchangeable reference models, the
probability that one more independent model lands beyond all of them is
``1/(N + 1)`` (its rank among ``N + 1`` exchangeable models is uniform);
this is the smallest tail that the references themselves vouch for, without
trusting the beta family's shape far beyond the data. Anything smaller would
be bought by the parametric extrapolation alone, which ``N`` models cannot
check. Because the null must hold for every group (the suspect may be
independent *and* of the owner's architecture), the floor is set by the
smallest group: ``p_floor = 1 / (min_g N_g + 1)``. A fingerprint therefore
reaches ``alpha = 1e-6`` only with a million references per architecture; it
is reported as supporting evidence beside the watermark, and ``wm verify``
prints its floor.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from core.errors import InputError
from core.probeset import BetaBinomial

__all__ = [
    "Calibration",
    "GroupFit",
    "calibrate_null",
    "fit_moments",
    "match_counts",
    "p_floor_for",
]

RHO_MIN = 1e-3
RHO_MAX = 0.99
Model = Callable[[torch.Tensor], torch.Tensor]


@torch.no_grad()
def match_counts(models: Sequence[Model], inputs: torch.Tensor, expected: torch.Tensor) -> list[int]:
    """How many of ``expected`` each model reproduces on ``inputs`` (eval-mode models)."""
    out = []
    for m in models:
        pred = torch.cat([m(inputs[i : i + 2048]).argmax(dim=1)
                          for i in range(0, inputs.shape[0], 2048)])
        out.append(int((pred == expected).sum()))
    return out


def fit_moments(counts: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Method-of-moments beta-binomial fit along the last axis: ``(mu, rho)``.

    ``counts`` has shape ``[..., N]`` (N models, ``n`` probes each). ``mu`` is
    clipped away from 0 and 1 by half a match, ``rho`` into
    ``[RHO_MIN, RHO_MAX]``.
    """
    k = np.asarray(counts, dtype=np.float64)
    models = k.shape[-1]
    mu = k.mean(axis=-1) / n
    lo = 0.5 / (models * n)
    mu = np.clip(mu, lo, 1.0 - lo)
    s2 = k.var(axis=-1, ddof=1)
    rho = (s2 / (n * mu * (1.0 - mu)) - 1.0) / (n - 1) if n > 1 else np.full_like(mu, RHO_MIN)
    return mu, np.clip(rho, RHO_MIN, RHO_MAX)


def p_floor_for(group_sizes: Sequence[int]) -> float:
    """``1 / (min_g N_g + 1)``: the smallest p-value the references vouch for (module docstring)."""
    if not group_sizes or min(group_sizes) < 1:
        raise InputError("the floor needs at least one reference in every group")
    return 1.0 / (min(group_sizes) + 1)


@dataclass(frozen=True)
class GroupFit:
    """The fit on one architecture group of held-out references.

    Attributes:
        group: architecture name.
        matches: each reference's match count.
        n: probes per reference.
        mean: fitted mean match rate ``mu``.
        dispersion: fitted intra-model correlation ``rho``.
        mean_upper: bootstrap upper confidence bound of ``mu``.
        dispersion_upper: bootstrap upper confidence bound of ``rho``.
    """

    group: str
    matches: tuple[int, ...]
    n: int
    mean: float
    dispersion: float
    mean_upper: float
    dispersion_upper: float

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "group": self.group, "matches": list(self.matches), "n": self.n,
            "mean": self.mean, "dispersion": self.dispersion,
            "mean_upper": self.mean_upper, "dispersion_upper": self.dispersion_upper,
        }


@dataclass(frozen=True)
class Calibration:
    """A calibrated fingerprint null and how it was obtained.

    Attributes:
        null: the conservative envelope :class:`BetaBinomial` (stored with the
            fingerprint; its ``references`` is the total number of held-out
            references and ``p_floor`` the floor of the module docstring).
        n: probes per model in the calibration.
        groups: per-architecture fits.
        confidence: joint confidence of the upper bounds.
        bootstrap: bootstrap replicates per group.
    """

    null: BetaBinomial
    n: int
    groups: tuple[GroupFit, ...]
    confidence: float
    bootstrap: int

    def p_value(self, matches: int, n: int | None = None) -> float:
        """The calibrated p-value of a model matching ``matches`` of ``n`` probes."""
        return self.null.tail(matches, self.n if n is None else n)

    def to_dict(self) -> dict[str, Any]:
        """JSON form (public: match counts only, no probes)."""
        return {
            "null": self.null.to_dict(), "n": self.n, "confidence": self.confidence,
            "bootstrap": self.bootstrap, "groups": [g.to_dict() for g in self.groups],
        }


def calibrate_null(
    groups: Mapping[str, Sequence[int] | np.ndarray],
    n: int,
    *,
    confidence: float = 0.95,
    bootstrap: int = 2000,
    seed: int = 0,
) -> Calibration:
    """Fit the conservative beta-binomial null on held-out references' match counts.

    Args:
        groups: architecture name -> match counts of that group's references
            (which must include the owner's own architecture; the caller
            decides, this function only needs every group to have 2 or more).
        n: probes each reference was tested on.
        confidence: joint confidence of the upper bounds on mean and dispersion.
        bootstrap: parametric bootstrap replicates per group.
        seed: seeds the bootstrap (the same counts and seed give the same null).

    Raises:
        InputError: no groups, a group with fewer than two references, counts
            outside ``[0, n]``, or parameters out of range.
    """
    if n < 1:
        raise InputError(f"calibration needs at least one probe, got n={n}")
    if not groups:
        raise InputError("calibration needs held-out reference models")
    if not 0.0 < confidence < 1.0:
        raise InputError(f"confidence must be in (0, 1), got {confidence}")
    if bootstrap < 100:
        raise InputError(f"use at least 100 bootstrap replicates, got {bootstrap}")
    q = 1.0 - (1.0 - confidence) / (2 * len(groups))
    rng = np.random.default_rng(seed)
    fits = []
    for name in sorted(groups):
        k = np.asarray(groups[name], dtype=np.int64)
        if k.size < 2:
            raise InputError(
                f"calibration needs at least 2 held-out references of {name}, got {k.size}",
                hint="train more references",
            )
        if k.min() < 0 or k.max() > n:
            raise InputError(f"match counts of {name} must lie in [0, {n}]")
        mu, rho = (float(v) for v in fit_moments(k, n))
        a, b = mu * (1 - rho) / rho, (1 - mu) * (1 - rho) / rho
        p = rng.beta(a, b, size=(bootstrap, k.size))
        sim = rng.binomial(n, p)
        mus, rhos = fit_moments(sim, n)
        fits.append(GroupFit(
            group=name, matches=tuple(int(v) for v in k), n=n, mean=mu, dispersion=rho,
            mean_upper=float(max(mu, np.quantile(mus, q))),
            dispersion_upper=float(max(rho, np.quantile(rhos, q))),
        ))
    mu_env = max(f.mean_upper for f in fits)
    rho_env = min(max(f.dispersion_upper for f in fits), RHO_MAX)
    null = BetaBinomial(
        a=mu_env * (1 - rho_env) / rho_env,
        b=(1 - mu_env) * (1 - rho_env) / rho_env,
        references=sum(len(f.matches) for f in fits),
        p_floor=p_floor_for([len(f.matches) for f in fits]),
    )
    return Calibration(null=null, n=n, groups=tuple(fits), confidence=confidence,
                       bootstrap=bootstrap)
