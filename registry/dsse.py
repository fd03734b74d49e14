"""DSSE envelopes (Dead Simple Signing Envelope, secure-systems-lab/dsse v1.0).

A record is signed as an envelope over its RFC 8785 canonical JSON payload::

    {"payloadType": TYPE, "payload": base64(BODY),
     "signatures": [{"keyid": KEYID, "sig": base64(Ed25519(PAE(TYPE, BODY)))}]}

with ``PAE(type, body) = "DSSEv1" SP LEN(type) SP type SP LEN(body) SP body``,
``LEN`` the byte length in ASCII decimal. Registry records and evidence bundles
are signed with :func:`sign_envelope` and checked with :func:`verify_envelope`,
which raises :class:`~core.errors.IntegrityError` and never returns a failure.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from core.canonical import b64d, b64e, canonical_json, parse_json
from core.errors import InputError, IntegrityError
from registry.keys import OwnerKey, key_id_of, verify_signature

__all__ = ["envelope_bytes", "pae", "payload_of", "sign_envelope", "verify_envelope"]


def pae(payload_type: str, body: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding of ``(payload_type, body)``."""
    t = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(body), body)


def sign_envelope(key: OwnerKey, payload_type: str, payload: Mapping[str, Any]) -> dict[str, Any]:
    """Sign ``payload`` (as RFC 8785 canonical JSON) with ``key``; the DSSE JSON envelope."""
    body = canonical_json(dict(payload))
    sig = key.sign(pae(payload_type, body))
    return {
        "payloadType": payload_type,
        "payload": b64e(body),
        "signatures": [{"keyid": key.key_id, "sig": b64e(sig)}],
    }


def envelope_bytes(envelope: Mapping[str, Any]) -> bytes:
    """The canonical JSON bytes of an envelope (what the registry log hashes as a leaf)."""
    return canonical_json(dict(envelope))


def _fields(envelope: Any) -> tuple[str, bytes, list[dict[str, Any]]]:
    if not isinstance(envelope, Mapping):
        raise IntegrityError("envelope is not a JSON object")
    ptype, payload, sigs = (
        envelope.get("payloadType"),
        envelope.get("payload"),
        envelope.get("signatures"),
    )
    if not isinstance(ptype, str) or not isinstance(payload, str) or not isinstance(sigs, list):
        raise IntegrityError("envelope lacks payloadType, payload or signatures")
    if not sigs:
        raise IntegrityError("envelope carries no signature")
    try:
        body = b64d(payload, what="envelope payload")
    except InputError as exc:
        raise IntegrityError(str(exc)) from exc
    return ptype, body, sigs


def payload_of(envelope: Mapping[str, Any]) -> dict[str, Any]:
    """The decoded payload of an envelope, *without* checking its signature."""
    _, body, _ = _fields(envelope)
    return _parse_body(body)


def _parse_body(body: bytes) -> dict[str, Any]:
    try:
        value = parse_json(body, what="envelope payload")
    except InputError as exc:
        raise IntegrityError(str(exc)) from exc
    if not isinstance(value, dict):
        raise IntegrityError("envelope payload is not a JSON object")
    if canonical_json(value) != body:
        raise IntegrityError("envelope payload is not RFC 8785 canonical JSON")
    return value


def verify_envelope(
    envelope: Mapping[str, Any],
    public_key: Ed25519PublicKey,
    *,
    payload_type: str | None = None,
    key_id: str | None = None,
) -> dict[str, Any]:
    """Check an envelope's signature by ``public_key``; return its payload.

    Args:
        envelope: the DSSE JSON envelope.
        public_key: the signer's Ed25519 public key; a signature with its key id must verify.
        payload_type: when given, the envelope's type must be exactly this.
        key_id: ``public_key``'s key id when the caller knows it (saves hashing it again).

    Raises:
        IntegrityError: malformed envelope, wrong type, no signature by that key, a
            signature that does not verify, or a payload that is not canonical JSON.
    """
    ptype, body, sigs = _fields(envelope)
    if payload_type is not None and ptype != payload_type:
        raise IntegrityError(f"envelope has payload type {ptype!r}, expected {payload_type!r}")
    kid = key_id if key_id is not None else key_id_of(public_key)
    mine = [s for s in sigs if isinstance(s, Mapping) and s.get("keyid") == kid]
    if not mine:
        raise IntegrityError(f"envelope has no signature by key {kid[:16]}")
    for s in mine:
        sig_text = s.get("sig")
        if not isinstance(sig_text, str):
            raise IntegrityError("envelope signature is not a string")
        try:
            sig = b64d(sig_text, what="signature")
        except InputError as exc:
            raise IntegrityError(str(exc)) from exc
        verify_signature(public_key, sig, pae(ptype, body), what="envelope")
    return _parse_body(body)
