"""What the registry hands out: payload types, log entries, public records and proofs.

Every log entry is a DSSE envelope whose payload (RFC 8785 canonical JSON) is a
*statement* binding the record to its place in the log::

    {"log": {"origin": O, "index": i, "prev_root": base64(root of the first i entries)},
     "record": {...}, "signed_at": "2026-01-01T00:00:00.000Z"}

so a row moved, inserted, deleted or swapped behind the registry's back no
longer matches its signed position. The leaf data of entry ``i`` is the
canonical JSON of its envelope (RFC 6962 leaf hash ``SHA-256(0x00 || data)``).
Proofs follow RFC 9162 sections 2.1.3 and 2.1.4.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from core import merkle
from core.canonical import b64d, b64e, parse_json
from core.errors import InputError, IntegrityError

__all__ = [
    "MODEL_TYPE",
    "OWNER_TYPE",
    "PROBESET_TYPE",
    "RESERVED_TYPES",
    "SPEND_TYPE",
    "VERDICTS",
    "VERIFICATION_TYPE",
    "CheckpointInfo",
    "ConsistencyProof",
    "InclusionProof",
    "LogEntry",
    "LogReport",
    "ModelInfo",
    "OwnerInfo",
    "ProbeSetInfo",
]

OWNER_TYPE = "application/vnd.wm.owner+json"
MODEL_TYPE = "application/vnd.wm.model+json"
PROBESET_TYPE = "application/vnd.wm.probeset+json"
SPEND_TYPE = "application/vnd.wm.probe-spend+json"
VERIFICATION_TYPE = "application/vnd.wm.verification+json"
RESERVED_TYPES = frozenset({OWNER_TYPE, MODEL_TYPE, PROBESET_TYPE, SPEND_TYPE, VERIFICATION_TYPE})
VERDICTS = ("owned", "not_owned", "inconclusive")


@dataclass(frozen=True)
class LogEntry:
    """One entry of the log as stored: where it is, who signed it, what it says."""

    index: int
    payload_type: str
    key_id: str
    payload: bytes
    signatures: tuple[dict[str, str], ...]
    leaf_hash: bytes

    @property
    def envelope(self) -> dict[str, Any]:
        """The DSSE envelope."""
        return {
            "payloadType": self.payload_type,
            "payload": b64e(self.payload),
            "signatures": [dict(s) for s in self.signatures],
        }

    @cached_property
    def statement(self) -> dict[str, Any]:
        """The signed statement (``log``, ``record``, ``signed_at``), *not* checked here."""
        value = parse_json(self.payload, what=f"log entry {self.index}")
        if not isinstance(value, dict):
            raise IntegrityError(f"log entry {self.index}: payload is not a JSON object")
        return value

    @property
    def record(self) -> dict[str, Any]:
        """The record the entry logs."""
        rec = self.statement.get("record")
        if not isinstance(rec, dict):
            raise IntegrityError(f"log entry {self.index}: payload has no record")
        return rec

    def to_dict(self) -> dict[str, Any]:
        """Public JSON form (what ``wm audit log --json`` prints)."""
        st = self.statement
        return {
            "index": self.index,
            "payload_type": self.payload_type,
            "key_id": self.key_id,
            "leaf_hash": self.leaf_hash.hex(),
            "signed_at": st.get("signed_at"),
            "record": st.get("record"),
            "envelope": self.envelope,
        }

    @staticmethod
    def signatures_from_text(text: str) -> tuple[dict[str, str], ...]:
        """Parse the stored signature list; :class:`IntegrityError` if malformed."""
        try:
            value = json.loads(text)
        except ValueError as exc:
            raise IntegrityError("signature list is not valid JSON") from exc
        if not isinstance(value, list) or not all(
            isinstance(s, dict) and isinstance(s.get("keyid"), str) and isinstance(s.get("sig"), str)
            for s in value
        ):
            raise IntegrityError("signature list is malformed")
        return tuple(value)


@dataclass(frozen=True)
class OwnerInfo:
    """A registered owner: name, key id, public key (PEM)."""

    key_id: str
    name: str
    public_key_pem: str
    entry_index: int


@dataclass(frozen=True)
class ModelInfo:
    """A registered model as the log records it."""

    name: str
    owner_key_id: str
    file_sha256: str
    weights_sha256: str | None
    arch: str | None
    input_shape: tuple[int, ...] | None
    num_classes: int | None
    entry_index: int
    data: str | None = None  # the training data's name, as the model file records it


@dataclass(frozen=True)
class ProbeSetInfo:
    """The public side of a committed probe set; ``id`` is its log entry index."""

    id: int
    model: str
    kind: str
    scheme: str
    size: int
    num_classes: int
    root: bytes
    null: dict[str, Any]
    spent: int
    has_key: bool

    @property
    def unspent(self) -> int:
        """How many probes are still secret."""
        return self.size - self.spent


@dataclass(frozen=True)
class InclusionProof:
    """RFC 9162 inclusion proof of leaf ``index`` in the tree of ``tree_size`` leaves."""

    index: int
    tree_size: int
    leaf_hash: bytes
    hashes: tuple[bytes, ...]
    root: bytes

    def verify(self, root: bytes | None = None) -> None:
        """Raise :class:`IntegrityError` unless the proof leads to ``root`` (default its own)."""
        merkle.verify_inclusion(
            self.leaf_hash,
            self.index,
            self.tree_size,
            self.hashes,
            self.root if root is None else root,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON form (base64 hashes)."""
        return {
            "index": self.index,
            "tree_size": self.tree_size,
            "leaf_hash": b64e(self.leaf_hash),
            "hashes": [b64e(h) for h in self.hashes],
            "root": b64e(self.root),
        }

    @classmethod
    def from_dict(cls, d: Any) -> InclusionProof:
        """Parse :meth:`to_dict`'s form; :class:`InputError` if malformed."""
        try:
            return cls(
                index=int(d["index"]),
                tree_size=int(d["tree_size"]),
                leaf_hash=b64d(d["leaf_hash"], what="leaf hash"),
                hashes=tuple(b64d(h, what="proof hash") for h in d["hashes"]),
                root=b64d(d["root"], what="root hash"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"malformed inclusion proof: {exc}") from exc


@dataclass(frozen=True)
class ConsistencyProof:
    """RFC 9162 consistency proof between the trees of ``size1`` and ``size2`` leaves."""

    size1: int
    size2: int
    root1: bytes
    root2: bytes
    hashes: tuple[bytes, ...] = field(default=())

    def verify(self) -> None:
        """Raise :class:`IntegrityError` unless the second tree extends the first."""
        merkle.verify_consistency(self.size1, self.size2, self.hashes, self.root1, self.root2)

    def to_dict(self) -> dict[str, Any]:
        """JSON form (base64 hashes)."""
        return {
            "size1": self.size1,
            "size2": self.size2,
            "root1": b64e(self.root1),
            "root2": b64e(self.root2),
            "hashes": [b64e(h) for h in self.hashes],
        }


@dataclass(frozen=True)
class CheckpointInfo:
    """A stored checkpoint: its signed note (with any cosignatures), size, root, signer, RFC 3161 token."""

    id: int
    size: int
    root: bytes
    note: str
    signer_key_id: str
    tsa_token: bytes | None


@dataclass(frozen=True)
class LogReport:
    """What a clean audit (:func:`registry.audit.verify_log`) saw.

    ``timestamps`` counts RFC 3161 tokens verified against the pinned
    authority, ``unchecked_timestamps`` those not checked for want of one.
    ``since`` is the size of the checkpoint saved earlier that the log was proven
    to extend (``--since``), ``None`` when none was given.
    """

    size: int
    root: bytes
    checkpoints: int
    timestamps: int
    unchecked_timestamps: int
    probesets: int
    since: int | None = None
