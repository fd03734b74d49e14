"""Keyed derivation: its specification, its distributions, and re-deriving committed probes."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import struct

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from core.derive import (
    Derivation,
    derive_input,
    derive_label,
    derive_labels,
    expected_input,
    expected_label,
    key_commitment,
)
from core.errors import InputError
from core.probeset import ProbeSet
from watermark import TriggerSet, WatermarkKey, parse_scheme

KEY = bytes(range(32))


def test_label_matches_its_specification() -> None:
    # HKDF-extract with the derivation salt, then HMAC(prk, "label" 0x00 index 0x00 counter_be64);
    # the first 32-bit word below the rejection limit, modulo C.
    prk = hmac.new(b"wm.derivation-key/v1", KEY, hashlib.sha256).digest()
    block = hmac.new(prk, b"label\x007\x00" + struct.pack(">Q", 0), hashlib.sha256).digest()
    word = int.from_bytes(block[:4], "big")
    assert word < (1 << 32) - (1 << 32) % 10  # no rejection for this key and index
    assert derive_label(KEY, 7, 10) == word % 10
    assert key_commitment(KEY) == hashlib.sha256(b"wm.derivation-key-commitment/v1\x00" + KEY).hexdigest()


def test_labels_are_uniform_and_per_index() -> None:
    labels = derive_labels(KEY, 5_000, 10)
    assert stats.chisquare(np.bincount(labels, minlength=10)).pvalue > 1e-4
    assert [derive_label(KEY, i, 10) for i in (0, 17, 4_999)] == [labels[0], labels[17], labels[4_999]]
    assert not np.array_equal(labels, derive_labels(b"\x01" * 32, 5_000, 10))


@pytest.mark.parametrize("rule", ["uniform-noise/v1", "abstract-blocks/v1"])
@pytest.mark.parametrize(("shape", "low", "high"), [((1, 8, 8), 0.0, 1.0), ((3, 5, 7), -2.5, 2.5),
                                                   ((20,), -1.0, 0.0)])
def test_inputs_fill_the_range(rule: str, shape: tuple[int, ...], low: float, high: float) -> None:
    xs = np.stack([derive_input(KEY, i, rule, shape, low, high) for i in range(50)])  # type: ignore[arg-type]
    assert xs.dtype == np.float32 and xs.shape == (50, *shape)
    assert xs.min() >= low and xs.max() < high
    assert xs.max() - xs.min() > 0.8 * (high - low)
    assert np.array_equal(xs[3], derive_input(KEY, 3, rule, shape, low, high))  # type: ignore[arg-type]


def test_abstract_blocks_are_coarse() -> None:
    x = derive_input(KEY, 0, "abstract-blocks/v1", (1, 8, 8), 0.0, 1.0)
    assert len(np.unique(x)) <= 16


def test_rules_refuse_what_they_cannot_derive() -> None:
    with pytest.raises(InputError, match="not data-free"):
        derive_input(KEY, 0, "committed", (1, 8, 8), 0.0, 1.0)
    with pytest.raises(InputError, match=r"abstract triggers need \[C, H, W\] or \[D\] inputs, got \[4, 4\]"):
        derive_input(KEY, 0, "abstract-blocks/v1", (4, 4), 0.0, 1.0)
    with pytest.raises(InputError, match="finite low < high"):
        derive_input(KEY, 0, "uniform-noise/v1", (4,), 1.0, 1.0)
    with pytest.raises(InputError, match="32 bytes"):
        derive_label(b"short", 0, 10)


@given(st.dictionaries(st.sampled_from(["key_sha256", "labels", "inputs", "low", "high", "rate", "x"]),
                       st.one_of(st.none(), st.integers(), st.floats(), st.text(max_size=70))))
@settings(max_examples=200, deadline=None)
def test_malformed_descriptors_are_refused_cleanly(d: dict[str, object]) -> None:
    with contextlib.suppress(InputError):  # anything else escaping fails the test
        assert Derivation.from_dict(d).to_dict() == d


def test_descriptor_round_trip_and_key_check() -> None:
    d = Derivation(key_commitment(KEY), "uniform/v1", "abstract-blocks/v1", -1.0, 1.0)
    assert Derivation.from_dict(d.to_dict()) == d and d.data_free
    assert d.opens_with(KEY) and not d.opens_with(b"\x00" * 32)
    assert expected_input(Derivation(key_commitment(KEY)), KEY, 0, (1, 8, 8)) is None


@pytest.mark.parametrize("spec", ["trigger-set:n=40", "trigger-set:n=40,pattern=abstract", "unrelated:n=40"])
def test_scheme_probes_re_derive_from_their_opened_key(spec: str) -> None:
    probes = parse_scheme(spec).probes(WatermarkKey(b"w" * 32), num_classes=10, input_shape=(1, 8, 8))
    d, key = probes.derivation, probes.derivation_key
    assert d is not None and key is not None and probes.summary()["derivation"] == d.to_dict()
    assert key != WatermarkKey(b"w" * 32).secret  # opening it does not reveal the watermark key
    for o in probes.open(range(len(probes))):
        assert expected_label(d, key, o.index, 10, o.input) == o.label
        x = expected_input(d, key, o.index, (1, 8, 8))
        assert (x is None) == (spec.startswith("unrelated"))
        assert x is None or np.array_equal(x, o.input)


def test_probe_set_keeps_its_derivation_sealed_and_checked() -> None:
    probes = TriggerSet(n=8).probes(WatermarkKey(b"v" * 32), num_classes=10, input_shape=(1, 8, 8))
    back = ProbeSet.from_bytes(probes.to_bytes())
    assert back.derivation == probes.derivation and back.derivation_key == probes.derivation_key
    assert back.root == probes.root
    assert probes.derivation_key is not None and probes.derivation_key.hex() not in repr(probes)
    with pytest.raises(InputError, match="does not match its commitment"):
        ProbeSet(inputs=probes.inputs, expected=probes.expected, kind="watermark", scheme=probes.scheme,
                 null=probes.null, num_classes=10, salts=probes.salts, derivation=probes.derivation,
                 derivation_key=b"\x00" * 32)
    with pytest.raises(InputError, match="go together"):
        ProbeSet(inputs=probes.inputs, expected=torch.zeros(8, dtype=torch.int64), kind="watermark",
                 scheme=probes.scheme, null=probes.null, num_classes=10, salts=probes.salts,
                 derivation=probes.derivation)
