"""Guard epochs: marking keys committed in the signed log before they mark anything.

A guard marks answers with the keyed function of :mod:`core.marking` under an
**epoch key**: 32 random bytes, drawn when the epoch starts. Before the first
answer of an epoch is marked, one signed log record (payload type
:data:`GUARD_EPOCH_TYPE`) commits to it::

    {"type": "wm.guard-epoch/v1", "model": NAME, "epoch": E, "prf": "hmac-sha256",
     "rate": R, "classes": C, "key_commitment": hex SHA-256, "key_sealed": base64}

``key_commitment`` is :func:`core.marking.key_commitment` of the key (public);
``key_sealed`` is the key sealed under the owner key
(:func:`registry.sealing.seal`, bound to model and epoch), so ``wm verify
--open-keys`` can reveal it in a dispute and the offline checker re-derives
every opened guard probe's marking decision and label from its input bytes,
trusting neither the owner's labels nor its choice of null: the commitment,
logged before the marks, fixes the key, the rate and ``p0 = 1/C``.

An epoch lasts until the guard is started with another rate, or the owner
rotates it (:func:`rotate_epoch`, ``wm guard rotate``) — for instance after a
dispute opened its key, since anyone holding an opened key can tell which of
their queries that epoch marks. Within an epoch the same input always gets the
same answer. Only records signed by the owner's own key count.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from core.canonical import b64d, b64e
from core.errors import IntegrityError
from core.marking import EPOCH_KEY_SIZE, MARKING_PRF, MarkingFunction, key_commitment
from registry.keys import OwnerKey
from registry.sealing import open_sealed, seal

__all__ = ["GUARD_EPOCH_TYPE", "GuardEpoch", "current_epoch", "epochs", "rotate_epoch"]

GUARD_EPOCH_TYPE = "application/vnd.wm.guard-epoch+json"
_RECORD_TYPE = "wm.guard-epoch/v1"


@dataclass(frozen=True)
class GuardEpoch:
    """One committed epoch: its number, parameters and (unsealed) key; ``repr`` hides the key.

    Attributes:
        model: the registered model's name.
        number: 0, 1, 2, ... per model.
        rate: the marking rate ``R`` fixed for the epoch.
        num_classes: the task's class count ``C``.
        key: the 32-byte epoch key.
        log_index: the log entry that commits to it.
    """

    model: str
    number: int
    rate: float
    num_classes: int
    key: bytes = field(repr=False)
    log_index: int

    @property
    def commitment(self) -> str:
        """The public hash of the key, as logged."""
        return key_commitment(self.key)

    def marking(self) -> MarkingFunction:
        """The epoch's marking function."""
        return MarkingFunction(self.key, self.rate, self.num_classes)


def _context(model: str, number: int) -> dict[str, Any]:
    return {"purpose": "guard-epoch-key", "model": model, "epoch": number}


def _parse(entry: Any, owner_key: OwnerKey, model: str) -> GuardEpoch | None:
    payload = entry.record
    if entry.key_id != owner_key.key_id or not isinstance(payload, dict) or \
            payload.get("type") != _RECORD_TYPE or payload.get("model") != model:
        return None
    try:
        number = payload["epoch"]
        if type(number) is not int or number < 0:
            raise ValueError("epoch number")
        key = open_sealed(owner_key, b64d(payload["key_sealed"], what="sealed epoch key"),
                          _context(model, number))
        epoch = GuardEpoch(model, number, float(payload["rate"]), int(payload["classes"]), key,
                           entry.index)
        if payload.get("prf") != MARKING_PRF or len(key) != EPOCH_KEY_SIZE or \
                payload.get("key_commitment") != epoch.commitment:
            raise ValueError("key, commitment or function do not agree")
        epoch.marking()  # rate and class count in range
    except (KeyError, TypeError, ValueError) as exc:
        raise IntegrityError(f"guard epoch record {entry.index} is malformed: {exc}") from exc
    return epoch


def epochs(registry: Any, owner_key: OwnerKey, model: str) -> dict[int, GuardEpoch]:
    """Every epoch of ``model`` committed under ``owner_key``, by number, keys unsealed.

    Raises:
        IntegrityError: a record of the owner's does not open or disagrees with itself.
    """
    out: dict[int, GuardEpoch] = {}
    for entry in registry.entries(payload_type=GUARD_EPOCH_TYPE):
        epoch = _parse(entry, owner_key, model)
        if epoch is not None:
            if epoch.number in out:
                raise IntegrityError(f"guard epoch {epoch.number} of {model!r} is committed twice")
            out[epoch.number] = epoch
    return out


def rotate_epoch(registry: Any, owner_key: OwnerKey, model: str, rate: float,
                 num_classes: int) -> GuardEpoch:
    """Draw a new epoch key and commit to it in the log (the next epoch number)."""
    number = max(epochs(registry, owner_key, model), default=-1) + 1
    key = os.urandom(EPOCH_KEY_SIZE)
    MarkingFunction(key, rate, num_classes)  # refuse a bad rate before logging anything
    payload = {"type": _RECORD_TYPE, "model": model, "epoch": number, "prf": MARKING_PRF,
               "rate": float(rate), "classes": int(num_classes), "key_commitment": key_commitment(key),
               "key_sealed": b64e(seal(owner_key, key, _context(model, number)))}
    index = registry.append(owner_key, GUARD_EPOCH_TYPE, payload)
    return GuardEpoch(model, number, float(rate), int(num_classes), key, index)


def current_epoch(registry: Any, owner_key: OwnerKey, model: str, rate: float,
                  num_classes: int) -> GuardEpoch:
    """The latest epoch of ``model`` if it marks at ``rate`` over ``num_classes``, else a new one."""
    known = epochs(registry, owner_key, model)
    if known:
        last = known[max(known)]
        if last.rate == float(rate) and last.num_classes == int(num_classes):
            return last
    return rotate_epoch(registry, owner_key, model, rate, num_classes)
