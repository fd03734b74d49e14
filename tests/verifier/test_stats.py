"""Statistics: exact tails, the e-process's martingale and Ville properties, futility, combination."""

from __future__ import annotations

import itertools
import math
from math import comb

import numpy as np
import pytest
from scipy import special, stats

from core.errors import InputError
from core.probeset import BetaBinomial, Binomial
from verifier.stats import (
    Futility,
    TestInput,
    bonferroni,
    compute_statistics,
    fixed_p_value,
    holm,
    log_e_trajectory,
    log_e_value,
    log_futility_trajectory,
    probes_to_reach,
)


@pytest.mark.parametrize(("k", "n", "p0"), [(0, 10, 0.1), (3, 10, 0.1), (10, 10, 0.1), (7, 50, 0.5)])
def test_binomial_tail_is_exact(k: int, n: int, p0: float) -> None:
    want = sum(comb(n, j) * p0**j * (1 - p0) ** (n - j) for j in range(k, n + 1))
    assert fixed_p_value(Binomial(p0), k, n) == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("n", [1, 5, 12])
@pytest.mark.parametrize("null", [Binomial(0.1), Binomial(0.5), BetaBinomial(2.0, 5.0, 10, 1e-300)])
def test_e_process_has_expectation_one_under_the_null(n: int, null: Binomial | BetaBinomial) -> None:
    # Sum over every k: P0(k matches in n) * E(k, n). A test martingale has mean exactly 1.
    total = 0.0
    for k in range(n + 1):
        if isinstance(null, Binomial):
            pk = stats.binom.pmf(k, n, null.p0)
        else:
            pk = stats.betabinom.pmf(k, n, null.a, null.b)
        total += pk * math.exp(log_e_value(null, k, n))
    assert total == pytest.approx(1.0, rel=1e-9)


@pytest.mark.parametrize("null", [Binomial(0.1), BetaBinomial(2.0, 5.0, 10, 1e-4)])
def test_trajectory_matches_the_counts_form(null: Binomial | BetaBinomial) -> None:
    bits = [bool(b) for b in np.random.default_rng(1).random(150) < 0.6]
    traj = log_e_trajectory(null, bits)
    for t in (1, 17, 150):
        assert traj[t - 1] == pytest.approx(log_e_value(null, sum(bits[:t]), t), rel=1e-12, abs=1e-12)


def test_calibrated_null_caps_the_evidence_at_its_floor() -> None:
    null = BetaBinomial(2.0, 5.0, references=8, p_floor=1e-3)
    assert log_e_value(null, 200, 200) == pytest.approx(-math.log(1e-3))
    uncapped = special.betaln(201, 1) - special.betaln(202, 5) + special.betaln(2, 5)
    assert uncapped > -math.log(1e-3)
    assert probes_to_reach(null, math.log(1e6)) is None


def test_ville_anytime_validity_and_the_naive_alternative_fails() -> None:
    """Under H0 with peeking after every probe, the e-process rejects at most alpha of the time;
    the fixed-n binomial tail used the same way does not (the test can tell them apart)."""
    rng = np.random.default_rng(7)
    null, alpha, n, runs = Binomial(0.1), 0.05, 200, 4000
    bits = rng.random((runs, n)) < 0.1
    log_e = np.array([log_e_trajectory(null, list(row)) for row in bits])
    e_reject = (log_e.max(axis=1) >= math.log(1 / alpha)).mean()
    k = bits.cumsum(axis=1)
    naive_p = stats.binom.sf(k - 1, np.arange(1, n + 1), 0.1)
    naive_reject = (naive_p.min(axis=1) <= alpha).mean()
    assert e_reject <= alpha
    assert naive_reject > 2 * alpha


def test_mixture_decides_a_perfect_copy_within_one_probe_of_the_limit() -> None:
    """With 10 classes, 1e-9 needs at least 9 perfect probes (10^9); the mixture needs 10
    (Beta(1, 1) alone needed 11) and 7 for 1e-6 (limit 6); its e-value is never below half of
    the Beta(1, 1) mixture's, so a weakly marked suspect loses at most ln 2."""
    null = Binomial(0.1)
    assert probes_to_reach(null, math.log(1e9)) == 10
    assert probes_to_reach(null, math.log(1e6)) == 7
    for k, n in [(30, 100), (5, 12), (0, 20), (100, 100)]:
        uniform = special.betaln(1 + k, 1 + n - k) - (k * math.log(0.1) + (n - k) * math.log(0.9))
        assert log_e_value(null, k, n) >= uniform - math.log(2) - 1e-12


def _futility_paths(population: int, matches: int, share: float, p0: float) -> np.ndarray:
    """log F_t over every distinct ordering of a population with ``matches`` matches."""
    rows = []
    for chosen in itertools.combinations(range(population), matches):
        bits = np.zeros(population, dtype=bool)
        bits[list(chosen)] = True
        traj = log_futility_trajectory(Binomial(p0), list(bits), population, share)
        assert traj is not None
        rows.append(traj)
    return np.array(rows)


@pytest.mark.parametrize("matches", [6, 7, 9, 12])
def test_futility_process_is_a_supermartingale_under_every_derived_population(matches: int) -> None:
    """Exactly, over every ordering (sampling without replacement is uniform over them): for each
    population with share >= q, E[F_t] <= 1 at every t, and E[F_tau] <= 1 at a stopping time."""
    population, share, p0 = 12, 0.5, 0.1
    paths = np.exp(_futility_paths(population, matches, share, p0))
    assert (paths.mean(axis=0) <= 1 + 1e-9).all()
    # optional stopping: stop the first time F >= 3, else at the end
    hit = paths >= 3
    first = np.where(hit.any(axis=1), hit.argmax(axis=1), population - 1)
    assert paths[np.arange(len(paths)), first].mean() <= 1 + 1e-9


def test_futility_process_bets_nothing_once_the_null_allows_no_match() -> None:
    # 5 of 10 needed (q = 0.5): after 5 matches the null no longer forces any, so no evidence accrues
    traj = log_futility_trajectory(Binomial(0.1), [True] * 5 + [False] * 5, 10, 0.5)
    assert traj is not None and traj[5:] == [traj[4]] * 5
    assert log_futility_trajectory(BetaBinomial(2, 5, 10, 1e-3), [False] * 5, 10, 0.5) is None
    assert log_futility_trajectory(Binomial(0.1), [False] * 5, None, 0.5) is None
    with pytest.raises(InputError, match="population"):
        log_futility_trajectory(Binomial(0.1), [False] * 5, 4, 0.5)


@pytest.mark.parametrize("share", [0.45, 0.6])
def test_futility_error_rate_over_many_orderings(share: float) -> None:
    """Ville for the futility rule: a derived suspect keeping exactly the share q of N = 300 probes
    (the hardest case) is ruled out at most beta of the time, peeking after every probe (the exact
    supermartingale test above is the sharp form of this); and an
    innocent one (each probe matched with p0 over the key's randomness) is ruled out, early."""
    rule = Futility(share=share, error=0.05)
    rng = np.random.default_rng(3)
    population, budget, runs = 300, 100, 3000
    derived = np.zeros(population, dtype=bool)
    derived[: math.ceil(share * population)] = True
    ruled = 0
    for _ in range(runs):
        bits = rng.permutation(derived)[:budget]
        traj = log_futility_trajectory(Binomial(0.1), list(bits), population, rule.share)
        assert traj is not None
        ruled += max(traj) >= rule.log_threshold
    # Ville's bound is nearly tight at the boundary share: allow three standard errors of sampling
    assert ruled / runs <= rule.error + 3 * math.sqrt(rule.error * (1 - rule.error) / runs)
    first = []
    for _ in range(300):
        bits = rng.random(budget) < 0.1
        traj = log_futility_trajectory(Binomial(0.1), list(bits), population, rule.share)
        assert traj is not None
        first.append(next(t for t, v in enumerate(traj, 1) if v >= rule.log_threshold))
    assert np.mean(first) < 20


def test_futility_verdicts_need_every_model_and_every_test_ruled_out() -> None:
    rule = Futility()
    stranger = TestInput("a", "watermark", Binomial(0.1), _bits(0, 30), tuple(range(1, 31)), 300)
    st = compute_statistics([stranger], alpha=1e-6, mode="sequential", futility=rule)
    assert st.verdict == "not_owned" and st.ruled_out_at == st.tests[0].ruled_out_at
    assert st.ruled_out_at is not None and st.ruled_out_at < 30
    assert st.to_dict()["futility"] == {"share": 0.45, "error": 0.01, "ruled_out_at": st.ruled_out_at}
    # without the rule, or without a population, nothing is ruled out
    assert compute_statistics([stranger], alpha=1e-6, mode="sequential").ruled_out_at is None
    unknown = TestInput("a", "watermark", Binomial(0.1), _bits(0, 30), tuple(range(1, 31)))
    assert compute_statistics([unknown], alpha=1e-6, mode="sequential", futility=rule).ruled_out_at is None
    # a fingerprint test (calibrated null) has no rule: its model is never ruled out early
    fp = TestInput("a", "fingerprint", BetaBinomial(2, 5, 10, 1e-3), _bits(0, 30), tuple(range(31, 61)), 300)
    both = compute_statistics([stranger, fp], alpha=1e-6, mode="sequential", futility=rule)
    assert both.ruled_out_at is None and both.models[0].ruled_out_at is None
    # two models: both must be ruled out, and the run is ruled out when the later one is
    late = TestInput("b", "watermark", Binomial(0.1), _bits(0, 60), tuple(range(31, 91)), 300)
    two = compute_statistics([stranger, late], alpha=1e-6, mode="sequential", futility=rule)
    assert two.ruled_out_at == max(m.ruled_out_at or 0 for m in two.models)
    assert two.models[1].ruled_out_at is not None and two.models[1].ruled_out_at > 31
    keeps = TestInput("b", "watermark", Binomial(0.1), _bits(20, 60), tuple(range(31, 91)), 300)
    assert compute_statistics([stranger, keeps], alpha=1e-6, mode="sequential",
                              futility=rule).ruled_out_at is None
    with pytest.raises(InputError, match="fixed"):
        compute_statistics([stranger], alpha=1e-6, mode="fixed", futility=rule)


def test_futility_rule_round_trips_and_refuses_nonsense() -> None:
    rule = Futility(share=0.5, error=0.02)
    assert Futility.from_dict(rule.to_dict()) == rule and Futility.from_dict(None) is None
    for bad in ({"share": 1.5, "error": 0.01}, {"share": 0.5}, {"share": "x", "error": 0.1},
                {"share": 0.5, "error": 0.0}, [1, 2]):
        with pytest.raises(InputError):
            Futility.from_dict(bad)


def test_holm_and_bonferroni() -> None:
    assert bonferroni([0.01, 0.2, 0.5]) == pytest.approx([0.03, 0.6, 1.0])
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5]) == [0.5]


def _bits(k: int, n: int) -> tuple[bool, ...]:
    return tuple([True] * k + [False] * (n - k))


def test_exact_copy_stops_within_ten_probes_at_1e_minus_9() -> None:
    need = probes_to_reach(Binomial(0.1), math.log(1e9))
    assert need is not None and need <= 10
    st = compute_statistics(
        [TestInput("m", "watermark", Binomial(0.1), _bits(need, need), tuple(range(1, need + 1)))],
        alpha=1e-9, mode="sequential",
    )
    assert st.verdict == "owned" and st.p_value <= 1e-9 and st.models[0].reached_at == need


def test_verdicts_and_multiple_models() -> None:
    owned = TestInput("a", "watermark", Binomial(0.1), _bits(30, 40), tuple(range(1, 41)))
    chance = TestInput("b", "watermark", Binomial(0.1), _bits(4, 40), tuple(range(41, 81)))
    st = compute_statistics([owned, chance], alpha=1e-6, mode="sequential")
    assert st.verdict == "owned" and st.model == "a"
    single = compute_statistics([owned], alpha=1e-6, mode="sequential")
    assert st.p_value == pytest.approx(2 * single.p_value)  # Holm over two models
    none = compute_statistics([chance], alpha=1e-6, mode="sequential")
    assert none.verdict == "not_owned"
    few = TestInput("b", "watermark", Binomial(0.1), _bits(2, 3), (1, 2, 3))
    assert compute_statistics([few], alpha=1e-6, mode="sequential").verdict == "inconclusive"
    fixed = compute_statistics([owned], alpha=1e-6, mode="fixed")
    assert fixed.p_value == pytest.approx(fixed_p_value(Binomial(0.1), 30, 40))
    assert fixed.tests[0].p_fixed is not None and single.tests[0].p_fixed is None


def test_tests_of_one_model_average_their_e_values() -> None:
    wm = TestInput("a", "watermark", Binomial(0.1), _bits(10, 10), tuple(range(1, 20, 2)))
    fp = TestInput("a", "fingerprint", BetaBinomial(2, 5, 10, 1e-4), _bits(0, 10), tuple(range(2, 21, 2)))
    st = compute_statistics([wm, fp], alpha=1e-6, mode="sequential")
    e_wm = math.exp(log_e_value(wm.null, 10, 10))
    e_fp = math.exp(log_e_value(fp.null, 0, 10))
    assert st.models[0].log_e_max == pytest.approx(math.log((e_wm + e_fp) / 2), rel=1e-9)
    # Bonferroni within the model when n is fixed
    fixed = compute_statistics([wm, fp], alpha=1e-6, mode="fixed")
    assert fixed.p_value == pytest.approx(2 * fixed_p_value(wm.null, 10, 10))
