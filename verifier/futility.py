"""The early "not owned" rule: an anytime test against "the suspect is derived".

Innocent suspects are the common case, and each answered probe is spent
for good, so the verifier also tests, for every key-random test
(binomial null) with a known population, the hypothesis H_q: "the
suspect is derived: it matches at least a share ``q`` of the ``N``
probes that were unspent when the plan was drawn". The plan sends a
uniformly random ordering of a random subset of them, so under H_q with
``K >= ceil(qN)`` matches in the population the ``t``-th probe matches
with conditional probability ``(K - k_{t-1}) / (N - t + 1) >= q_t =
(ceil(qN) - k_{t-1}) / (N - t + 1)`` (sampling without replacement;
Waudby-Smith & Ramdas 2020, "Confidence sequences for sampling without
replacement", NeurIPS). Betting each probe on the innocent's exact rate
``p0`` against ``q_t``,

    F_t = prod_{i<=t} (p0 / q_i)^{x_i} ((1 - p0) / (1 - q_i))^{1 - x_i}    (no bet while q_i <= p0)

is a nonnegative supermartingale under every element of H_q, so by Ville
``P(sup_t F_t >= 1/beta) <= beta``: a derived suspect keeping a share ``>= q``
is ruled out with probability at most ``beta`` (:class:`Futility`, defaults
``q = 0.45``, ``beta = 0.01``). This holds for a suspect whose answers are a
fixed function of the input, as a served model's are; a suspect that evades on
purpose can evade the full budget too. A model is ruled out when every one of
its tests is (an intersection-union test: no multiplicity correction, no
independence needed); a test without a futility rule (a calibrated null, or an
unknown population) never rules its model out; the verdict is ``not_owned``
early when every named model is ruled out.

The trade-off, measured by simulation (``N = 300``, budget 100, alpha ``1e-6``,
first decision after 7 probes, then every 4): an innocent suspect costs 17.5
probes on average instead of the whole budget; a thief keeping 38% of the
marks is still found ``owned`` 94% of the time (97.6% without the rule), one
keeping 30% 45% of the time (49%); below about 23% the budget finds no thief
either way, and the rule now says so in ~40 probes instead of 100. A larger
``q`` or ``beta`` makes innocents cheaper and weak thieves likelier to escape
(``q = 0.5``: 13 probes, 89% at 38%).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from core.errors import InputError
from core.nulls import Binomial, Null

__all__ = ["Futility", "log_futility_trajectory"]

_Q_MAX = 1.0 - 1e-9  # a null forcing every remaining probe to match is bet against at this rate


@dataclass(frozen=True)
class Futility:
    """The early "not owned" rule: rule out "derived, matching a share >= ``share``" at error ``error``.

    Attributes:
        share: ``q``, the smallest share of the unspent probes a derived suspect
            is assumed to match.
        error: ``beta``, the most probability with which such a suspect is ruled out.
    """

    share: float = 0.45
    error: float = 0.01

    def __post_init__(self) -> None:
        if not 0.0 < self.share < 1.0:
            raise InputError(f"futility share must lie in (0, 1), got {self.share}")
        if not 0.0 < self.error < 1.0:
            raise InputError(f"futility error must lie in (0, 1), got {self.error}")

    @property
    def log_threshold(self) -> float:
        """``log(1 / error)``: a futility process at or above it rules its test out."""
        return -math.log(self.error)

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"share": self.share, "error": self.error}

    @classmethod
    def from_dict(cls, d: Any) -> Futility | None:
        """Inverse of :meth:`to_dict` (``None`` stays ``None``).

        Raises:
            InputError: not an object with numeric ``share`` and ``error`` in (0, 1).
        """
        if d is None:
            return None
        try:
            return cls(share=float(d["share"]), error=float(d["error"]))
        except (TypeError, KeyError, ValueError) as exc:
            raise InputError(f"malformed futility rule: {exc}") from exc


def log_futility_trajectory(
    null: Null, bits: Sequence[bool], population: int | None, share: float
) -> list[float] | None:
    """``log F_t`` after each match bit: the evidence against "derived, share >= ``share``".

    Sampling without replacement from ``population`` probes (see the module
    docstring); ``None`` when the test has no futility rule (a calibrated
    null, or an unknown population).

    Raises:
        InputError: more bits than the population holds.
    """
    if not isinstance(null, Binomial) or population is None:
        return None
    n = len(bits)
    if population < n:
        raise InputError(f"{n} answered probes from a population of {population}")
    if n == 0:
        return []
    x = np.asarray(bits, dtype=bool)
    before = np.concatenate([[0], np.cumsum(x)[:-1]])  # k_{t-1}
    remaining = population - np.arange(n)  # N - t + 1
    need = math.ceil(share * population - 1e-9)
    q = np.clip((need - before) / remaining, 0.0, _Q_MAX)
    p0 = null.p0
    bet = q > p0
    qb = np.where(bet, q, 0.5)  # placeholder where no bet is made (factor 1)
    step = np.where(x, math.log(p0) - np.log(qb), math.log1p(-p0) - np.log1p(-qb))
    out: list[float] = np.cumsum(np.where(bet, step, 0.0)).tolist()
    return out
