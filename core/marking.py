"""The guard's keyed marking function, torch-free, so anyone holding an opened key re-derives it.

After Szyller et al., "DAWN: Dynamic Adversarial Watermarking of Neural
Networks" (ACM MM 2021), section 4: a keyed function of each query's bytes
decides whether its answer is marked and with which label. ``wm guard``
(:mod:`guard.prf`) calls it on every inference input; the offline evidence
checker calls it, with a guard **epoch key** that ``wm verify --open-keys``
revealed, to re-derive every opened guard probe's marking decision and label
from the probe's input bytes. It needs only the standard library and numpy.

**The function.** Each guard epoch has a 32-byte random key ``K``, committed
before use: its :func:`key_commitment` (SHA-256 under a domain prefix) is in a
signed registry record, the key itself sealed under the owner key. The
marking key is ``HMAC-SHA256(K, "wm.guard.subkey/v1\\0mark")``; for an input's
:func:`canonical_bytes` ``d``, ``h = HMAC-SHA256(mark key, "wm.guard.mark/v1\\0" || d)``.
The first 8 bytes of ``h`` (big-endian) decide marking: ``u < floor(R * 2**64)``,
so the inputs marked at rate R are also marked, with the same label, at any
larger rate. The label is drawn from the other bytes by rejection sampling
(64-bit words below the largest multiple of C; further blocks
``HMAC(mark key, domain || counter || d)`` in the astronomically rare case all
three are rejected), so it is exactly uniform over ``{0, ..., C-1}`` and
independent of the marking decision and of the input's content.

**Why the null is exact.** Given the set of marked inputs (whoever chose them),
the labels are i.i.d. uniform over the C classes and independent of anything a
model without the key computes: a suspect that never learned from the guard's
answers matches each with probability exactly ``1/C``, whatever it predicts.
A marked label that happens to equal the upstream's true label is kept as a
probe (dropping it would condition the label on the owner model's answer and
break exactness); the same input queried twice is one probe, not two.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from dataclasses import dataclass

import numpy as np

from core.errors import InputError, IntegrityError, KeyError_

__all__ = [
    "EPOCH_KEY_SIZE",
    "MARKING_PRF",
    "Mark",
    "MarkingFunction",
    "canonical_bytes",
    "decode_canonical",
    "key_commitment",
    "subkey",
]

EPOCH_KEY_SIZE = 32
MARKING_PRF = "hmac-sha256"
_MARK_DOMAIN = b"wm.guard.mark/v1\x00"
_SUBKEY_DOMAIN = b"wm.guard.subkey/v1\x00"
_COMMIT_DOMAIN = b"wm.guard.epoch-key/v1\x00"
_TWO64 = 1 << 64
_MAX_NDIM = 8


def subkey(key: bytes, purpose: bytes) -> bytes:
    """An independent 32-byte key for ``purpose``: ``HMAC-SHA256(key, domain || purpose)``."""
    return hmac.new(key, _SUBKEY_DOMAIN + purpose, hashlib.sha256).digest()


def key_commitment(key: bytes) -> str:
    """The public commitment to an epoch key: hex ``SHA-256("wm.guard.epoch-key/v1\\0" || key)``.

    The key is 32 uniformly random bytes, so the hash hides it and binds it.
    """
    if len(key) != EPOCH_KEY_SIZE:
        raise KeyError_(f"a guard epoch key is {EPOCH_KEY_SIZE} bytes")
    return hashlib.sha256(_COMMIT_DOMAIN + key).hexdigest()


def canonical_bytes(x: np.ndarray) -> bytes:
    """The bytes an input is keyed on: ndim and shape (uint32 big-endian each), then float32 LE data."""
    arr = np.ascontiguousarray(x, dtype="<f4")
    return struct.pack(f">{arr.ndim + 1}I", arr.ndim, *arr.shape) + arr.tobytes()


def decode_canonical(data: bytes) -> np.ndarray:
    """Inverse of :func:`canonical_bytes`; :class:`IntegrityError` when ``data`` is not such bytes."""
    if len(data) < 4:
        raise IntegrityError("a guard input is truncated")
    (ndim,) = struct.unpack(">I", data[:4])
    if ndim > _MAX_NDIM or len(data) < 4 + 4 * ndim:
        raise IntegrityError("a guard input has a malformed shape")
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    body = data[4 + 4 * ndim :]
    if len(body) != 4 * int(np.prod(shape, dtype=np.int64)):
        raise IntegrityError("a guard input's size does not match its shape")
    return np.frombuffer(body, dtype="<f4").reshape(shape).astype(np.float32)


@dataclass(frozen=True)
class Mark:
    """The decision for one input: marked or not, and the marked label."""

    marked: bool
    label: int


class MarkingFunction:
    """Whether an input's answer is marked (rate ``R``) and with which label, under one epoch key.

    Args:
        key: the 32-byte epoch key.
        rate: the fraction ``R`` of distinct inputs whose answers are marked, in [0, 1].
        num_classes: the task's class count ``C`` (2 or more).

    Raises:
        KeyError_: the key is not 32 bytes. InputError: a bad rate or class count.
    """

    def __init__(self, key: bytes, rate: float, num_classes: int) -> None:
        if not isinstance(key, bytes) or len(key) != EPOCH_KEY_SIZE:
            raise KeyError_(f"a guard epoch key is {EPOCH_KEY_SIZE} bytes")
        if not 0.0 <= rate <= 1.0:
            raise InputError(f"--rate must lie in [0, 1], got {rate}")
        if num_classes < 2:
            raise InputError("marking needs at least two classes")
        self.rate = float(rate)
        self.num_classes = int(num_classes)
        self._threshold = min(_TWO64, int(self.rate * _TWO64))
        self._key = subkey(key, b"mark")
        # Largest multiple of C not above 2**64: 64-bit draws under it are exactly uniform mod C.
        self._limit = _TWO64 - (_TWO64 % self.num_classes)

    @property
    def scheme(self) -> str:
        """Canonical name of the marking function with every parameter that shapes it."""
        return f"dawn-guard:prf={MARKING_PRF}:rate={self.rate:g}:classes={self.num_classes}"

    def decide(self, data: bytes) -> Mark:
        """The decision for an input given by its :func:`canonical_bytes`."""
        block = hmac.new(self._key, _MARK_DOMAIN + data, hashlib.sha256).digest()
        return Mark(marked=int.from_bytes(block[:8], "big") < self._threshold,
                    label=self._uniform_label(data, block[8:]))

    def _uniform_label(self, data: bytes, words: bytes) -> int:
        counter = 0
        while True:
            for i in range(0, len(words), 8):
                v = int.from_bytes(words[i : i + 8], "big")
                if v < self._limit:
                    return v % self.num_classes
            counter += 1
            words = hmac.new(self._key, _MARK_DOMAIN + struct.pack(">Q", counter) + data,
                             hashlib.sha256).digest()
