"""Sealing the owner's secrets (watermark keys, probe sets) before they reach the database.

AES-256-GCM (NIST SP 800-38D) under a data key derived with HKDF-SHA256
(RFC 5869) from the owner's Ed25519 private key, so only whoever unlocks the
owner key can open them. The associated data names the record a ciphertext
belongs to (canonical JSON), so a ciphertext moved to another record does not
open. Stored form: ``b"wms1" || nonce[12] || ciphertext||tag``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from core.canonical import canonical_json
from core.errors import IntegrityError
from registry.keys import OwnerKey

__all__ = ["open_sealed", "seal"]

_MAGIC = b"wms1"
_INFO = b"wm.registry.seal/v1"


def _aad(context: Mapping[str, Any]) -> bytes:
    return canonical_json({"type": "wm.sealed/v1", **context})


def seal(key: OwnerKey, plaintext: bytes, context: Mapping[str, Any]) -> bytes:
    """Encrypt ``plaintext`` for ``key``'s owner, bound to ``context`` (a JSON object)."""
    nonce = os.urandom(12)
    return _MAGIC + nonce + AESGCM(key.derive_key(_INFO)).encrypt(nonce, plaintext, _aad(context))


def open_sealed(key: OwnerKey, sealed: bytes, context: Mapping[str, Any]) -> bytes:
    """Decrypt what :func:`seal` made; :class:`IntegrityError` for another key, record or change."""
    if len(sealed) < len(_MAGIC) + 12 + 16 or not sealed.startswith(_MAGIC):
        raise IntegrityError("sealed secret is malformed")
    nonce, body = sealed[4:16], sealed[16:]
    try:
        return AESGCM(key.derive_key(_INFO)).decrypt(nonce, body, _aad(context))
    except InvalidTag as exc:
        raise IntegrityError(
            "sealed secret does not open: another owner's key, or it was changed or moved"
        ) from exc
