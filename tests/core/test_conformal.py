"""The model-level conformal null: scoring, floor, round trip, validity as a property."""

from __future__ import annotations

import numpy as np
import pytest

from core.errors import InputError
from core.nulls import Conformal, conformal_p_value, null_from_dict


def _pack(bits: np.ndarray) -> str:
    return np.packbits(bits.astype(np.uint8), bitorder="little").tobytes().hex()


def _null(bits: np.ndarray, archs: list[str] | None = None) -> Conformal:
    k, n = bits.shape
    archs = archs or ["mlp"] * k
    sizes = {a: archs.count(a) for a in archs}
    return Conformal(a=1.0, b=4.0, references=k, p_floor=1 / (min(sizes.values()) + 1), size=n,
                     matches=tuple(_pack(b) for b in bits),
                     models=tuple((a, i, f"{i:064x}") for i, a in enumerate(archs)))


def test_conformal_p_counts_references_at_or_above_the_suspect() -> None:
    assert conformal_p_value(5, [1, 5, 7, 2]) == pytest.approx(3 / 5)
    assert conformal_p_value(8, [1, 5, 7, 2]) == pytest.approx(1 / 5)  # the floor, never less
    assert conformal_p_value(0, [1, 5, 7, 2]) == pytest.approx(1.0)


def test_p_value_scores_the_references_on_the_same_probes() -> None:
    bits = np.zeros((3, 12), dtype=bool)
    bits[0, :6] = True  # reference 0 matches the first half only
    bits[1, 6:] = True  # reference 1 the second half only
    null = _null(bits)
    assert null.reference_scores([0, 1, 2]) == [3, 0, 0]
    assert null.p_value([0, 1, 2], [True, True, True]) == pytest.approx(2 / 4)
    assert null.p_value([6, 7, 8], [True, True, True]) == pytest.approx(2 / 4)
    assert null.p_value([0, 6], [True, True]) == pytest.approx(1 / 4)
    assert null.p_value([0, 6], [False, False]) == pytest.approx(1.0)


def test_groups_take_the_largest_p_and_the_smallest_groups_floor() -> None:
    bits = np.zeros((5, 8), dtype=bool)
    bits[:3] = True  # the three cnn references match everything
    null = _null(bits, ["cnn", "cnn", "cnn", "mlp", "mlp"])
    assert null.p_floor == pytest.approx(1 / 3)
    assert null.p_value(list(range(8)), [True] * 8) == pytest.approx(1.0)  # cnn group: all tie


def test_round_trip_and_a_floor_below_1_over_k_plus_1_is_refused() -> None:
    bits = np.random.default_rng(0).random((9, 20)) < 0.3
    null = _null(bits)
    assert null_from_dict(null.to_dict()) == null
    forged = {**null.to_dict(), "p_floor": 1e-6}
    with pytest.raises(InputError, match="floor"):
        null_from_dict(forged)
    short = {**null.to_dict(), "matches": null.to_dict()["matches"][:-1]}
    with pytest.raises(InputError):
        null_from_dict(short)
    with pytest.raises(InputError):
        null_from_dict({**null.to_dict(), "matches": ["zz" * 3] * 9})


def test_conformal_p_of_exchangeable_models_is_super_uniform() -> None:
    # Models whose per-probe match rates come from one distribution (independent models of one
    # kind): the suspect is one more draw. P(p <= t) <= t for every t, within sampling error.
    rng = np.random.default_rng(7)
    k, n, trials = 19, 40, 3000
    ps = []
    for _ in range(trials):
        rates = rng.beta(2, 6, size=k + 1)
        bits = rng.random((k + 1, n)) < rates[:, None]
        null = _null(bits[1:])
        idx = sorted(rng.choice(n, size=25, replace=False).tolist())
        ps.append(null.p_value(idx, bits[0, idx].tolist()))
    arr = np.asarray(ps)
    assert arr.min() >= 1 / (k + 1) - 1e-12
    for t in (0.05, 0.1, 0.25, 0.5):
        se = np.sqrt(t * (1 - t) / trials)
        assert (arr <= t).mean() <= t + 3 * se
    assert (arr <= 0.05).mean() >= 0.02  # and not vacuous: it does reach its small values
