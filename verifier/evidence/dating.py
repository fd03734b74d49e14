"""When a probe set's commitment existed, as proven by someone other than the owner.

DESIGN.md, "Trust": a commitment counts against a suspect only if a
checkpoint covering it is proven older than the suspect by a party the
checker pinned: an RFC 3161 time-stamp token verified to a pinned authority
(``--tsa-ca``), or cosignatures of pinned witnesses (``--witness-key``,
C2SP tlog-cosignature). A bundle's ``time`` proof for a set holds the
earliest such checkpoint (a note signed by the owner key, with its witness
cosignature lines, and its token) and the RFC 9162 inclusion proof of the
set's registry entry in that checkpoint's tree. The times themselves are
verified by :func:`registry.timeproof.prove_time`; this module checks that the
timed checkpoint is the owner's, of the same log, and holds the entry.
Anything missing or not verifying leaves the set unproven, and the checker
drops it; nothing here passes by default.
"""

from __future__ import annotations

from collections.abc import Sequence

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from core import merkle
from core.canonical import b64d
from core.errors import InputError, IntegrityError
from registry import dsse
from registry.cosign import WitnessKey
from registry.note import verify_checkpoint
from registry.proofs import ProofCheck
from registry.records import InclusionProof
from registry.timeproof import ProvenTime, prove_time
from verifier.evidence.claims import TestClaim

__all__ = ["TimeUnproven", "commitment_time"]


class TimeUnproven(Exception):  # noqa: N818 - a reason a set is dropped, not a program error
    """No pinned party proves when this probe set existed; the message says why."""


def commitment_time(test: TestClaim, entry: ProofCheck, owner_name: str, owner_public_key: bytes, *,
                    tsa_ca_pem: bytes | None, witness_keys: Sequence[WitnessKey]) -> tuple[ProvenTime, ...]:
    """Each time a pinned party proves ``test``'s registry entry existed, earliest first.

    Args:
        test: the probe set's claims (its ``time`` proof and registry entry).
        entry: the checked registry proof of its entry (origin, index).
        owner_name: the owner's key name, which signs checkpoints.
        owner_public_key: the owner's raw Ed25519 key (already pinned and checked).
        tsa_ca_pem: the pinned RFC 3161 trust anchors, if any.
        witness_keys: the pinned witnesses.

    Raises:
        TimeUnproven: no proof, a proof that does not verify, or no pinned party in it.
    """
    proof = test.time
    if proof is None:
        raise TimeUnproven("no checkpoint with third-party time covers its commitment")
    note, token = proof.get("checkpoint"), proof.get("tsa_token")
    if not isinstance(note, str) or not (token is None or isinstance(token, str)):
        raise TimeUnproven("its time proof has no checkpoint")
    try:
        key = Ed25519PublicKey.from_public_bytes(owner_public_key)
        state = verify_checkpoint(note, owner_name, key, origin=entry.origin)
        inclusion = InclusionProof.from_dict(proof.get("inclusion"))
        leaf = merkle.leaf_hash(dsse.envelope_bytes(test.registry["entry"]))
        if inclusion.leaf_hash != leaf or inclusion.index != entry.index or inclusion.tree_size != state.size:
            raise IntegrityError("the inclusion proof is not for this entry in this checkpoint")
        merkle.verify_inclusion(leaf, inclusion.index, state.size, inclusion.hashes, state.root)
        tokens = () if token is None else (b64d(token, what="time-stamp token"),)
        times = prove_time(note, tsa_tokens=tokens, witness_keys=witness_keys, tsa_ca_pem=tsa_ca_pem)
    except (InputError, IntegrityError, ValueError) as exc:
        raise TimeUnproven(f"its timed checkpoint does not verify: {exc}") from exc
    if not times.times:
        raise TimeUnproven("no pinned authority or witness vouches for its checkpoint ("
                           + "; ".join(times.ignored or ("none of its signers is pinned",)) + ")")
    return tuple(sorted(times.times, key=lambda t: t.time))
