"""Watermark keys and the deterministic streams derived from them.

A watermark key is 32 secret bytes. Every probe input, label and salt is
derived from it with HMAC-SHA256 in counter mode over an HKDF-extracted key
(RFC 5869 section 2.2 extract, then HMAC blocks keyed by purpose and counter),
so the same key gives the same probes byte for byte on any machine. Streams
for different purposes (``inputs``, ``labels``, ``salts``, ``select``) use
different HMAC messages and are independent; labels are therefore independent
of the inputs.

Only exact integer arithmetic turns bytes into numbers (no ``log``/``cos``,
whose last bit differs between CPUs): uniform floats are 24-bit integers
divided by ``2**24``, integers below ``high`` use rejection sampling.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from dataclasses import dataclass, field

import numpy as np

from core.errors import KeyError_

__all__ = ["KEY_SIZE", "KeyStream", "WatermarkKey"]

KEY_SIZE = 32
_EXTRACT_SALT = b"wm.watermark-key/v1"


@dataclass(frozen=True)
class WatermarkKey:
    """32 secret bytes. ``repr`` never shows them."""

    secret: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.secret, bytes) or len(self.secret) != KEY_SIZE:
            raise KeyError_(f"a watermark key is {KEY_SIZE} bytes")

    @classmethod
    def generate(cls) -> WatermarkKey:
        """A fresh key from the operating system's CSPRNG."""
        return cls(os.urandom(KEY_SIZE))

    @property
    def key_id(self) -> str:
        """A public identifier (first 16 hex digits of a hash); reveals nothing of the key."""
        return hashlib.sha256(b"wm.watermark-key-id/v1" + self.secret).hexdigest()[:16]

    def stream(self, purpose: str, *context: str) -> KeyStream:
        """The independent byte stream for ``purpose`` (and optional context strings)."""
        prk = hmac.new(_EXTRACT_SALT, self.secret, hashlib.sha256).digest()
        label = "\x00".join((purpose, *context)).encode()
        return KeyStream(prk, label)


class KeyStream:
    """An endless deterministic byte stream: ``HMAC(prk, label || 0x00 || counter)``."""

    def __init__(self, prk: bytes, label: bytes) -> None:
        self._prk = prk
        self._label = label + b"\x00"
        self._counter = 0
        self._buffer = b""

    def read(self, n: int) -> bytes:
        """The next ``n`` bytes."""
        chunks = [self._buffer]
        have = len(self._buffer)
        while have < n:
            block = hmac.new(
                self._prk, self._label + struct.pack(">Q", self._counter), hashlib.sha256
            ).digest()
            self._counter += 1
            chunks.append(block)
            have += len(block)
        data = b"".join(chunks)
        self._buffer = data[n:]
        return data[:n]

    def uint32(self, n: int) -> np.ndarray:
        """``n`` uniform 32-bit unsigned integers."""
        return np.frombuffer(self.read(4 * n), dtype=">u4").astype(np.uint64)

    def uniform(self, n: int) -> np.ndarray:
        """``n`` float32 values uniform on ``[0, 1)``, exactly representable (24-bit grid)."""
        return ((self.uint32(n) >> np.uint64(8)).astype(np.float64) / float(1 << 24)).astype(
            np.float32
        )

    def integers(self, n: int, high: int) -> np.ndarray:
        """``n`` int64 values uniform on ``{0, ..., high - 1}`` (rejection sampling, unbiased)."""
        if high < 1:
            raise ValueError("high must be at least 1")
        limit = (1 << 32) - ((1 << 32) % high)
        out: list[int] = []
        while len(out) < n:
            for v in self.uint32(n - len(out)):
                if int(v) < limit:
                    out.append(int(v) % high)
        return np.asarray(out, dtype=np.int64)

    def permutation(self, n: int) -> np.ndarray:
        """A uniformly random permutation of ``range(n)`` (Fisher-Yates)."""
        perm = np.arange(n, dtype=np.int64)
        for i in range(n - 1, 0, -1):
            j = int(self.integers(1, i + 1)[0])
            perm[i], perm[j] = perm[j], perm[i]
        return perm
