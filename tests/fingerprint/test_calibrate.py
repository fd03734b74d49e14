"""The fingerprint null: conservative fit, floor, and validity on simulated references."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from core.errors import InputError
from fingerprint.calibrate import calibrate_null, fit_moments, p_floor_for


def test_moments_recover_a_known_beta_binomial() -> None:
    rng = np.random.default_rng(0)
    mu, rho, n = 0.7, 0.05, 100
    a, b = mu * (1 - rho) / rho, (1 - mu) * (1 - rho) / rho
    k = rng.binomial(n, rng.beta(a, b, size=20000))
    m, r = fit_moments(k, n)
    assert abs(float(m) - mu) < 0.005 and abs(float(r) - rho) < 0.005


@pytest.mark.parametrize(("sizes", "floor"), [([4, 4], 1 / 5), ([10, 3], 1 / 4), ([99], 1 / 100)])
def test_floor_is_set_by_the_smallest_group(sizes: list[int], floor: float) -> None:
    assert p_floor_for(sizes) == pytest.approx(floor)


def test_envelope_dominates_every_group_and_floor_is_recorded() -> None:
    cal = calibrate_null({"cnn": [78, 80, 74, 81, 76], "mlp": [20, 25, 18, 22, 24]}, 100, seed=1)
    null = cal.null
    assert null.references == 10 and null.p_floor == pytest.approx(1 / 6)
    by = {g.group: g for g in cal.groups}
    # the null's mean is at least the same-architecture group's upper bound, above its fit
    assert null.mean >= by["cnn"].mean_upper - 1e-9
    assert by["cnn"].mean_upper > by["cnn"].mean == pytest.approx(0.778)
    for g in cal.groups:
        a = g.mean * (1 - g.dispersion) / g.dispersion
        b = (1 - g.mean) * (1 - g.dispersion) / g.dispersion
        for k in range(int(g.mean * 100) + 1, 101):
            point = float(stats.betabinom.sf(k - 1, 100, a, b))
            assert cal.p_value(k) >= point - 1e-12
    # nothing below the floor, however many matches
    assert cal.p_value(100) == pytest.approx(1 / 6)


def test_fewer_references_give_a_more_conservative_null() -> None:
    rng = np.random.default_rng(3)
    k = rng.binomial(100, rng.beta(70, 30, size=40))
    few = calibrate_null({"cnn": k[:3]}, 100, seed=0)
    many = calibrate_null({"cnn": k}, 100, seed=0)
    assert few.groups[0].mean_upper - few.groups[0].mean > many.groups[0].mean_upper - many.groups[0].mean
    assert few.null.p_floor > many.null.p_floor


def test_calibrated_p_values_are_valid_on_fresh_null_models() -> None:
    """Across many calibrations, an independent model's p-value is below t at most t of the time."""
    rng = np.random.default_rng(7)
    n, refs, trials = 100, 8, 400
    a, b = 15.0, 5.0  # mean 0.75: references as close to the owner as same-arch ones on digits
    pvals = []
    for i in range(trials):
        k = rng.binomial(n, rng.beta(a, b, size=refs + 1))
        cal = calibrate_null({"cnn": k[:refs]}, n, bootstrap=300, seed=i)
        pvals.append(cal.p_value(int(k[refs])))
    p = np.asarray(pvals)
    for t in (0.2, 0.5):
        assert (p <= t).mean() <= t + 0.03


@pytest.mark.parametrize(
    ("groups", "n", "message"),
    [
        ({}, 100, "needs held-out reference models"),
        ({"cnn": [50]}, 100, "at least 2 held-out references of cnn"),
        ({"cnn": [50, 101]}, 100, r"must lie in \[0, 100\]"),
        ({"cnn": [1, 2]}, 0, "at least one probe"),
    ],
)
def test_bad_calibration_inputs(groups: dict[str, list[int]], n: int, message: str) -> None:
    with pytest.raises(InputError, match=message):
        calibrate_null(groups, n)
