"""The guard's keyed marking decision: which answers are marked, and with which label.

After Szyller et al., "DAWN: Dynamic Adversarial Watermarking of Neural
Networks" (ACM MM 2021), section 4: a keyed function of each query decides
whether its answer is marked and what it becomes. Here the function is
HMAC-SHA256 under a 32-byte guard key over the input's canonical bytes
(float32 little-endian, C order, prefixed by its shape), so the same input
always gets the same answer and different inputs get independent ones.

The first 8 bytes of the HMAC decide marking (``u < floor(R * 2**64)``, so the
inputs marked at rate R are also marked, with the same label, at any larger
rate). The label is drawn from *other* output bytes by rejection sampling
(exactly uniform over ``{0, ..., C-1}``), so it is independent of the marking
decision and of the input's content.

**Why the null is exact.** A guard probe is a marked query ``(x_i, L_i)``. Given
the set of marked inputs (whichever client chose them, and whatever the
marking bits were), the labels ``L_i`` are i.i.d. uniform over the C classes,
independent of everything a model without the key can compute. So for any
suspect that never learned from the guard's answers, and whatever it predicts
(even a perfect copy of the owner's clean model, which agrees with the
owner's true labels), ``P(M(x_i) = L_i) = 1/C`` exactly and the match count is
``Binomial(n, 1/C)``. Two consequences:

- A marked label that happens to equal the upstream's true label (probability
  ``1/C``) is kept as a probe. Dropping those would condition ``L_i`` on
  ``L_i != f(x_i)``: then a model that tends to *disagree* with the owner's
  model would match with probability up to ``1/(C-1) > 1/C``, and the null
  would no longer be exact. (Such answers cost a legitimate client nothing,
  hence the accuracy cost ``R * (1 - 1/C)``.)
- The same input queried twice is *one* probe: its label is the same both
  times (a deterministic function of its bytes), and so is the suspect's
  prediction, so counting it twice would count one Bernoulli trial twice.
  Inputs that differ in any bit (a noisy copy) have independent labels and
  are separate, valid probes even though a model's predictions on them are
  correlated: given those predictions, the key-random labels still match
  independently with probability 1/C each. Probes are therefore deduplicated
  by the digest of their canonical bytes (:func:`input_digest`).
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from dataclasses import dataclass, field

import numpy as np

from core.errors import InputError, KeyError_

__all__ = [
    "GUARD_KEY_SIZE",
    "PRF_NAME",
    "GuardKey",
    "Mark",
    "Marker",
    "canonical_bytes",
    "input_digest",
]

GUARD_KEY_SIZE = 32
PRF_NAME = "hmac-sha256"
_DOMAIN = b"wm.guard.mark/v1\x00"
_DIGEST_DOMAIN = b"wm.guard.digest/v1\x00"
_CLIENT_DOMAIN = b"wm.guard.client/v1\x00"
_TWO64 = 1 << 64


@dataclass(frozen=True)
class GuardKey:
    """The guard's 32 secret bytes; ``repr`` never shows them.

    Derived from the owner key per model (:meth:`derive`), so a restarted guard
    answers every input exactly as before, and nothing extra must be kept secret.
    """

    secret: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.secret, bytes) or len(self.secret) != GUARD_KEY_SIZE:
            raise KeyError_(f"a guard key is {GUARD_KEY_SIZE} bytes")

    @classmethod
    def derive(cls, owner_key: object, model: str) -> GuardKey:
        """The guard key of ``model`` derived from the owner's key (HKDF-SHA256, RFC 5869).

        Args:
            owner_key: a :class:`registry.keys.OwnerKey` (anything with ``derive_key``).
            model: the registered model's name.
        """
        derive = getattr(owner_key, "derive_key", None)
        if derive is None:
            raise KeyError_("the guard key is derived from an unlocked owner key")
        return cls(derive(b"wm.guard-key/v1\x00" + model.encode("utf-8")))

    def subkey(self, purpose: bytes) -> bytes:
        """An independent 32-byte key for ``purpose`` (HMAC-SHA256 of the purpose)."""
        return hmac.new(self.secret, b"wm.guard.subkey/v1\x00" + purpose, hashlib.sha256).digest()


def canonical_bytes(x: np.ndarray) -> bytes:
    """The bytes an input is keyed on: its shape (uint32 big-endian each) then float32 LE data."""
    arr = np.ascontiguousarray(x, dtype="<f4")
    return struct.pack(f">{arr.ndim + 1}I", arr.ndim, *arr.shape) + arr.tobytes()


@dataclass(frozen=True)
class Mark:
    """The guard's decision for one input: marked or not, and the marked label."""

    marked: bool
    label: int


class Marker:
    """Decides, for each input, whether its answer is marked (rate ``R``) and its label.

    Args:
        key: the guard key.
        rate: the fraction ``R`` of distinct inputs whose answers are marked, in [0, 1].
        num_classes: the task's class count ``C``.
    """

    def __init__(self, key: GuardKey, rate: float, num_classes: int) -> None:
        if not 0.0 <= rate <= 1.0:
            raise InputError(f"--rate must lie in [0, 1], got {rate}")
        if num_classes < 2:
            raise InputError("marking needs at least two classes")
        self.rate = float(rate)
        self.num_classes = int(num_classes)
        self._threshold = min(_TWO64, int(self.rate * _TWO64))
        self._mark_key = key.subkey(b"mark")
        self._digest_key = key.subkey(b"digest")
        self._client_key = key.subkey(b"client")
        # Largest multiple of C below 2**64: 64-bit draws under it are exactly uniform mod C.
        self._limit = _TWO64 - (_TWO64 % self.num_classes)

    @property
    def scheme(self) -> str:
        """Canonical name of the marking function with every parameter that shapes it."""
        return f"dawn-guard:prf={PRF_NAME}:rate={self.rate:g}:classes={self.num_classes}"

    def decide(self, data: bytes) -> Mark:
        """The decision for an input given by its :func:`canonical_bytes`."""
        block = hmac.new(self._mark_key, _DOMAIN + data, hashlib.sha256).digest()
        u = int.from_bytes(block[:8], "big")
        label = self._uniform_label(data, block)
        return Mark(marked=u < self._threshold, label=label)

    def _uniform_label(self, data: bytes, block: bytes) -> int:
        # Bytes 8..31 give three 64-bit candidates; further HMAC blocks (counter 1, 2, ...)
        # follow in the astronomically rare case (p < (C / 2**64)**3) all are rejected.
        counter = 0
        words = block[8:]
        while True:
            for i in range(0, len(words), 8):
                v = int.from_bytes(words[i : i + 8], "big")
                if v < self._limit:
                    return v % self.num_classes
            counter += 1
            words = hmac.new(
                self._mark_key, _DOMAIN + struct.pack(">Q", counter) + data, hashlib.sha256
            ).digest()

    def digest(self, data: bytes) -> str:
        """Keyed digest (hex HMAC-SHA256) of an input: dedup key and audit identifier.

        Keyed so that the published log cannot be used to confirm a guess of a
        client's input.
        """
        return hmac.new(self._digest_key, _DIGEST_DOMAIN + data, hashlib.sha256).hexdigest()

    def client_pseudonym(self, secret_value: str) -> str:
        """A stable pseudonym for a credential (API key, bearer token) that must not be stored."""
        mac = hmac.new(self._client_key, _CLIENT_DOMAIN + secret_value.encode(), hashlib.sha256)
        return mac.hexdigest()[:16]


def input_digest(marker: Marker, x: np.ndarray) -> str:
    """The keyed digest of one input array (see :meth:`Marker.digest`)."""
    return marker.digest(canonical_bytes(x))
