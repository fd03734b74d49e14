"""Null models of a probe set: how often an independent model matches by chance.

DESIGN.md, "The shared concept: ProbeSet" and "Statistics": key-random labels
(watermarks, guard marks) have the exact ``Binomial(p0 = 1/C)`` null; probes
labelled by the owner's own model (fingerprints) carry a null calibrated on
held-out reference models. Torch-free, so the offline evidence checker uses
it without loading an ML stack.

Nobody chooses the null of a key-random kind: :func:`require_exact_null`
refuses anything but ``Binomial(1/C)``, and both the registry (on commit) and
the evidence checker (on check) call it. An owner who could set ``p0`` could
make chance agreement look like theft (Liu et al., "False Claims against
Model Ownership Resolution", USENIX Security 2024).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Union

from scipy import stats

from core.errors import InputError

__all__ = [
    "KEY_RANDOM_KINDS",
    "BetaBinomial",
    "Binomial",
    "Null",
    "null_from_dict",
    "require_exact_null",
]

KEY_RANDOM_KINDS = frozenset({"watermark", "guard"})


@dataclass(frozen=True)
class Binomial:
    """Exact null: each probe matches with probability ``p0`` independently.

    Holds for key-random labels (watermarks, guard marks): over the key's
    randomness an independent model matches each probe with probability
    exactly ``1/C``, whatever it predicts.
    """

    p0: float
    family: ClassVar[str] = "binomial"

    def __post_init__(self) -> None:
        if not 0.0 < self.p0 < 1.0:
            raise InputError(f"binomial null needs 0 < p0 < 1, got {self.p0}")

    def tail(self, matches: int, n: int) -> float:
        """``P(X >= matches)`` for ``X ~ Binomial(n, p0)``."""
        if matches <= 0:
            return 1.0
        return float(stats.binom.sf(matches - 1, n, self.p0))

    @property
    def mean(self) -> float:
        """Expected match rate of an independent model."""
        return self.p0

    def to_dict(self) -> dict[str, Any]:
        """JSON form, as stored and signed."""
        return {"family": self.family, "p0": self.p0}


@dataclass(frozen=True)
class BetaBinomial:
    """Calibrated null: an independent model's match rate ``p ~ Beta(a, b)``.

    Fitted on ``references`` held-out independent models. ``p_floor`` is the
    smallest p-value that calibration honestly supports (with N references no
    tail beyond what N models can vouch for); :meth:`tail` never reports less.
    """

    a: float
    b: float
    references: int
    p_floor: float
    family: ClassVar[str] = "beta-binomial"

    def __post_init__(self) -> None:
        if not (self.a > 0 and self.b > 0 and math.isfinite(self.a) and math.isfinite(self.b)):
            raise InputError(f"beta-binomial null needs a, b > 0, got a={self.a}, b={self.b}")
        if self.references < 1:
            raise InputError("beta-binomial null needs at least one reference model")
        if not 0.0 < self.p_floor <= 1.0:
            raise InputError(f"beta-binomial p_floor must be in (0, 1], got {self.p_floor}")

    def tail(self, matches: int, n: int) -> float:
        """``max(P(X >= matches), p_floor)`` for ``X ~ BetaBinomial(n, a, b)``."""
        if matches <= 0:
            return 1.0
        p = float(stats.betabinom.sf(matches - 1, n, self.a, self.b))
        return max(p, self.p_floor)

    @property
    def mean(self) -> float:
        """Expected match rate of an independent model."""
        return self.a / (self.a + self.b)

    def to_dict(self) -> dict[str, Any]:
        """JSON form, as stored and signed."""
        return {
            "family": self.family,
            "a": self.a,
            "b": self.b,
            "references": self.references,
            "p_floor": self.p_floor,
        }


Null = Union[Binomial, BetaBinomial]


def null_from_dict(d: Any) -> Null:
    """Inverse of ``to_dict`` for either null family; :class:`InputError` if malformed."""
    if not isinstance(d, dict):
        raise InputError(f"a null model is a JSON object, not {type(d).__name__}")
    try:
        match d.get("family"):
            case "binomial":
                return Binomial(p0=float(d["p0"]))
            case "beta-binomial":
                return BetaBinomial(
                    a=float(d["a"]),
                    b=float(d["b"]),
                    references=int(d["references"]),
                    p_floor=float(d["p_floor"]),
                )
            case other:
                raise InputError(f"unknown null model family {other!r}")
    except (KeyError, TypeError, ValueError, OverflowError) as exc:
        raise InputError(f"malformed null model: {exc}") from exc


def require_exact_null(kind: str, null: Null, num_classes: int) -> None:
    """Refuse a key-random kind whose null is not exactly ``Binomial(1/C)``.

    Args:
        kind: the probe set's kind; only ``watermark`` and ``guard`` are constrained.
        null: its declared null model.
        num_classes: ``C``, the task's number of classes.

    Raises:
        InputError: a watermark or guard set with another null, naming the one required.
    """
    if kind not in KEY_RANDOM_KINDS:
        return
    if not isinstance(null, Binomial) or null.p0 != 1.0 / num_classes:
        raise InputError(
            f"a {kind} probe set must carry the exact null Binomial(1/{num_classes}), "
            f"not {null.to_dict()}",
            hint="key-random labels match an independent model with probability exactly 1/C",
        )
