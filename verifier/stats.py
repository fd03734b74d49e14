"""Ownership statistics: exact tails, anytime-valid e-processes, early "not owned", combination.

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

**The conformal p-value.** A fingerprint committed with a model-level null
(:class:`core.nulls.Conformal`) also gets ``p_conformal``: the rank of the
suspect's match count among the ``K`` committed references' counts *on the
same probes* (``(1 + #references >= suspect) / (K + 1)``, floor ``1/(K + 1)``).
It is the primary figure of such a test: with ``--fixed`` it is the test's
p-value, and in a sequential run the test's and its model's p-values are
never below it (a maximum of p-values, one of them valid, is valid). The
beta-binomial tail beside it (``p_parametric``) is secondary.

**E-processes ("owned")**: the verifier may stop as soon as the evidence
suffices, so its decision uses the anytime-valid likelihood-ratio e-processes of
:mod:`verifier.eprocess` (re-exported here); ``p = min(1, 1 / max_t E_t)``.

**Early "not owned" (futility)** is a second anytime test, against "the suspect
is derived", in :mod:`verifier.futility` (:class:`Futility`, re-exported here);
a model is ruled out when every one of its tests is.

**Combination.** The tests of one model (watermark, fingerprint, ...) share
the plan's filtration; their e-processes are averaged, and an average of
e-processes is an e-process whatever their dependence (Vovk & Wang 2021,
"E-values: calibration, combination and applications", Annals of Statistics
49(3), section 4). Across several ``--model`` s the per-model p-values are
adjusted with Holm's step-down procedure (Holm 1979), valid under arbitrary
dependence; its smallest adjusted p-value is Bonferroni's ``M * min p``, which
is also the early-stopping rule (stop when some ``E_m >= M / alpha``). With
``--fixed`` the tests of one model are combined by Bonferroni and nothing is
ruled out early. Fisher's method is never used: it needs independence the
tests do not have.

**Verdicts.** ``owned`` when the combined p-value reaches ``alpha``;
``not_owned`` when every named model was ruled out (at the stated error rate),
or when a perfect match on every answered probe could have reached ``alpha``
and it did not (the budget is spent); ``inconclusive`` otherwise (the suspect
answered too few probes to decide).

Each kind of test is one small function pair (an e-process and, where the
null allows one, a futility process), so a new kind of test plugs in beside
the others.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from core.errors import InputError
from core.nulls import BetaBinomial, Conformal, Null
from verifier.eprocess import ALT_MIXTURE, log_e_trajectory, log_e_value, probes_to_reach
from verifier.futility import Futility, log_futility_trajectory

__all__ = [
    "ALT_MIXTURE",
    "Futility",
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
    "log_futility_trajectory",
    "probes_to_reach",
]

Verdict = Literal["owned", "not_owned", "inconclusive"]
Mode = Literal["sequential", "fixed"]
_LN10 = math.log(10.0)


def fixed_p_value(null: Null, matches: int, n: int) -> float:
    """The fixed-n tail ``P(X >= matches)``; valid only when ``n`` was fixed in advance."""
    return 1.0 if n == 0 else null.tail(matches, n)


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
    ``population`` is the number of the probe set's probes that were unspent
    when the plan was drawn (the futility rule needs it; ``None``: no rule).
    ``indices[i]`` is the probe index of bit ``i`` (a conformal null scores
    the references on exactly these probes; ``None``: unknown, and a
    conformal test then claims nothing, ``p_conformal = 1``).
    """

    __test__ = False  # not a pytest class, despite its name

    model: str
    kind: str
    null: Null
    bits: tuple[bool, ...]
    positions: tuple[int, ...]
    population: int | None = None
    indices: tuple[int, ...] | None = None


@dataclass(frozen=True)
class TestResult:
    """The statistics of one test.

    ``log_f_max`` is the running maximum of its futility process (``None``: no
    futility rule); ``ruled_out_at`` the answered probe (run-wide position) at
    which it first reached ``1 / error``. ``p_conformal`` is the conformal
    p-value of a test with a :class:`~core.nulls.Conformal` null (``None``
    otherwise) and ``p_parametric`` its beta-binomial tail beside it.
    """

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
    log_f_max: float | None = None
    ruled_out_at: int | None = None
    p_conformal: float | None = None
    p_parametric: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON form (also what ``wm verify --json`` lists under ``tests``)."""
        out = {
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
            "log10_f_max": None if self.log_f_max is None else self.log_f_max / _LN10,
            "ruled_out_at": self.ruled_out_at,
        }
        if self.p_conformal is not None:  # only then, so bundles of other nulls keep their form
            out["p_conformal"] = self.p_conformal
            out["p_parametric"] = self.p_parametric
        return out


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
    ruled_out_at: int | None = None  # answered probes when every test of the model was ruled out

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "model": self.model,
            "p_value": self.p_value,
            "p_adjusted": self.p_adjusted,
            "log10_e_max": self.log_e_max / _LN10,
            "reached_at": self.reached_at,
            "ruled_out_at": self.ruled_out_at,
            "trajectory": [[t, e / _LN10] for t, e in self.trajectory],
        }


@dataclass(frozen=True)
class Statistics:
    """Everything the verdict rests on, recomputable from the transcript.

    ``ruled_out_at`` is the answered probe after which every named model was
    ruled out by ``futility`` (``None``: not ruled out, or no rule).
    """

    mode: Mode
    alpha: float
    verdict: Verdict
    model: str | None
    p_value: float
    probes: int
    tests: tuple[TestResult, ...]
    models: tuple[ModelResult, ...] = field(default=())
    futility: Futility | None = None
    ruled_out_at: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON form, as signed in the evidence bundle."""
        return {
            "mode": self.mode,
            "alpha": self.alpha,
            "verdict": self.verdict,
            "model": self.model,
            "p_value": self.p_value,
            "probes": self.probes,
            "alt_mixture": [list(c) for c in ALT_MIXTURE],
            "combination": "e-value mean within a model, Holm across models"
            if self.mode == "sequential"
            else "Bonferroni within a model, Holm across models",
            "futility": None if self.futility is None else {
                **self.futility.to_dict(), "ruled_out_at": self.ruled_out_at,
            },
            "tests": [t.to_dict() for t in self.tests],
            "models": [m.to_dict() for m in self.models],
        }


def _logmeanexp(values: Sequence[float]) -> float:
    top = max(values)
    if top == -math.inf:
        return top
    return top + math.log(sum(math.exp(v - top) for v in values) / len(values))


def _test_result(
    t: TestInput, traj: list[float], mode: Mode, futility: Futility | None
) -> TestResult:
    """One test's figures: counts, e-process, p-values and its futility process."""
    n, k = len(t.bits), sum(t.bits)
    log_e_max = max([0.0, *traj])
    p_any = min(1.0, math.exp(-log_e_max))
    if isinstance(t.null, BetaBinomial):
        p_any = max(p_any, t.null.p_floor)
    p_conf = p_param = None
    p_fixed = fixed_p_value(t.null, k, n) if mode == "fixed" else None
    if isinstance(t.null, Conformal):
        # Fail closed: without the probe indices the references cannot be scored alike.
        p_conf = 1.0 if t.indices is None else t.null.p_value(t.indices, t.bits)
        p_param = fixed_p_value(t.null, k, n)
        p_any = max(p_any, p_conf)
        if p_fixed is not None:
            p_fixed = p_conf
    log_f_max = ruled_out_at = None
    if futility is not None:
        fut = log_futility_trajectory(t.null, t.bits, t.population, futility.share)
        if fut is not None:
            log_f_max = max([0.0, *fut])
            ruled_out_at = next(
                (pos for pos, v in zip(t.positions, fut, strict=True) if v >= futility.log_threshold),
                None,
            )
    return TestResult(
        model=t.model, kind=t.kind, null=t.null, n=n, matches=k,
        log_e=traj[-1] if traj else 0.0, log_e_max=log_e_max, p_anytime=p_any,
        p_fixed=p_fixed, log_f_max=log_f_max, ruled_out_at=ruled_out_at,
        p_conformal=p_conf, p_parametric=p_param,
    )


def _combined_trajectory(
    tests: Sequence[TestInput], trajectories: Sequence[list[float]], idx: Sequence[int]
) -> list[tuple[int, float]]:
    """The mean of the e-processes of tests ``idx`` after each answered probe of any of them."""
    if len(idx) == 1:  # one test: its own e-process
        return list(zip(tests[idx[0]].positions, trajectories[idx[0]], strict=True))
    # Each test's E holds between its own probes.
    events = sorted((pos, i, j) for i in idx for j, pos in enumerate(tests[i].positions))
    current = {i: 0.0 for i in idx}
    combined: list[tuple[int, float]] = []
    for pos, i, j in events:
        current[i] = trajectories[i][j]
        value = _logmeanexp(list(current.values()))
        if combined and combined[-1][0] == pos:
            combined[-1] = (pos, value)
        else:
            combined.append((pos, value))
    return combined


def _model_ruled_out_at(results: Sequence[TestResult], idx: Sequence[int]) -> int | None:
    """When every test of a model was ruled out (intersection-union); None if one never was."""
    times = [results[i].ruled_out_at for i in idx]
    if not times or any(t is None for t in times):
        return None
    return max(t for t in times if t is not None)


def compute_statistics(
    tests: Sequence[TestInput],
    *,
    alpha: float,
    mode: Mode,
    models: Sequence[str] | None = None,
    futility: Futility | None = None,
) -> Statistics:
    """Turn match bits into per-test, per-model and overall evidence and a verdict.

    Args:
        tests: one entry per (model, probe set), bits in plan order.
        alpha: the decision level.
        mode: ``"sequential"`` (anytime-valid; may have stopped early) or
            ``"fixed"`` (n fixed in advance; the exact tails decide).
        models: every model named by the user (the Holm correction counts
            them all, even one without answered probes); default: those in ``tests``.
        futility: the early "not owned" rule (sequential mode only); ``None``: none.

    Raises:
        InputError: no tests, ``alpha`` outside (0, 1), or a futility rule in fixed mode.
    """
    if not 0.0 < alpha < 1.0:
        raise InputError(f"alpha must lie in (0, 1), got {alpha}")
    if not tests:
        raise InputError("no tests to compute statistics for")
    if mode == "fixed" and futility is not None:
        raise InputError("a fixed-n run sends the whole budget: it has no futility rule")
    names = list(dict.fromkeys(models if models is not None else [t.model for t in tests]))
    trajectories: list[list[float]] = []
    results: list[TestResult] = []
    for t in tests:
        if len(t.bits) != len(t.positions):
            raise InputError("each match bit needs its position")
        trajectories.append(log_e_trajectory(t.null, t.bits))
        results.append(_test_result(t, trajectories[-1], mode, futility))
    total = max((p for t in tests for p in t.positions), default=0)
    per_model: list[tuple[str, float, float, list[tuple[int, float]], float, int | None]] = []
    for name in names:
        idx = [i for i, t in enumerate(tests) if t.model == name]
        if not idx:
            per_model.append((name, 1.0, 0.0, [], 0.0, None))
            continue
        best_possible = _logmeanexp(
            [log_e_value(tests[i].null, len(tests[i].bits), len(tests[i].bits)) for i in idx]
        )
        combined = _combined_trajectory(tests, trajectories, idx)
        log_e_max = max([0.0, *(v for _, v in combined)])
        if mode == "sequential":
            p_model = min(1.0, math.exp(-log_e_max))
            # Calibrated tests only: never below their floors, nor below a conformal p-value.
            floors = [max(nl.p_floor, results[i].p_conformal or 0.0) for i in idx
                      if isinstance(nl := tests[i].null, BetaBinomial)]
            if floors and len(floors) == len(idx):
                p_model = max(p_model, min(floors))
        else:
            p_model = min(1.0, len(idx) * min(results[i].p_fixed or 1.0 for i in idx))
        per_model.append(
            (name, p_model, log_e_max, combined, best_possible, _model_ruled_out_at(results, idx))
        )
    adjusted = holm([m[1] for m in per_model])
    threshold = math.log(len(per_model) / alpha)
    model_results = tuple(
        ModelResult(
            model=name, p_value=p, p_adjusted=adj, log_e_max=emax,
            trajectory=tuple(traj), best_possible_log_e=best,
            reached_at=next((pos for pos, v in traj if v >= threshold), None),
            ruled_out_at=ruled,
        )
        for (name, p, emax, traj, best, ruled), adj in zip(per_model, adjusted, strict=True)
    )
    best_i = min(range(len(model_results)), key=lambda i: model_results[i].p_adjusted)
    p_value = model_results[best_i].p_adjusted
    ruled = [m.ruled_out_at for m in model_results]
    ruled_out_at = (
        max(r for r in ruled if r is not None)
        if futility is not None and all(r is not None for r in ruled) else None
    )
    verdict: Verdict
    if p_value <= alpha:
        verdict = "owned"
    elif ruled_out_at is not None or _reachable(tests, model_results, alpha, mode):
        verdict = "not_owned"
    else:
        verdict = "inconclusive"
    return Statistics(
        mode=mode,
        alpha=alpha,
        verdict=verdict,
        model=model_results[best_i].model,
        p_value=p_value,
        probes=total,
        tests=tuple(results),
        models=model_results,
        futility=futility,
        ruled_out_at=ruled_out_at,
    )


def _reachable(
    tests: Sequence[TestInput], model_results: Sequence[ModelResult], alpha: float, mode: Mode
) -> bool:
    """Whether a perfect match on every answered probe could have reached ``alpha``."""
    m = len(model_results)
    for mr in model_results:
        if mode == "sequential":
            if mr.best_possible_log_e >= math.log(m / alpha):
                return True
            continue
        idx = [i for i, t in enumerate(tests) if t.model == mr.model]
        best_p = min(
            (fixed_p_value(tests[i].null, len(tests[i].bits), len(tests[i].bits)) for i in idx),
            default=1.0,
        )
        if m * len(idx) * best_p <= alpha:
            return True
    return False
