"""Self-contained inclusion proofs that anyone can check offline (RFC 9162 section 2.1.3).

A proof bundle (from :meth:`registry.Registry.proof_bundle`, printed by
``wm audit proof ENTRY``) holds a log entry's DSSE envelope, a signed C2SP
checkpoint, and the inclusion proof of the entry's leaf in the checkpoint's
tree, with the public keys that signed them. :func:`check_proof_bundle` checks
all of it; the caller decides whether to trust the keys (compare their key ids
with what the owner publishes, or pass the keys explicitly).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from core import merkle
from core.canonical import b64d, b64e
from core.errors import InputError, IntegrityError
from registry import dsse
from registry.keys import key_id_of
from registry.note import verify_checkpoint
from registry.records import InclusionProof

__all__ = ["PROOF_BUNDLE_TYPE", "ProofCheck", "check_proof_bundle", "public_key_b64"]

PROOF_BUNDLE_TYPE = "wm.inclusion-proof/v1"


def public_key_b64(key: Ed25519PublicKey) -> str:
    """Base64 of the raw 32-byte Ed25519 public key."""
    return b64e(key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))


@dataclass(frozen=True)
class ProofCheck:
    """What a checked bundle establishes."""

    index: int
    tree_size: int
    root: bytes
    origin: str
    entry_key_id: str
    checkpoint_key_id: str
    payload: dict[str, Any]


def _key(d: Any, what: str) -> tuple[str, Ed25519PublicKey]:
    try:
        name = d["name"]
        key = Ed25519PublicKey.from_public_bytes(b64d(d["public_key"], what=f"{what} public key"))
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"proof bundle: the {what} key is malformed") from exc
    if not isinstance(name, str):
        raise InputError(f"proof bundle: the {what} key has no name")
    return name, key


def check_proof_bundle(
    bundle: Mapping[str, Any],
    *,
    trusted_key_ids: set[str] | None = None,
) -> ProofCheck:
    """Check a proof bundle: entry signature, checkpoint signature, inclusion.

    Args:
        bundle: the JSON object.
        trusted_key_ids: when given, both signers' key ids must be in it.

    Raises:
        InputError: the bundle is malformed.
        IntegrityError: a signature or the proof does not verify, or a key is not trusted.
    """
    if bundle.get("type") != PROOF_BUNDLE_TYPE:
        raise InputError(f"not a {PROOF_BUNDLE_TYPE} bundle")
    keys = bundle.get("keys")
    if not isinstance(keys, Mapping):
        raise InputError("proof bundle has no keys")
    _, entry_key = _key(keys.get("entry"), "entry")
    cp_name, cp_key = _key(keys.get("checkpoint"), "checkpoint")
    entry_kid, cp_kid = key_id_of(entry_key), key_id_of(cp_key)
    if trusted_key_ids is not None:
        for kid in (entry_kid, cp_kid):
            if kid not in trusted_key_ids:
                raise IntegrityError(f"proof bundle is signed by untrusted key {kid[:16]}")
    envelope = bundle.get("entry")
    if not isinstance(envelope, Mapping):
        raise InputError("proof bundle has no entry")
    payload = dsse.verify_envelope(envelope, entry_key)
    note = bundle.get("checkpoint")
    if not isinstance(note, str):
        raise InputError("proof bundle has no checkpoint")
    state = verify_checkpoint(note, cp_name, cp_key)
    proof = InclusionProof.from_dict(bundle.get("inclusion"))
    leaf = merkle.leaf_hash(dsse.envelope_bytes(envelope))
    if proof.leaf_hash != leaf:
        raise IntegrityError("proof bundle: the inclusion proof is for another entry")
    if proof.tree_size != state.size:
        raise IntegrityError("proof bundle: the proof's tree size differs from the checkpoint's")
    log = payload.get("log")
    if not isinstance(log, Mapping) or log.get("index") != proof.index or log.get("origin") != state.origin:
        raise IntegrityError("proof bundle: the entry was signed for another place or log")
    merkle.verify_inclusion(leaf, proof.index, state.size, proof.hashes, state.root)
    return ProofCheck(
        index=proof.index,
        tree_size=state.size,
        root=state.root,
        origin=state.origin,
        entry_key_id=entry_kid,
        checkpoint_key_id=cp_kid,
        payload=payload,
    )
