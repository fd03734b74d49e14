"""A fingerprint with a conformal null in the verifier's statistics: reported, primary, floored."""

from __future__ import annotations

import numpy as np
import pytest

from core.nulls import Binomial, Conformal
from verifier.stats import TestInput, compute_statistics


def _null(k: int = 9, n: int = 30, rate: float = 0.2) -> Conformal:
    bits = np.random.default_rng(3).random((k, n)) < rate
    return Conformal(a=2.0, b=8.0, references=k, p_floor=1 / (k + 1), size=n,
                     matches=tuple(np.packbits(b.astype(np.uint8), bitorder="little").tobytes().hex()
                                   for b in bits),
                     models=tuple(("mlp", i, "0" * 64) for i in range(k)))


@pytest.mark.parametrize("mode", ["fixed", "sequential"])
def test_a_perfect_match_is_held_at_the_conformal_floor(mode: str) -> None:
    null = _null()
    idx = tuple(range(0, 30, 2))
    t = TestInput("m", "fingerprint", null, (True,) * 15, tuple(range(1, 16)), indices=idx)
    st = compute_statistics([t], alpha=1e-6, mode=mode)  # type: ignore[arg-type]
    (r,) = st.tests
    assert r.p_conformal == pytest.approx(0.1)
    assert r.p_parametric is not None and r.p_parametric >= 0.1
    d = r.to_dict()
    assert d["p_conformal"] == pytest.approx(0.1) and "p_parametric" in d
    assert d["p_value"] >= 0.1 and st.p_value >= 0.1 and st.verdict != "owned"
    if mode == "fixed":
        assert d["p_value"] == pytest.approx(0.1)


def test_conformal_p_is_computed_on_the_answered_probes() -> None:
    null = _null()
    idx = (1, 4, 9, 20)
    bits = (True, False, True, False)
    t = TestInput("m", "fingerprint", null, bits, (1, 2, 3, 4), indices=idx)
    (r,) = compute_statistics([t], alpha=1e-6, mode="fixed").tests
    scores = null.reference_scores(list(idx))
    want = (1 + sum(s >= 2 for s in scores)) / 10
    assert r.p_conformal == pytest.approx(want)
    assert r.p_fixed == pytest.approx(want)


def test_without_indices_a_conformal_test_claims_nothing() -> None:
    t = TestInput("m", "fingerprint", _null(), (True,) * 10, tuple(range(1, 11)))
    (r,) = compute_statistics([t], alpha=1e-6, mode="fixed").tests
    assert r.p_conformal == 1.0 and r.p_fixed == 1.0


def test_other_nulls_keep_their_json_form() -> None:
    t = TestInput("m", "watermark", Binomial(0.1), (True,) * 10, tuple(range(1, 11)),
                  indices=tuple(range(10)))
    (r,) = compute_statistics([t], alpha=1e-6, mode="sequential").tests
    assert "p_conformal" not in r.to_dict() and r.p_conformal is None


def test_the_checker_refuses_a_calibrated_floor_below_what_its_references_vouch_for() -> None:
    from types import SimpleNamespace

    from core.nulls import BetaBinomial
    from verifier.evidence.checks import CheckFailed, _nulls

    def state(null: object) -> object:
        test = SimpleNamespace(kind="fingerprint", null=null, num_classes=10)
        return SimpleNamespace(c=SimpleNamespace(tests=[test]), trusted=[])

    honest = _nulls(state(_null()))  # type: ignore[arg-type]
    assert "conformal" in honest
    _nulls(state(BetaBinomial(2.0, 8.0, references=9, p_floor=0.1)))  # type: ignore[arg-type]
    with pytest.raises(CheckFailed, match="floor"):
        _nulls(state(BetaBinomial(2.0, 8.0, references=9, p_floor=1e-6)))  # type: ignore[arg-type]
