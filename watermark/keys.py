"""Watermark keys and the deterministic streams derived from them.

A watermark key is 32 secret bytes. Every probe input, label and salt is
derived from it with :class:`core.derive.KeyStream` (HMAC-SHA256 in counter
mode over an HKDF-extracted key, RFC 5869 section 2.2), so the same key gives
the same probes byte for byte on any machine. Streams for different purposes
(``inputs``, ``salts``, ``select``, ``derivation-key``) are independent.

Each scheme's labels (and its inputs, where the rule is data-free) come from
a per-set derivation key, :meth:`WatermarkKey.derivation_key`, through
:mod:`core.derive`: that key can be opened in a dispute without revealing the
watermark key or any other set.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field

from core.derive import DERIVATION_KEY_SIZE, KeyStream, extract
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
        return extract(self.secret, _EXTRACT_SALT, purpose, *context)

    def derivation_key(self, scheme: str) -> bytes:
        """The derivation key of this key's probe set for ``scheme`` (see :mod:`core.derive`)."""
        return self.stream("derivation-key", scheme).read(DERIVATION_KEY_SIZE)
