"""Key derivation: golden values, determinism, stream independence."""

from __future__ import annotations

import hashlib
import hmac
import struct

import numpy as np
import pytest
from scipy import stats

from core.errors import KeyError_
from watermark import TriggerSet, UnrelatedMark, WatermarkKey

GOLDEN_KEY = WatermarkKey(bytes(range(32)))


def test_stream_matches_its_specification() -> None:
    # HKDF-extract with a fixed salt, then HMAC(prk, purpose 0x00 context 0x00 counter_be64).
    prk = hmac.new(b"wm.watermark-key/v1", bytes(range(32)), hashlib.sha256).digest()
    block0 = hmac.new(prk, b"inputs\x00x\x00" + struct.pack(">Q", 0), hashlib.sha256).digest()
    block1 = hmac.new(prk, b"inputs\x00x\x00" + struct.pack(">Q", 1), hashlib.sha256).digest()
    assert GOLDEN_KEY.stream("inputs", "x").read(64) == block0 + block1


@pytest.mark.parametrize(
    ("make", "root"),
    [
        (lambda: TriggerSet(), "83884954529365b566fe3fd7dba78572a8ba5e8ba7417f50b272fcee7c561668"),
        (lambda: TriggerSet(pattern="abstract"),
         "4925a479e86cb6157da34de22cc382d9f6ce3c8f285932ca0fe7fb66a2b5fdf6"),
        (lambda: UnrelatedMark(), "707b3c0dc06bd590e2c8bd2bce5aef339369e62043096dfc7062df80f3893139"),
    ],
)
def test_golden_commitments(make, root: str) -> None:  # type: ignore[no-untyped-def]
    probes = make().probes(GOLDEN_KEY, num_classes=10, input_shape=(1, 8, 8))
    assert probes.root.hex() == root


def test_golden_values() -> None:
    assert GOLDEN_KEY.key_id == "b9b640e19898ca07"
    assert GOLDEN_KEY.stream("inputs", "x").read(16).hex() == "36d9c0264f9be1ed457ecdc7b0a195cb"
    probes = TriggerSet().probes(GOLDEN_KEY, num_classes=10, input_shape=(1, 8, 8))
    assert probes.expected[:10].tolist() == [4, 8, 5, 7, 3, 7, 2, 5, 1, 7]
    assert probes.inputs[0, 0, 0, :3].tolist() == [0.4181230664253235, 0.3779221773147583,
                                                   0.9411224126815796]


def test_same_key_same_bytes_other_key_other_bytes() -> None:
    a = TriggerSet().probes(WatermarkKey(b"\x01" * 32), num_classes=10, input_shape=(1, 8, 8))
    b = TriggerSet().probes(WatermarkKey(b"\x01" * 32), num_classes=10, input_shape=(1, 8, 8))
    c = TriggerSet().probes(WatermarkKey(b"\x02" * 32), num_classes=10, input_shape=(1, 8, 8))
    assert a.inputs.numpy().tobytes() == b.inputs.numpy().tobytes()
    assert a.salts == b.salts and a.root == b.root
    assert a.root != c.root and not np.array_equal(a.inputs.numpy(), c.inputs.numpy())


def test_streams_for_different_purposes_differ() -> None:
    k = WatermarkKey(b"\x07" * 32)
    assert k.stream("inputs", "s").read(32) != k.stream("labels", "s").read(32)
    assert k.stream("labels", "a").read(32) != k.stream("labels", "b").read(32)


def test_reads_are_a_prefix_stream() -> None:
    s1 = GOLDEN_KEY.stream("salts")
    s2 = GOLDEN_KEY.stream("salts")
    assert s1.read(5) + s1.read(40) + s1.read(3) == s2.read(48)


def test_integers_are_uniform() -> None:
    draws = WatermarkKey(b"\x09" * 32).stream("labels").integers(20_000, 10)
    counts = np.bincount(draws, minlength=10)
    assert stats.chisquare(counts).pvalue > 1e-4
    assert draws.min() == 0 and draws.max() == 9


def test_uniform_floats_are_on_the_24_bit_grid() -> None:
    u = WatermarkKey(b"\x03" * 32).stream("inputs").uniform(10_000)
    assert u.dtype == np.float32 and u.min() >= 0.0 and u.max() < 1.0
    assert np.all((u * (1 << 24)) == np.round(u * (1 << 24)))


def test_permutation_is_a_permutation() -> None:
    p = WatermarkKey(b"\x05" * 32).stream("select").permutation(500)
    assert sorted(p.tolist()) == list(range(500))


@pytest.mark.parametrize("secret", [b"", b"\x00" * 31, b"\x00" * 33, "x" * 32])
def test_bad_key_sizes(secret: object) -> None:
    with pytest.raises(KeyError_, match="a watermark key is 32 bytes"):
        WatermarkKey(secret)  # type: ignore[arg-type]


def test_repr_hides_the_secret() -> None:
    k = WatermarkKey(b"\xab" * 32)
    assert "ab" not in repr(k).lower().replace("watermarkkey", "")
