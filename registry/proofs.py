"""Self-contained inclusion proofs that anyone can check offline, against a key they pinned.

A proof bundle (from :meth:`registry.store.LogStore.proof_bundle`, printed by
``wm audit proof ENTRY``) holds a log entry's DSSE envelope, a signed C2SP
checkpoint (with any witness cosignatures) and its RFC 3161 token, the RFC
9162 inclusion proof of the entry in the checkpoint's tree, and the *tail*:
the checkpoint's last entry with its own inclusion proof.

:func:`check_proof_bundle` trusts nothing the bundle says about itself: the
entry and the checkpoint must be signed by the owner key the checker pinned
(the ``owner.pub`` the owner published, or its key id). The embedded keys
are used only when the caller passes :data:`UNSAFE_TRUST_EMBEDDED_KEY`
(demos), and the result then says it is not pinned.

**Counting probe sets.** Every log entry signs the number of probe-set
entries before it (``log.probesets``). The tail entry therefore tells how many
probe sets the log held when the checkpoint was signed:
``ProofCheck.probesets`` (``None`` when the tail is missing, signed by another
key, or older than this counter). What the checker must trust for that number:
the pinned owner's signature on the tail entry, and that the log is
append-only up to the checkpoint — a false count contradicts the signed
entries before it, which ``wm audit verify`` finds on any copy of the log,
and a checkpoint witnessed or time-stamped by others cannot be replaced
afterwards by another history. The count covers every owner's probe sets in
the log, so it can only over-count the owner's own (a conservative correction).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from core import merkle
from core.canonical import b64d, b64e
from core.errors import InputError, IntegrityError
from registry import dsse
from registry.keys import key_id_of
from registry.note import verify_checkpoint
from registry.records import PROBESET_TYPE, InclusionProof

__all__ = [
    "PROOF_BUNDLE_TYPE",
    "UNSAFE_TRUST_EMBEDDED_KEY",
    "OwnerPin",
    "ProofCheck",
    "TrustEmbeddedKey",
    "check_proof_bundle",
    "public_key_b64",
]

PROOF_BUNDLE_TYPE = "wm.inclusion-proof/v1"


class TrustEmbeddedKey:
    """The demo-only policy: trust whatever key the bundle carries."""

    def __repr__(self) -> str:
        return "UNSAFE_TRUST_EMBEDDED_KEY"


UNSAFE_TRUST_EMBEDDED_KEY: Final = TrustEmbeddedKey()
"""Pass as the owner key to check a bundle against the key inside it; proves nothing about who signed."""

OwnerPin = Ed25519PublicKey | str | TrustEmbeddedKey
"""A pinned owner key: the public key, its key id (hex SHA-256 of the raw key), or the unsafe policy."""


def public_key_b64(key: Ed25519PublicKey) -> str:
    """Base64 of the raw 32-byte Ed25519 public key."""
    return b64e(key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))


@dataclass(frozen=True)
class ProofCheck:
    """What a checked bundle establishes.

    ``pinned`` is False only under :data:`UNSAFE_TRUST_EMBEDDED_KEY`.
    ``checkpoint`` is the note as carried (owner signature and any witness
    cosignatures) and ``tsa_token`` its RFC 3161 token: give both to
    :func:`registry.timeproof.prove_time` to learn when the checkpoint existed.
    ``probesets`` is the number of probe sets in the checkpoint's tree (see the
    module docstring), or ``None`` when the bundle cannot prove it.
    """

    index: int
    tree_size: int
    root: bytes
    origin: str
    entry_key_id: str
    checkpoint_key_id: str
    payload: dict[str, Any]
    pinned: bool
    checkpoint: str
    tsa_token: bytes | None
    probesets: int | None


def _key(d: Any, what: str) -> tuple[str, Ed25519PublicKey]:
    try:
        name = d["name"]
        key = Ed25519PublicKey.from_public_bytes(b64d(d["public_key"], what=f"{what} public key"))
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"proof bundle: the {what} key is malformed") from exc
    if not isinstance(name, str):
        raise InputError(f"proof bundle: the {what} key has no name")
    return name, key


def _pinned(owner_key: OwnerPin, embedded: Ed25519PublicKey, what: str) -> Ed25519PublicKey:
    """The key to check ``what`` with: the pinned one, which the embedded key must equal."""
    if isinstance(owner_key, TrustEmbeddedKey):
        return embedded
    want = owner_key if isinstance(owner_key, str) else key_id_of(owner_key)
    kid = key_id_of(embedded)
    if kid != want.lower():
        raise IntegrityError(
            f"proof bundle: the {what} is signed by key {kid[:16]}, not the pinned owner key"
        )
    return embedded if isinstance(owner_key, str) else owner_key


def check_proof_bundle(bundle: Mapping[str, Any], *, owner_key: OwnerPin) -> ProofCheck:
    """Check a proof bundle against a pinned owner key: entry signature, checkpoint, inclusion.

    Args:
        bundle: the JSON object.
        owner_key: the owner's public key or key id, pinned by the checker; the
            entry and the checkpoint must both be signed by it.
            :data:`UNSAFE_TRUST_EMBEDDED_KEY` trusts the bundle's own keys (demos only).

    Raises:
        InputError: the bundle is malformed.
        IntegrityError: a signature or a proof does not verify, or a signer is not the pinned key.
    """
    if not isinstance(bundle, Mapping) or bundle.get("type") != PROOF_BUNDLE_TYPE:
        raise InputError(f"not a {PROOF_BUNDLE_TYPE} bundle")
    keys = bundle.get("keys")
    if not isinstance(keys, Mapping):
        raise InputError("proof bundle has no keys")
    _, entry_embedded = _key(keys.get("entry"), "entry")
    cp_name, cp_embedded = _key(keys.get("checkpoint"), "checkpoint")
    entry_key = _pinned(owner_key, entry_embedded, "entry")
    cp_key = _pinned(owner_key, cp_embedded, "checkpoint")
    envelope = bundle.get("entry")
    if not isinstance(envelope, Mapping):
        raise InputError("proof bundle has no entry")
    payload = dsse.verify_envelope(envelope, entry_key)
    note = bundle.get("checkpoint")
    if not isinstance(note, str):
        raise InputError("proof bundle has no checkpoint")
    state = verify_checkpoint(note, cp_name, cp_key)
    proof = InclusionProof.from_dict(bundle.get("inclusion"))
    _included(envelope, payload, proof, state.size, state.root, state.origin, "entry")
    token_text = bundle.get("tsa_token")
    if token_text is not None and not isinstance(token_text, str):
        raise InputError("proof bundle: the time-stamp token is not base64 text")
    return ProofCheck(
        index=proof.index,
        tree_size=state.size,
        root=state.root,
        origin=state.origin,
        entry_key_id=key_id_of(entry_key),
        checkpoint_key_id=key_id_of(cp_key),
        payload=payload,
        pinned=not isinstance(owner_key, TrustEmbeddedKey),
        checkpoint=note,
        tsa_token=b64d(token_text, what="time-stamp token") if token_text else None,
        probesets=_tail_count(bundle.get("tail"), cp_key, state.size, state.root, state.origin),
    )


def _included(
    envelope: Mapping[str, Any],
    payload: Mapping[str, Any],
    proof: InclusionProof,
    size: int,
    root: bytes,
    origin: str,
    what: str,
) -> None:
    leaf = merkle.leaf_hash(dsse.envelope_bytes(envelope))
    if proof.leaf_hash != leaf:
        raise IntegrityError(f"proof bundle: the inclusion proof is for another {what}")
    if proof.tree_size != size:
        raise IntegrityError(f"proof bundle: the {what}'s proof is for another tree size than the checkpoint")
    log = payload.get("log")
    if not isinstance(log, Mapping) or log.get("index") != proof.index or log.get("origin") != origin:
        raise IntegrityError(f"proof bundle: the {what} was signed for another place or log")
    merkle.verify_inclusion(leaf, proof.index, size, proof.hashes, root)


def _tail_count(tail: Any, key: Ed25519PublicKey, size: int, root: bytes, origin: str) -> int | None:
    """Probe sets in the first ``size`` entries, from the checkpoint's last entry, if it proves it."""
    if not isinstance(tail, Mapping) or not isinstance(tail.get("entry"), Mapping):
        return None
    envelope = tail["entry"]
    try:
        payload = dsse.verify_envelope(envelope, key)
    except IntegrityError:
        return None  # signed by someone the checker did not pin: it proves nothing
    proof = InclusionProof.from_dict(tail.get("inclusion"))
    if proof.index != size - 1:
        raise IntegrityError("proof bundle: the tail is not the checkpoint's last entry")
    _included(envelope, payload, proof, size, root, origin, "tail entry")
    before = payload["log"].get("probesets")
    if not isinstance(before, int) or isinstance(before, bool) or before < 0:
        return None
    return before + (envelope.get("payloadType") == PROBESET_TYPE)
