"""Ownership statistics: exact tails, anytime-valid e-processes, and valid combination.

H0 for one test is "the suspect is independent of the owner's model"
(DESIGN.md, "Statistics"). Each probe gives one match bit ``x_i`` (the
suspect's label equals the committed label), in the fixed order of the query
plan.

**Fixed-n tails.** For key-random labels (watermarks, guard marks) the match
bits are i.i.d. Bernoulli(``p0 = 1/C``) under H0 over the key's randomness,
whatever the suspect does with the inputs, because the labels are drawn
independently of the inputs; the p-value is the exact binomial tail
``P(Binomial(n, p0) >= k)``. For fingerprints the null is calibrated on held-out
reference models: an independent model's match rate is ``p ~ Beta(a, b)``, so
``k`` is beta-binomial and the p-value is its tail, never below the floor
``p_floor`` the calibration supports (:class:`core.probeset.BetaBinomial`).
These are valid only when ``n`` was fixed before looking (``--fixed``).

**E-processes.** The verifier may stop as soon as the evidence suffices, so
its decision uses a likelihood-ratio test martingale. With a uniform
``Beta(1, 1)`` mixture over the alternative match rate ``q``,

    E_n = [B(1 + k, 1 + n - k) / B(1, 1)] / P0(x_1..x_n)

where ``P0`` is the null probability of the observed sequence:
``p0^k (1 - p0)^(n - k)`` for the binomial null, ``B(a + k, b + n - k) / B(a, b)``
(the Bayesian predictive of the calibrated null) for the beta-binomial one. A
ratio of a mixture of sequential likelihoods to the null likelihood is a
nonnegative martingale with ``E_0 = 1`` under that null (Wald 1947; Robbins
1970 for mixtures; Shafer & Vovk 2019, *Game-Theoretic Foundations for
Probability and Finance*; Ramdas, Grünwald, Vovk & Shafer 2023, "Game-theoretic
statistics and safe anytime-valid inference", Statistical Science 38(4)).
Ville's inequality (Ville 1939) gives ``P0(sup_n E_n >= 1/alpha) <= alpha``, so
``p = min(1, 1 / max_{t<=n} E_t)`` is an anytime-valid p-value: the verifier may
look after every answer and stop whenever it likes. For a calibrated null the
process is capped at ``1 / p_floor`` (the minimum of a supermartingale and a
constant is a supermartingale), so no claim exceeds what the references support.

**Combination.** The tests of one model (watermark, fingerprint, ...) share
the plan's filtration; their e-processes are averaged, and an average of
e-processes is an e-process whatever their dependence (Vovk & Wang 2021,
"E-values: calibration, combination and applications", Annals of Statistics
49(3), section 4). Across several ``--model`` s the per-model p-values are
adjusted with Holm's step-down procedure (Holm 1979), valid under arbitrary
dependence; its smallest adjusted p-value is Bonferroni's ``M * min p``, which
is also the early-stopping rule (stop when some ``E_m >= M / alpha``). With
``--fixed`` the tests of one model are combined by Bonferroni. Fisher's method
is never used: it needs independence the tests do not have.

**Verdicts.** ``owned`` when the combined p-value reaches ``alpha``;
``inconclusive`` when even a perfect match on every answered probe could not
have reached ``alpha`` (the suspect answered too few probes to decide);
``not_owned`` otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from scipy import special

from core.errors import InputError
from core.probeset import BetaBinomial, Binomial, Null, null_from_dict

__all__ = [
    "ALT_PRIOR",
    "Mode",
    "ModelResult",
    "Statistics",
    "TestInput",
    "TestResult",
    "Verdict",
    "bonferroni",
    "compute_statistics",
    "fixed_p_value",
    "holm",
    "log_e_trajectory",
    "log_e_value",
    "probes_to_reach",
]

Verdict = Literal["owned", "not_owned", "inconclusive"]
Mode = Literal["sequential", "fixed"]
ALT_PRIOR = (1.0, 1.0)  # Beta(1, 1) mixture over the alternative match rate
_LN10 = math.log(10.0)


def _log_alt(k: int, n: int) -> float:
    a1, b1 = ALT_PRIOR
    return float(special.betaln(a1 + k, b1 + n - k) - special.betaln(a1, b1))


def _log_null(null: Null, k: int, n: int) -> float:
    if isinstance(null, Binomial):
        return k * math.log(null.p0) + (n - k) * math.log1p(-null.p0)
    return float(special.betaln(null.a + k, null.b + n - k) - special.betaln(null.a, null.b))


def _log_cap(null: Null) -> float:
    return -math.log(null.p_floor) if isinstance(null, BetaBinomial) else math.inf


def log_e_value(null: Null, matches: int, n: int) -> float:
    """Natural log of the e-process after ``n`` probes with ``matches`` matches.

    The mixture likelihood ratio depends on the sequence only through its
    counts; for a calibrated null it is capped at ``1 / p_floor``.
    """
    if not 0 <= matches <= n:
        raise InputError(f"matches must lie in [0, {n}], got {matches}")
    return min(_log_alt(matches, n) - _log_null(null, matches, n), _log_cap(null))


def log_e_trajectory(null: Null, bits: Sequence[bool]) -> list[float]:
    """``log E_t`` after each of the match bits, in order (``t = 1..n``); same as :func:`log_e_value`."""
    if not bits:
        return []
    k = np.cumsum(np.asarray(bits, dtype=np.int64))
    t = np.arange(1, len(k) + 1)
    a1, b1 = ALT_PRIOR
    log_alt = special.betaln(a1 + k, b1 + t - k) - special.betaln(a1, b1)
    if isinstance(null, Binomial):
        log_null = k * math.log(null.p0) + (t - k) * math.log1p(-null.p0)
    else:
        log_null = special.betaln(null.a + k, null.b + t - k) - special.betaln(null.a, null.b)
    out: list[float] = np.minimum(log_alt - log_null, _log_cap(null)).tolist()
    return out


def fixed_p_value(null: Null, matches: int, n: int) -> float:
    """The fixed-n tail ``P(X >= matches)``; valid only when ``n`` was fixed in advance."""
    return 1.0 if n == 0 else null.tail(matches, n)


def probes_to_reach(null: Null, target_log_e: float, limit: int = 100_000) -> int | None:
    """Fewest probes after which a perfect match reaches ``log E >= target``; None if never."""
    for n in range(1, limit + 1):
        if log_e_value(null, n, n) >= target_log_e:
            return n
        if isinstance(null, BetaBinomial) and log_e_value(null, n, n) >= _log_cap(null):
            return None
    return None


def bonferroni(p_values: Sequence[float]) -> list[float]:
    """Bonferroni-adjusted p-values ``min(1, m * p)``."""
    m = len(p_values)
    return [min(1.0, m * p) for p in p_values]


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (valid under any dependence), in input order."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [1.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


@dataclass(frozen=True)
class TestInput:
    """One test's data: its model, kind, null, and match bits in plan order.

    ``positions[i]`` is the 1-based index, among all answered probes of the
    run, at which bit ``i`` arrived (this aligns the tests of a model in time).
    """

    __test__ = False  # not a pytest class, despite its name

    model: str
    kind: str
    null: Null
    bits: tuple[bool, ...]
    positions: tuple[int, ...]


@dataclass(frozen=True)
class TestResult:
    """The statistics of one test."""

    __test__ = False  # not a pytest class, despite its name
    model: str
    kind: str
    null: Null
    n: int
    matches: int
    log_e: float
    log_e_max: float
    p_anytime: float
    p_fixed: float | None

    def to_dict(self) -> dict[str, Any]:
        """JSON form (also what ``wm verify --json`` lists under ``tests``)."""
        return {
            "model": self.model,
            "kind": self.kind,
            "null": self.null.to_dict(),
            "n": self.n,
            "matches": self.matches,
            "log10_e": self.log_e / _LN10,
            "log10_e_max": self.log_e_max / _LN10,
            "p_anytime": self.p_anytime,
            "p_fixed": self.p_fixed,
            "p_value": self.p_fixed if self.p_fixed is not None else self.p_anytime,
        }


@dataclass(frozen=True)
class ModelResult:
    """The combined statistics of one registered model's tests."""

    model: str
    p_value: float
    p_adjusted: float
    log_e_max: float
    trajectory: tuple[tuple[int, float], ...]  # (answered probes, log E) after each probe
    best_possible_log_e: float
    reached_at: int | None = None  # answered probes when log E first reached log(M / alpha)

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "model": self.model,
            "p_value": self.p_value,
            "p_adjusted": self.p_adjusted,
            "log10_e_max": self.log_e_max / _LN10,
            "reached_at": self.reached_at,
            "trajectory": [[t, e / _LN10] for t, e in self.trajectory],
        }


@dataclass(frozen=True)
class Statistics:
    """Everything the verdict rests on, recomputable from the transcript."""

    mode: Mode
    alpha: float
    verdict: Verdict
    model: str | None
    p_value: float
    probes: int
    tests: tuple[TestResult, ...]
    models: tuple[ModelResult, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        """JSON form, as signed in the evidence bundle."""
        return {
            "mode": self.mode,
            "alpha": self.alpha,
            "verdict": self.verdict,
            "model": self.model,
            "p_value": self.p_value,
            "probes": self.probes,
            "alt_prior": list(ALT_PRIOR),
            "combination": "e-value mean within a model, Holm across models"
            if self.mode == "sequential"
            else "Bonferroni within a model, Holm across models",
            "tests": [t.to_dict() for t in self.tests],
            "models": [m.to_dict() for m in self.models],
        }


def _logmeanexp(values: Sequence[float]) -> float:
    top = max(values)
    if top == -math.inf:
        return top
    return top + math.log(sum(math.exp(v - top) for v in values) / len(values))


def compute_statistics(
    tests: Sequence[TestInput], *, alpha: float, mode: Mode, models: Sequence[str] | None = None
) -> Statistics:
    """Turn match bits into per-test, per-model and overall evidence and a verdict.

    Args:
        tests: one entry per (model, probe set), bits in plan order.
        alpha: the decision level.
        mode: ``"sequential"`` (anytime-valid; may have stopped early) or
            ``"fixed"`` (n fixed in advance; the exact tails decide).
        models: every model named by the user (the Holm correction counts
            them all, even one without answered probes); default: those in ``tests``.

    Raises:
        InputError: no tests, or ``alpha`` outside (0, 1).
    """
    if not 0.0 < alpha < 1.0:
        raise InputError(f"alpha must lie in (0, 1), got {alpha}")
    if not tests:
        raise InputError("no tests to compute statistics for")
    names = list(dict.fromkeys(models if models is not None else [t.model for t in tests]))
    results: list[TestResult] = []
    trajectories: list[list[float]] = []
    for t in tests:
        if len(t.bits) != len(t.positions):
            raise InputError("each match bit needs its position")
        traj = log_e_trajectory(t.null, t.bits)
        trajectories.append(traj)
        n, k = len(t.bits), sum(t.bits)
        log_e = traj[-1] if traj else 0.0
        log_e_max = max([0.0, *traj])
        p_any = min(1.0, math.exp(-log_e_max))
        if isinstance(t.null, BetaBinomial):
            p_any = max(p_any, t.null.p_floor)
        results.append(
            TestResult(
                model=t.model,
                kind=t.kind,
                null=t.null,
                n=n,
                matches=k,
                log_e=log_e,
                log_e_max=log_e_max,
                p_anytime=p_any,
                p_fixed=fixed_p_value(t.null, k, n) if mode == "fixed" else None,
            )
        )
    total = max((p for t in tests for p in t.positions), default=0)
    per_model: list[tuple[str, float, float, list[tuple[int, float]], float]] = []
    for name in names:
        idx = [i for i, t in enumerate(tests) if t.model == name]
        best_possible = _logmeanexp(
            [log_e_value(tests[i].null, len(tests[i].bits), len(tests[i].bits)) for i in idx]
        ) if idx else 0.0
        if not idx:
            per_model.append((name, 1.0, 0.0, [], 0.0))
            continue
        # Combined e-process over time: each test's E holds between its own probes.
        events = sorted(
            (pos, i, j) for i in idx for j, pos in enumerate(tests[i].positions)
        )
        current = {i: 0.0 for i in idx}
        combined: list[tuple[int, float]] = []
        if len(idx) == 1:  # one test: its own e-process
            events = []
            combined = list(zip(tests[idx[0]].positions, trajectories[idx[0]], strict=True))
        for pos, i, j in events:
            current[i] = trajectories[i][j]
            value = _logmeanexp(list(current.values()))
            if combined and combined[-1][0] == pos:
                combined[-1] = (pos, value)
            else:
                combined.append((pos, value))
        log_e_max = max([0.0, *(v for _, v in combined)])
        if mode == "sequential":
            p_model = min(1.0, math.exp(-log_e_max))
            floors = [nl.p_floor for i in idx if isinstance(nl := tests[i].null, BetaBinomial)]
            if floors and len(floors) == len(idx):
                p_model = max(p_model, min(floors))
        else:
            p_model = min(1.0, len(idx) * min(results[i].p_fixed or 1.0 for i in idx))
        per_model.append((name, p_model, log_e_max, combined, best_possible))
    adjusted = holm([m[1] for m in per_model])
    threshold = math.log(len(per_model) / alpha)
    model_results = tuple(
        ModelResult(
            model=name, p_value=p, p_adjusted=adj, log_e_max=emax,
            trajectory=tuple(traj), best_possible_log_e=best,
            reached_at=next((pos for pos, v in traj if v >= threshold), None),
        )
        for (name, p, emax, traj, best), adj in zip(per_model, adjusted, strict=True)
    )
    best_i = min(range(len(model_results)), key=lambda i: model_results[i].p_adjusted)
    p_value = model_results[best_i].p_adjusted
    verdict: Verdict
    if p_value <= alpha:
        verdict = "owned"
    else:
        m = len(model_results)
        reachable = False
        for mr in model_results:
            if mode == "sequential":
                reachable |= mr.best_possible_log_e >= math.log(m / alpha)
            else:
                idx = [i for i, t in enumerate(tests) if t.model == mr.model]
                best_p = min(
                    (fixed_p_value(tests[i].null, len(tests[i].bits), len(tests[i].bits))
                     for i in idx),
                    default=1.0,
                )
                reachable |= m * len(idx) * best_p <= alpha
        verdict = "not_owned" if reachable else "inconclusive"
    return Statistics(
        mode=mode,
        alpha=alpha,
        verdict=verdict,
        model=model_results[best_i].model,
        p_value=p_value,
        probes=total,
        tests=tuple(results),
        models=model_results,
    )


def null_of(d: dict[str, Any]) -> Null:
    """Parse a null model's JSON form (re-exported for the evidence check)."""
    return null_from_dict(d)
