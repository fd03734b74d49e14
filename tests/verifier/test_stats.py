"""Statistics: exact tails, the e-process's martingale and Ville properties, combination."""

from __future__ import annotations

import math
from math import comb

import numpy as np
import pytest
from scipy import special, stats

from core.probeset import BetaBinomial, Binomial
from verifier.stats import (
    TestInput,
    bonferroni,
    compute_statistics,
    fixed_p_value,
    holm,
    log_e_trajectory,
    log_e_value,
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
    k = bits.cumsum(axis=1)
    t = np.arange(1, n + 1)
    log_e = special.betaln(1 + k, 1 + t - k) - (k * np.log(0.1) + (t - k) * np.log(0.9))
    e_reject = (log_e.max(axis=1) >= math.log(1 / alpha)).mean()
    naive_p = stats.binom.sf(k - 1, t, 0.1)
    naive_reject = (naive_p.min(axis=1) <= alpha).mean()
    assert e_reject <= alpha
    assert naive_reject > 2 * alpha
    # the vectorised form above is the module's own e-value
    assert log_e[0, 57] == pytest.approx(log_e_value(null, int(k[0, 57]), 58))


def test_holm_and_bonferroni() -> None:
    assert bonferroni([0.01, 0.2, 0.5]) == pytest.approx([0.03, 0.6, 1.0])
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5]) == [0.5]


def _bits(k: int, n: int) -> tuple[bool, ...]:
    return tuple([True] * k + [False] * (n - k))


def test_exact_copy_stops_within_twenty_probes_at_1e_minus_9() -> None:
    need = probes_to_reach(Binomial(0.1), math.log(1e9))
    assert need is not None and need <= 20
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
