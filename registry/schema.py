"""The registry's tables as a SQLAlchemy 2.0 typed ORM, with constraint naming conventions.

``log_entries`` is the append-only log: one row per signed record, the leaves
of the RFC 6962 tree; ``merkle_nodes`` keeps the tree's interior nodes.
``log_head`` (and the queue of records waiting to be appended,
``append_queue``) are the only mutable tables (the tree size, its
right-edge subtree hashes and the origin line); every other table is insert-only,
enforced by database triggers (see ``registry/migrations``). The record tables
(owners, models, probe sets, spends, verifications) index what the log says, so
queries are cheap; ``wm audit verify`` checks them against the log.
"""

from __future__ import annotations

from sqlalchemy import (
    CheckConstraint,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = [
    "APPEND_ONLY_TABLES",
    "NAMING_CONVENTION",
    "AppendQueueRow",
    "Base",
    "CheckpointRow",
    "LogEntryRow",
    "LogHead",
    "MerkleNodeRow",
    "ModelRow",
    "OwnerRow",
    "ProbeSetRow",
    "SpendRow",
    "VerificationRow",
]

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    """Declarative base with the naming convention, so migrations name constraints alike."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class LogHead(Base):
    """The single mutable row: the log's origin and current tree state (a cache of the log)."""

    __tablename__ = "log_head"
    __table_args__ = (CheckConstraint("id = 1", name="single_row"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    origin: Mapped[str] = mapped_column(String(200))
    size: Mapped[int] = mapped_column(Integer)
    # Concatenated hashes of the perfect subtrees along the tree's right edge, largest first.
    frontier: Mapped[bytes] = mapped_column(LargeBinary)
    root: Mapped[bytes] = mapped_column(LargeBinary(32))
    # How many probe-set entries the log holds (each entry signs the count before it).
    probesets: Mapped[int] = mapped_column(Integer, server_default="0")


class MerkleNodeRow(Base):
    """An interior node of the tree: the root of the ``2**level`` leaves ending before ``end_idx``.

    Written when the append that completes it commits, so an inclusion or
    consistency proof reads O(log n) nodes (:func:`core.merkle.perfect_subtrees`);
    leaves (level 0) are the log entries' leaf hashes. Ordered by the append that
    completed it, so the audit reads them in step with the entries.
    """

    __tablename__ = "merkle_nodes"
    __table_args__ = (CheckConstraint("level > 0", name="interior"),)

    end_idx: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    level: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    hash: Mapped[bytes] = mapped_column(LargeBinary(32))


class LogEntryRow(Base):
    """One signed record: a DSSE envelope split into columns, and its RFC 6962 leaf hash."""

    __tablename__ = "log_entries"

    idx: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    payload_type: Mapped[str] = mapped_column(String(200), index=True)
    key_id: Mapped[str] = mapped_column(String(64))
    payload: Mapped[bytes] = mapped_column(LargeBinary)  # canonical JSON, as signed
    signatures: Mapped[str] = mapped_column(Text)  # JSON list of {keyid, sig}
    leaf_hash: Mapped[bytes] = mapped_column(LargeBinary(32))


class OwnerRow(Base):
    """An owner's public key, introduced by a self-signed owner entry."""

    __tablename__ = "owners"

    key_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    public_key_pem: Mapped[str] = mapped_column(Text)
    entry_idx: Mapped[int] = mapped_column(ForeignKey("log_entries.idx"), unique=True)


class ModelRow(Base):
    """A registered model: digests of its file and weights, and what it takes and gives."""

    __tablename__ = "models"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    owner_key_id: Mapped[str] = mapped_column(ForeignKey("owners.key_id"))
    file_sha256: Mapped[str] = mapped_column(String(64))
    weights_sha256: Mapped[str | None] = mapped_column(String(64))
    arch: Mapped[str | None] = mapped_column(String(200))
    input_shape: Mapped[str | None] = mapped_column(String(200))  # JSON list
    num_classes: Mapped[int | None] = mapped_column(Integer)
    entry_idx: Mapped[int] = mapped_column(ForeignKey("log_entries.idx"), unique=True)
    data: Mapped[str | None] = mapped_column(String(200))  # the training data's name (0004)


class ProbeSetRow(Base):
    """A committed mark or fingerprint: public commitment, and its secrets sealed.

    Its id is the index of the log entry that commits it.
    """

    __tablename__ = "probesets"
    __table_args__ = (
        CheckConstraint("kind IN ('watermark', 'fingerprint', 'guard')", name="kind"),
        CheckConstraint("size > 0", name="size_positive"),
    )

    entry_idx: Mapped[int] = mapped_column(
        ForeignKey("log_entries.idx"), primary_key=True, autoincrement=False
    )
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"), index=True)
    kind: Mapped[str] = mapped_column(String(20))
    scheme: Mapped[str] = mapped_column(String(500))
    size: Mapped[int] = mapped_column(Integer)
    num_classes: Mapped[int] = mapped_column(Integer)
    root: Mapped[bytes] = mapped_column(LargeBinary(32))
    null_model: Mapped[str] = mapped_column(Text)  # canonical JSON of the null
    sealed_by: Mapped[str] = mapped_column(ForeignKey("owners.key_id"))
    sealed_probes: Mapped[bytes] = mapped_column(LargeBinary)
    sealed_key: Mapped[bytes | None] = mapped_column(LargeBinary)


class SpendRow(Base):
    """One probe revealed (spent) in a dispute, by the log entry that recorded it."""

    __tablename__ = "probe_spends"

    probeset_id: Mapped[int] = mapped_column(ForeignKey("probesets.entry_idx"), primary_key=True)
    probe_index: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    entry_idx: Mapped[int] = mapped_column(ForeignKey("log_entries.idx"), index=True)
    # Who spent it (a verification's own id), so that verification may resume; else None.
    claim: Mapped[str | None] = mapped_column(String(64))


class VerificationRow(Base):
    """A verification against a suspect: its verdict and the digest of its evidence."""

    __tablename__ = "verifications"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model_name: Mapped[str | None] = mapped_column(String(200))
    suspect: Mapped[str] = mapped_column(Text)
    verdict: Mapped[str] = mapped_column(String(20))
    evidence_sha256: Mapped[str | None] = mapped_column(String(64))
    entry_idx: Mapped[int] = mapped_column(ForeignKey("log_entries.idx"), unique=True)


class CheckpointRow(Base):
    """A signed checkpoint (C2SP signed note), optionally with an RFC 3161 time-stamp token."""

    __tablename__ = "checkpoints"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    size: Mapped[int] = mapped_column(Integer, index=True)
    root: Mapped[bytes] = mapped_column(LargeBinary(32))
    signer_key_id: Mapped[str] = mapped_column(ForeignKey("owners.key_id"))
    note: Mapped[str] = mapped_column(Text)
    tsa_token: Mapped[bytes | None] = mapped_column(LargeBinary)


class AppendQueueRow(Base):
    """A record waiting to be appended by whichever writer holds the log next (PostgreSQL).

    Not part of the log: a writer queues its record here, authenticated with a
    MAC under a key derived from its owner key, then the writer that holds the
    log head appends every queued record of that owner in one transaction and
    writes each one's index back. Rows are removed by the writer that queued them.
    """

    __tablename__ = "append_queue"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    key_id: Mapped[str] = mapped_column(String(64), index=True)
    payload_type: Mapped[str] = mapped_column(String(200))
    payload: Mapped[bytes] = mapped_column(LargeBinary)  # canonical JSON of the record
    mac: Mapped[bytes] = mapped_column(LargeBinary(32))
    idx: Mapped[int | None] = mapped_column(Integer)  # its log index once appended; -1 if refused


APPEND_ONLY_TABLES: tuple[str, ...] = (
    "log_entries",
    "merkle_nodes",
    "owners",
    "models",
    "probesets",
    "probe_spends",
    "verifications",
    "checkpoints",
)
