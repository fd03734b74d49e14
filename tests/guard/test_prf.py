"""The keyed marking decision (DAWN, :mod:`core.marking`): deterministic, rate R, uniform labels,
an exact null; and the guard's keyed identifiers (:mod:`guard.prf`)."""

from __future__ import annotations

import hashlib
import hmac

import numpy as np
import pytest
from scipy import stats

from core.errors import InputError, KeyError_
from core.marking import MarkingFunction, canonical_bytes, decode_canonical, key_commitment
from core.probeset import Binomial
from guard.epochs import GuardEpoch
from guard.prf import GuardKey, Marker, keyed_input_digest


def _inputs(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 1, 8, 8), dtype=np.float32)


def _bytes(i: int) -> bytes:
    return i.to_bytes(4, "big") * 8


def _key(i: int) -> GuardKey:
    return GuardKey(_bytes(i))


def _marking(i: int, rate: float, classes: int = 10) -> MarkingFunction:
    return MarkingFunction(_bytes(i), rate, classes)


def _marker(i: int, rate: float) -> Marker:
    return Marker(_key(i), GuardEpoch("m", 0, rate, 10, _bytes(i + 1000), 0))


def test_same_input_same_answer_and_rates_nest() -> None:
    x = _inputs(4000)
    low, high = _marking(1, 0.05), _marking(1, 0.2)
    marks_low = [low.decide(canonical_bytes(r)) for r in x]
    marks_high = [high.decide(canonical_bytes(r)) for r in x]
    assert marks_low == [low.decide(canonical_bytes(r.copy())) for r in x]
    # Marked at 5% implies marked at 20% with the same label.
    for a, b in zip(marks_low, marks_high, strict=True):
        assert not a.marked or (b.marked and a.label == b.label)
    assert [m.label for m in marks_low] == [m.label for m in marks_high]


@pytest.mark.parametrize("rate", [0.01, 0.03, 0.3])
def test_marked_fraction_is_the_rate(rate: float) -> None:
    x = _inputs(20000, seed=1)
    marker = _marking(2, rate)
    k = sum(marker.decide(canonical_bytes(r)).marked for r in x)
    # Two-sided exact binomial test at 1e-4: a wrong rate fails, a right one passes.
    assert stats.binomtest(k, 20000, rate).pvalue > 1e-4


def test_labels_uniform_and_independent_of_content() -> None:
    x = _inputs(20000, seed=2)
    marker = _marking(3, 1.0)
    labels = np.array([marker.decide(canonical_bytes(r)).label for r in x])
    assert stats.chisquare(np.bincount(labels, minlength=10)).pvalue > 1e-4
    # Independent of the input's content: no association with the brightest pixel.
    brightest = x.reshape(len(x), -1).argmax(axis=1) % 10
    table = np.zeros((10, 10))
    np.add.at(table, (labels, brightest), 1)
    assert stats.chi2_contingency(table).pvalue > 1e-4


def test_exact_null_over_keys_even_for_the_owners_own_labels() -> None:
    """Validity: over many keys, a key-less model (here one that predicts the owner's
    "true" label, even when the marked label equals it) has P(p <= t) <= t."""
    x = _inputs(30, seed=3)
    truth = (x.reshape(30, -1).sum(axis=1) * 7).astype(int) % 10  # any fixed predictor
    pvalues = []
    for k in range(400):
        marker = _marking(100 + k, 1.0)
        labels = np.array([marker.decide(canonical_bytes(r)).label for r in x])
        pvalues.append(Binomial(0.1).tail(int((labels == truth).sum()), 30))
    p = np.array(pvalues)
    for t in (0.01, 0.05, 0.2, 0.5):
        # Binomial(400, t) upper 1e-4 bound on the count of p <= t under a valid null.
        assert (p <= t).sum() <= stats.binom.ppf(1 - 1e-4, 400, t)
    matches = 1 - np.mean([pv == 1.0 for pv in pvalues])
    assert matches > 0.9  # nearly every key gives some match: labels are not degenerate


def test_digest_is_keyed_and_canonical_bytes_round_trip() -> None:
    x = _inputs(3)
    a, b = _marker(4, 0.1), _marker(5, 0.1)
    assert keyed_input_digest(a, x[0]) != keyed_input_digest(b, x[0])
    assert keyed_input_digest(a, x[0]) == keyed_input_digest(a, x[0].astype(np.float64))
    assert keyed_input_digest(a, x[0]) != keyed_input_digest(a, x[1])
    assert np.array_equal(decode_canonical(canonical_bytes(x[2])), x[2])
    assert a.client_pseudonym("Bearer t0ken") != b.client_pseudonym("Bearer t0ken")
    assert "t0ken" not in a.client_pseudonym("Bearer t0ken")


def test_bad_parameters_and_keys_are_refused() -> None:
    with pytest.raises(InputError, match=r"--rate must lie in \[0, 1\], got 1.5"):
        _marking(1, 1.5)
    with pytest.raises(InputError, match="at least two classes"):
        _marking(1, 0.1, classes=1)
    with pytest.raises(KeyError_, match="a guard key is 32 bytes"):
        GuardKey(b"short")
    with pytest.raises(KeyError_, match="a guard epoch key is 32 bytes"):
        MarkingFunction(b"short", 0.1, 10)
    with pytest.raises(KeyError_, match="a guard epoch key is 32 bytes"):
        key_commitment(b"short")
    assert "secret" not in repr(_key(1)) and repr(_key(1)) == "GuardKey()"


def test_public_surface_is_sorted_and_importable() -> None:
    import guard

    assert guard.__all__ == sorted(guard.__all__, key=lambda s: (not s.isupper(), s))
    for name in guard.__all__:
        assert getattr(guard, name) is not None


KNOWN_LABELS = [5, 2, 5, 6, 0, 6, 3, 2]
KNOWN_MARKED = [True, True, True, True, True, True, False, False]
KNOWN_COMMITMENT = "7a712f2b2764ed629daae25b903c0edba7bfa777f2ea4bcad2802b586a95a478"


def test_the_marking_function_is_pinned() -> None:
    """Known answers: the checker re-derives marks from opened keys, so the function must not drift."""
    f = MarkingFunction(bytes(range(32)), 0.5, 10)
    x = np.arange(64, dtype=np.float32).reshape(1, 8, 8) / 64
    data = canonical_bytes(x)
    assert data[:16].hex() == "00000003000000010000000800000008"
    assert [f.decide(canonical_bytes(x + i)).label for i in range(8)] == KNOWN_LABELS
    assert [f.decide(canonical_bytes(x + i)).marked for i in range(8)] == KNOWN_MARKED
    assert key_commitment(bytes(range(32))) == KNOWN_COMMITMENT
    assert f.scheme == "dawn-guard:prf=hmac-sha256:rate=0.5:classes=10"


def test_the_guard_digest_is_not_the_marking_key() -> None:
    """Opening an epoch key reveals the marks of that epoch only, never the input digests."""
    epoch_key = _bytes(7)
    marker = Marker(GuardKey(epoch_key), GuardEpoch("m", 0, 1.0, 10, epoch_key, 0))
    data = canonical_bytes(_inputs(1)[0])
    mark = MarkingFunction(epoch_key, 1.0, 10).decide(data)
    assert marker.digest(data) != hmac.new(epoch_key, data, hashlib.sha256).hexdigest()
    assert marker.decide(data) == mark
    assert "secret" not in repr(marker.epoch) and epoch_key.hex() not in repr(marker.epoch)
