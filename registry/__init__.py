"""The signed, tamper-evident registry: owners, models, commitments, verifications.

Records are DSSE envelopes (:mod:`registry.dsse`) over RFC 8785 canonical JSON,
signed by the owner's Ed25519 key (:mod:`registry.keys`), and every one is a
leaf of an append-only RFC 6962 Merkle log (:mod:`registry.store`, with the
domain records in :mod:`registry.log` and the audit in :mod:`registry.audit`)
with C2SP signed checkpoints (:mod:`registry.note`), RFC 9162 proofs
(:mod:`registry.proofs`), optional RFC 3161 time-stamps (:mod:`registry.tsa`)
and witness cosignatures (:mod:`registry.witness`); :mod:`registry.timeproof`
tells offline which times a checkpoint's tokens and cosignatures prove.
Importing this package does not import torch.
"""

from registry.dsse import pae, sign_envelope, verify_envelope
from registry.keys import (
    OwnerKey,
    generate_owner_key,
    load_owner_key,
    load_public_key,
    public_key_from_pem,
)
from registry.log import ProbesSpentError, Registry
from registry.note import Checkpoint, sign_checkpoint, verify_checkpoint
from registry.proofs import check_proof_bundle
from registry.records import (
    MODEL_TYPE,
    OWNER_TYPE,
    PROBESET_TYPE,
    SPEND_TYPE,
    VERIFICATION_TYPE,
    CheckpointInfo,
    ConsistencyProof,
    InclusionProof,
    LogEntry,
    LogReport,
    ModelInfo,
    OwnerInfo,
    ProbeSetInfo,
)
from registry.register import Registration, read_watermark_secret, register_model

__all__ = [
    "MODEL_TYPE",
    "OWNER_TYPE",
    "PROBESET_TYPE",
    "SPEND_TYPE",
    "VERIFICATION_TYPE",
    "Checkpoint",
    "CheckpointInfo",
    "ConsistencyProof",
    "InclusionProof",
    "LogEntry",
    "LogReport",
    "ModelInfo",
    "OwnerInfo",
    "OwnerKey",
    "ProbeSetInfo",
    "ProbesSpentError",
    "Registration",
    "Registry",
    "check_proof_bundle",
    "generate_owner_key",
    "load_owner_key",
    "load_public_key",
    "pae",
    "public_key_from_pem",
    "read_watermark_secret",
    "register_model",
    "sign_checkpoint",
    "sign_envelope",
    "verify_checkpoint",
    "verify_envelope",
]
