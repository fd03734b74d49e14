"""The guard's marking decision in service: which answers are marked, with which label, and the
keyed identifiers the guard keeps of inputs and clients.

After Szyller et al., "DAWN: Dynamic Adversarial Watermarking of Neural
Networks" (ACM MM 2021), section 4. The marking function itself (HMAC-SHA256
under the current epoch's key over the input's canonical bytes, rate ``R``,
exactly uniform labels) lives in the torch-free :mod:`core.marking`, so that an
offline checker holding an opened epoch key re-derives it; why its null is
exactly ``Binomial(1/C)`` is explained there. This module adds what only the
running guard needs, under a model-level :class:`GuardKey` derived from the
owner key: a keyed digest of each input (the dedup key and audit identifier:
one input queried twice is one probe, not two) and pseudonyms of credentials.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field

import numpy as np

from core.errors import KeyError_
from core.marking import MARKING_PRF, Mark, canonical_bytes, subkey
from guard.epochs import GuardEpoch

__all__ = [
    "GUARD_KEY_SIZE",
    "PRF_NAME",
    "GuardKey",
    "Mark",
    "Marker",
    "canonical_bytes",
    "keyed_input_digest",
]

GUARD_KEY_SIZE = 32
PRF_NAME = MARKING_PRF
_DIGEST_DOMAIN = b"wm.guard.digest/v1\x00"
_CLIENT_DOMAIN = b"wm.guard.client/v1\x00"


@dataclass(frozen=True)
class GuardKey:
    """The guard's model-level 32 secret bytes (digests, pseudonyms); ``repr`` never shows them.

    Derived from the owner key per model (:meth:`derive`), so a restarted guard
    gives every input and client the same identifiers as before.
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


class Marker:
    """The guard's decision for each input (under one epoch) and its keyed identifiers.

    Args:
        key: the model's guard key (digests and pseudonyms).
        epoch: the committed epoch whose key, rate and class count mark answers.
    """

    def __init__(self, key: GuardKey, epoch: GuardEpoch) -> None:
        self.epoch = epoch
        self.function = epoch.marking()
        self._digest_key = subkey(key.secret, b"digest")
        self._client_key = subkey(key.secret, b"client")

    @property
    def rate(self) -> float:
        """The marking rate ``R``."""
        return self.function.rate

    @property
    def num_classes(self) -> int:
        """The task's class count ``C``."""
        return self.function.num_classes

    @property
    def scheme(self) -> str:
        """Canonical name of the marking function with every parameter that shapes it."""
        return f"{self.function.scheme}:epoch={self.epoch.number}"

    def decide(self, data: bytes) -> Mark:
        """The decision for an input given by its :func:`canonical_bytes`."""
        return self.function.decide(data)

    def digest(self, data: bytes) -> str:
        """Keyed digest (hex HMAC-SHA256) of an input's canonical bytes: dedup key and audit identifier.

        Keyed so that the published log cannot be used to confirm a guess of a
        client's input; the same under every epoch.
        """
        return hmac.new(self._digest_key, _DIGEST_DOMAIN + data, hashlib.sha256).hexdigest()

    def client_pseudonym(self, secret_value: str) -> str:
        """A stable pseudonym for a credential (API key, bearer token) that must not be stored."""
        mac = hmac.new(self._client_key, _CLIENT_DOMAIN + secret_value.encode(), hashlib.sha256)
        return mac.hexdigest()[:16]


def keyed_input_digest(marker: Marker, x: np.ndarray) -> str:
    """The guard's keyed digest of one input array (see :meth:`Marker.digest`).

    Not :func:`verifier.session.input_digest`, which is an unkeyed hash for transcripts.
    """
    return marker.digest(canonical_bytes(x))
