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

**The model-level conformal null** (:class:`Conformal`, DESIGN.md
"Statistics"): ``K`` reference models, trained independently on data disjoint
from the owner's and the attacker's, are scored on the fingerprint like any
suspect, and which probes each one matched is committed with the probe set
(with the references' weight digests and recipe), so that the conformal
p-value ``(1 + #references scoring >= the suspect) / (K + 1)`` can be
recomputed by anyone, on exactly the probes a suspect answered. If the
suspect is exchangeable with the references (an independent model of the
same kind), its rank among the ``K + 1`` is uniform, so this p-value is
valid with no distributional assumption; its floor ``1/(K + 1)`` is derived
from ``K`` and never stated by the owner. With references of several
architectures the p-value is the largest over the architecture groups (valid
whichever group the suspect resembles) and the floor is that of the smallest
group. A beta-binomial fitted on the same scores stands beside it as a
secondary, parametric figure (and drives the verifier's e-process).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Union

import numpy as np
from scipy import stats

from core.errors import InputError

__all__ = [
    "KEY_RANDOM_KINDS",
    "SECOND_CHOICE_FAMILIES",
    "BetaBinomial",
    "Binomial",
    "Conformal",
    "Null",
    "answer_rank",
    "conformal_p_value",
    "null_from_dict",
    "ranked",
    "require_exact_null",
]

KEY_RANDOM_KINDS = frozenset({"watermark", "guard"})

SECOND_CHOICE_FAMILIES = frozenset({"dark"})
"""Scheme families whose probes are answered by a suspect's second choice (:func:`answer_rank`)."""


def answer_rank(scheme: str) -> int:
    """Which of a suspect's choices answers a probe of ``scheme``: 1, its label; 2, its runner-up.

    Dark-knowledge marks (``watermark.schemes.dark``) are read from the
    class a suspect scores second. The rank follows from the scheme's family
    alone, which is signed with the set at registration, so neither a
    transcript nor a bundle can say otherwise.
    """
    return 2 if scheme.partition(":")[0] in SECOND_CHOICE_FAMILIES else 1


def ranked(scores: Any, rank: int) -> np.ndarray:
    """The class of each row's ``rank``-th highest score (1: the argmax), ties to the lower class."""
    arr = np.asarray(scores)
    if arr.ndim != 2 or not 1 <= rank <= arr.shape[1]:
        raise InputError(f"cannot take choice {rank} of scores shaped {list(arr.shape)}")
    if rank == 1:
        return arr.argmax(axis=1).astype(np.int64)
    return np.argsort(-arr, axis=1, kind="stable")[:, rank - 1].astype(np.int64)


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


def conformal_p_value(score: float, reference_scores: Sequence[float]) -> float:
    """``(1 + #{references scoring >= score}) / (K + 1)``: never below ``1/(K + 1)``."""
    if not reference_scores:
        raise InputError("a conformal p-value needs at least one reference score")
    return (1 + sum(1 for r in reference_scores if r >= score)) / (len(reference_scores) + 1)


@dataclass(frozen=True)
class Conformal(BetaBinomial):
    """The model-level null: ``K`` committed reference models' per-probe matches.

    A :class:`BetaBinomial` (``a``, ``b``: the parametric fit on the
    references' match counts, the secondary figure and the e-process's null;
    ``references`` = ``K``; ``p_floor`` = ``1/(min group size + 1)``, checked)
    that also carries, per reference, which of the ``size`` probes it matched
    (``matches``: hex of the bits packed little-endian, probe ``i`` in bit
    ``i % 8`` of byte ``i // 8``), its architecture, seed and weight digest
    (``models``) and how the references were made (``recipe``). The
    conformal p-value on any subset of probes is :meth:`p_value`.
    """

    size: int = 0
    matches: tuple[str, ...] = ()
    models: tuple[tuple[str, int, str], ...] = ()  # (arch, seed, weights digest)
    recipe: str = ""
    family: ClassVar[str] = "conformal"

    def __post_init__(self) -> None:
        super().__post_init__()
        k = len(self.matches)
        if self.size < 1:
            raise InputError("a conformal null needs the probe set's size")
        if k < 1 or self.references != k or len(self.models) != k:
            raise InputError("a conformal null needs one match string and one model per reference "
                             f"(references={self.references}, matches={k}, models={len(self.models)})")
        nbytes = (self.size + 7) // 8
        for m in self.matches:
            if len(m) != 2 * nbytes or any(c not in "0123456789abcdef" for c in m):
                raise InputError(f"a reference's matches must be {2 * nbytes} lowercase hex digits")
        floor = 1.0 / (min(self.group_sizes.values()) + 1)
        if not math.isclose(self.p_floor, floor, rel_tol=1e-12):
            raise InputError(f"a conformal null of groups {dict(self.group_sizes)} has the floor "
                             f"{floor:.6g}, not {self.p_floor:.6g}",
                             hint="the floor is 1/(K+1) of the smallest architecture group")

    @property
    def group_sizes(self) -> dict[str, int]:
        """References per architecture."""
        out: dict[str, int] = {}
        for arch, _seed, _digest in self.models:
            out[arch] = out.get(arch, 0) + 1
        return out

    def reference_bits(self, indices: Sequence[int]) -> list[list[bool]]:
        """Each reference's match bit on each of ``indices`` (probe indices)."""
        for i in indices:
            if not 0 <= i < self.size:
                raise InputError(f"probe index {i} outside a set of {self.size}")
        out = []
        for m in self.matches:
            raw = bytes.fromhex(m)
            out.append([bool(raw[i // 8] >> (i % 8) & 1) for i in indices])
        return out

    def reference_scores(self, indices: Sequence[int]) -> list[int]:
        """Each reference's match count on the probes ``indices``."""
        return [sum(b) for b in self.reference_bits(indices)]

    def p_value(self, indices: Sequence[int], bits: Sequence[bool]) -> float:
        """The conformal p-value of a suspect matching ``bits`` on probes ``indices``.

        The largest over architecture groups of ``(1 + #{group references
        matching at least as many of these probes}) / (group size + 1)``;
        never below :attr:`p_floor`. Duplicate indices count once each time,
        for the suspect and the references alike.
        """
        if len(indices) != len(bits):
            raise InputError("one match bit per probe index")
        score = sum(bool(b) for b in bits)
        scores = self.reference_scores(indices)
        groups: dict[str, list[int]] = {}
        for (arch, _s, _d), r in zip(self.models, scores, strict=True):
            groups.setdefault(arch, []).append(r)
        return max(conformal_p_value(score, g) for g in groups.values())

    def to_dict(self) -> dict[str, Any]:
        """JSON form, as committed: the parametric fit, the floor, and every reference's matches."""
        return {
            **super().to_dict(),
            "family": self.family,
            "size": self.size,
            "matches": list(self.matches),
            "models": [{"arch": a, "seed": s, "digest": d} for a, s, d in self.models],
            "recipe": self.recipe,
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
            case "conformal":
                return Conformal(
                    a=float(d["a"]),
                    b=float(d["b"]),
                    references=int(d["references"]),
                    p_floor=float(d["p_floor"]),
                    size=int(d["size"]),
                    matches=tuple(str(m) for m in d["matches"]),
                    models=tuple((str(m["arch"]), int(m["seed"]), str(m["digest"]))
                                 for m in d["models"]),
                    recipe=str(d["recipe"]),
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
