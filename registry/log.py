"""The registry: signed records in an append-only RFC 6962 Merkle log over SQL.

:class:`Registry` is opened by URL (SQLite file or PostgreSQL) and migrated on
open. Every write appends one DSSE-signed entry (:mod:`registry.dsse`) to the
log in the same transaction as its index row, under the writer lock, so
concurrent writers in several processes never fork the log or lose an entry.
Checkpoints are C2SP signed notes (:mod:`registry.note`), optionally
time-stamped by an RFC 3161 authority (:mod:`registry.tsa`). Proofs follow
RFC 9162; :meth:`Registry.verify_log` recomputes every leaf, signature, root
and checkpoint and names the first entry that does not hold.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import Engine, func, select
from sqlalchemy.exc import IntegrityError as SqlIntegrityError
from sqlalchemy.exc import OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session

from core import merkle
from core.canonical import b64d, b64e, canonical_json
from core.errors import InputError, IntegrityError, RegistryError
from registry import dsse
from registry.db import (
    WRITE_OPTION,
    WriterLock,
    create_registry_engine,
    migrate,
    redact,
    sqlite_path,
)
from registry.keys import OwnerKey, key_id_of, public_key_from_pem
from registry.note import Checkpoint, sign_checkpoint, verify_checkpoint
from registry.records import (
    MODEL_TYPE,
    OWNER_TYPE,
    PROBESET_TYPE,
    RESERVED_TYPES,
    SPEND_TYPE,
    VERDICTS,
    VERIFICATION_TYPE,
    ConsistencyProof,
    InclusionProof,
    LogEntry,
    ModelInfo,
    OwnerInfo,
    ProbeSetInfo,
)
from registry.schema import (
    CheckpointRow,
    LogEntryRow,
    LogHead,
    ModelRow,
    OwnerRow,
    ProbeSetRow,
    SpendRow,
    VerificationRow,
)
from registry.sealing import open_sealed, seal

if TYPE_CHECKING:
    from core.probeset import ProbeSet

__all__ = ["CheckpointInfo", "LogReport", "Registry", "fold_frontier", "push_frontier"]

_HASH = merkle.HASH_SIZE


def push_frontier(frontier: list[bytes], size: int, leaf: bytes) -> list[bytes]:
    """Add a leaf hash to the right edge of a tree of ``size`` leaves.

    ``frontier`` holds the roots of the perfect subtrees that make up the
    tree, largest first (one per set bit of ``size``). Returns the new list.
    """
    out = list(frontier)
    node = leaf
    n = size
    while n & 1:
        node = merkle.node_hash(out.pop(), node)
        n >>= 1
    out.append(node)
    return out


def fold_frontier(frontier: Sequence[bytes]) -> bytes:
    """The RFC 6962 root of the tree whose right edge is ``frontier``."""
    if not frontier:
        return merkle.EMPTY_ROOT
    root = frontier[-1]
    for node in reversed(frontier[:-1]):
        root = merkle.node_hash(node, root)
    return root


def _split_frontier(blob: bytes) -> list[bytes]:
    return [blob[i : i + _HASH] for i in range(0, len(blob), _HASH)]


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes, hex."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class CheckpointInfo:
    """A stored checkpoint: its note, size, root, signer and any RFC 3161 token."""

    def __init__(self, row: CheckpointRow) -> None:
        self.id: int = row.id
        self.size: int = row.size
        self.root: bytes = row.root
        self.note: str = row.note
        self.signer_key_id: str = row.signer_key_id
        self.tsa_token: bytes | None = row.tsa_token


class LogReport:
    """What a clean :meth:`Registry.verify_log` saw."""

    def __init__(self, size: int, root: bytes, checkpoints: int, timestamps: int) -> None:
        self.size = size
        self.root = root
        self.checkpoints = checkpoints
        self.timestamps = timestamps


class Registry:
    """A signed, tamper-evident registry database.

    Open with :meth:`open`; use as a context manager or call :meth:`close`.
    Writers pass the :class:`OwnerKey` that signs; an owner unknown to the log
    is added (self-signed owner entry) on its first write.
    """

    def __init__(self, engine: Engine, url: str) -> None:
        self._engine = engine
        self._writer = engine.execution_options(**{WRITE_OPTION: True})
        self.url = url
        self._pg = engine.dialect.name == "postgresql"
        path = sqlite_path(url)
        self._lock = WriterLock(path) if path is not None else None
        self._owners: dict[str, int] = {}
        with self._reading() as s:
            head = s.get(LogHead, 1)
            if head is None:
                raise RegistryError(f"registry {redact(url)} has no log head")
            self.origin: str = head.origin

    # ---------------------------------------------------------------- lifecycle

    @classmethod
    def open(cls, url: str, *, create: bool = True) -> Registry:
        """Open (and migrate) the registry at ``url``.

        Args:
            url: ``sqlite:///path`` or ``postgresql+psycopg://...``.
            create: create the schema in an empty database (default); else refuse.

        Raises:
            RegistryError: unreachable, unknown schema revision, or not a registry.
        """
        path = sqlite_path(url)
        if not create and path is not None and not path.exists():
            raise RegistryError(f"no registry at {path}", hint="register a model first, or pass --registry")
        engine = create_registry_engine(url)
        try:
            migrate(engine, create=create)
            return cls(engine, url)
        except BaseException:
            engine.dispose()
            raise

    def close(self) -> None:
        """Release the database connections."""
        self._engine.dispose()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _reading(self) -> Iterator[Session]:
        try:
            with Session(self._engine, expire_on_commit=False) as s, s.begin():
                yield s
        except OperationalError as exc:
            raise RegistryError(f"registry {redact(self.url)}: {_reason(exc)}") from exc

    @contextmanager
    def _writing(self) -> Iterator[Session]:
        """One writer transaction; appends are serialised by the lock it takes first."""
        try:
            with (
                self._lock.held() if self._lock is not None else nullcontext(),
                Session(self._writer, expire_on_commit=False) as s,
                s.begin(),
            ):
                # PostgreSQL: the row lock on the head serialises writers (SQLite: BEGIN
                # IMMEDIATE), so every check-then-insert in the transaction is race-free.
                if self._pg:
                    s.get(LogHead, 1, with_for_update=True)
                else:
                    s.get(LogHead, 1)
                yield s
            self._owners.update(s.info.get("owners", {}))  # only once committed
        except SqlIntegrityError as exc:
            raise RegistryError(f"registry refused the write: {_reason(exc)}") from exc
        except OperationalError as exc:
            raise RegistryError(f"registry {redact(self.url)}: {_reason(exc)}") from exc

    # ---------------------------------------------------------------- appending

    def _append(
        self,
        s: Session,
        key: OwnerKey,
        payload_type: str,
        record: dict[str, Any],
        *,
        flush: bool = True,
    ) -> int:
        head = s.get(LogHead, 1)  # loaded under the writer lock by _writing()
        assert head is not None
        index = head.size
        statement = {
            "log": {"origin": head.origin, "index": index, "prev_root": b64e(head.root)},
            "record": record,
            "signed_at": _now(),
        }
        envelope = dsse.sign_envelope(key, payload_type, statement)
        leaf = merkle.leaf_hash(dsse.envelope_bytes(envelope))
        s.add(
            LogEntryRow(
                idx=index,
                payload_type=payload_type,
                key_id=key.key_id,
                payload=b64d(envelope["payload"]),
                signatures=json.dumps(envelope["signatures"], sort_keys=True),
                leaf_hash=leaf,
            )
        )
        frontier = push_frontier(_split_frontier(head.frontier), index, leaf)
        head.size = index + 1
        head.frontier = b"".join(frontier)
        head.root = fold_frontier(frontier)
        if flush:
            s.flush()
        return index

    def _ensure_owner(self, s: Session, key: OwnerKey) -> int:
        known = self._owners.get(key.key_id)
        if known is not None:  # owners are append-only: once logged, always logged
            return known
        row = s.get(OwnerRow, key.key_id)
        if row is not None:
            s.info.setdefault("owners", {})[key.key_id] = row.entry_idx
            return row.entry_idx
        record = {"name": key.name, "key_id": key.key_id, "public_key": b64e(key.public_raw())}
        index = self._append(s, key, OWNER_TYPE, record)
        s.add(OwnerRow(key_id=key.key_id, name=key.name, public_key_pem=key.public_pem(), entry_idx=index))
        s.flush()
        return index

    def add_owner(self, key: OwnerKey) -> int:
        """Introduce ``key``'s owner to the log (self-signed); idempotent. The entry index."""
        with self._writing() as s:
            return self._ensure_owner(s, key)

    def append(self, owner_key: OwnerKey, payload_type: str, payload: dict[str, Any]) -> int:
        """Append a generic signed record (for example the guard's); its entry index.

        Args:
            owner_key: signs the entry.
            payload_type: a media type such as ``application/vnd.wm.guard+json``; the
                registry's own types are refused here (use their methods).
            payload: any JSON object (RFC 8785 encodable).
        """
        if payload_type in RESERVED_TYPES:
            raise InputError(f"payload type {payload_type} is written by its own registry method")
        if not payload_type or len(payload_type) > 200 or not payload_type.isascii():
            raise InputError("payload type must be 1 to 200 ASCII characters")
        if not isinstance(payload, dict):
            raise InputError("a log record must be a JSON object")
        canonical_json(payload)  # refuse what cannot be signed before taking the lock
        with self._writing() as s:
            self._ensure_owner(s, owner_key)
            return self._append(s, owner_key, payload_type, payload)

    def append_many(
        self, owner_key: OwnerKey, payload_type: str, payloads: Sequence[dict[str, Any]]
    ) -> list[int]:
        """Append several generic records in one transaction (all or none); their indices.

        Same rules as :meth:`append`; one lock and one commit for the batch, so
        recording many small records (the guard's marked queries) is cheap.
        """
        if payload_type in RESERVED_TYPES:
            raise InputError(f"payload type {payload_type} is written by its own registry method")
        if not payload_type or len(payload_type) > 200 or not payload_type.isascii():
            raise InputError("payload type must be 1 to 200 ASCII characters")
        for payload in payloads:
            if not isinstance(payload, dict):
                raise InputError("a log record must be a JSON object")
        with self._writing() as s:
            self._ensure_owner(s, owner_key)
            return [self._append(s, owner_key, payload_type, p, flush=False) for p in payloads]

    def register_model(
        self,
        owner_key: OwnerKey,
        name: str,
        model_path: str | Path,
        *,
        weights_sha256: str | None = None,
        arch: str | None = None,
        input_shape: Sequence[int] | None = None,
        num_classes: int | None = None,
    ) -> int:
        """Register a model file under ``name``; the entry index.

        The file's SHA-256 is computed here; the weights digest, architecture,
        input shape and class count are recorded as given (see
        :func:`registry.register.register_model`, which reads them off a ``.pt2``).

        Raises:
            InputError: the file is missing or the name is empty or already registered.
        """
        path = Path(model_path)
        if not name or len(name) > 200:
            raise InputError("a model name must be 1 to 200 characters")
        if not path.is_file():
            raise InputError(f"model file {path} does not exist")
        record = {
            "name": name,
            "file_sha256": file_sha256(path),
            "weights_sha256": weights_sha256,
            "arch": arch,
            "input_shape": list(input_shape) if input_shape is not None else None,
            "num_classes": num_classes,
        }
        with self._writing() as s:
            existing = s.scalar(select(ModelRow).where(ModelRow.name == name))
            if existing is not None:
                raise InputError(
                    f"a model named {name!r} is already registered (log entry {existing.entry_idx})"
                )
            self._ensure_owner(s, owner_key)
            index = self._append(s, owner_key, MODEL_TYPE, record)
            s.add(
                ModelRow(
                    name=name,
                    owner_key_id=owner_key.key_id,
                    file_sha256=record["file_sha256"],
                    weights_sha256=weights_sha256,
                    arch=arch,
                    input_shape=json.dumps(record["input_shape"]) if input_shape is not None else None,
                    num_classes=num_classes,
                    entry_idx=index,
                )
            )
            return index

    def _model_row(self, s: Session, name: str) -> ModelRow:
        row = s.scalar(select(ModelRow).where(ModelRow.name == name))
        if row is None:
            raise RegistryError(f"no model named {name!r} in the registry")
        return row

    def add_probeset(
        self,
        owner_key: OwnerKey,
        model_name: str,
        probeset: ProbeSet,
        secret_key: bytes | None = None,
    ) -> int:
        """Commit a mark or fingerprint to a model; its id (the log entry index).

        The log records the public summary (kind, scheme, size, null, Merkle
        root); the probes and the watermark key are sealed for the owner
        (:mod:`registry.sealing`) and stored beside it, never in plain text.

        Raises:
            RegistryError: no such model.
            InputError: the model belongs to another owner.
        """
        summary = probeset.summary()
        root_hex = summary["root"]
        context = {"model": model_name, "root": root_hex}
        sealed_probes = seal(owner_key, probeset.to_bytes(), {"purpose": "probes", **context})
        sealed_key = (
            seal(owner_key, secret_key, {"purpose": "watermark-key", **context})
            if secret_key is not None
            else None
        )
        record = {
            "model": model_name,
            **summary,
            "sealed_probes_sha256": hashlib.sha256(sealed_probes).hexdigest(),
            "sealed_key_sha256": hashlib.sha256(sealed_key).hexdigest() if sealed_key else None,
        }
        with self._writing() as s:
            model = self._model_row(s, model_name)
            if model.owner_key_id != owner_key.key_id:
                raise InputError(f"model {model_name!r} belongs to another owner key")
            index = self._append(s, owner_key, PROBESET_TYPE, record)
            s.add(
                ProbeSetRow(
                    entry_idx=index,
                    model_id=model.id,
                    kind=probeset.kind,
                    scheme=probeset.scheme,
                    size=len(probeset),
                    num_classes=probeset.num_classes,
                    root=probeset.root,
                    null_model=canonical_json(summary["null"]).decode(),
                    sealed_by=owner_key.key_id,
                    sealed_probes=sealed_probes,
                    sealed_key=sealed_key,
                )
            )
            return index

    def _probeset_row(self, s: Session, probeset_id: int) -> tuple[ProbeSetRow, ModelRow]:
        row = s.get(ProbeSetRow, probeset_id)
        if row is None:
            raise RegistryError(f"no probe set with id {probeset_id} in the registry")
        model = s.get(ModelRow, row.model_id)
        assert model is not None
        return row, model

    def spend(self, owner_key: OwnerKey, probeset_id: int, indices: Sequence[int], reason: str) -> int:
        """Record that probes were revealed (sent to a suspect); the entry index.

        Spending is a signed log entry listing the indices. Probes already spent
        may be listed again; they stay spent.

        Raises:
            RegistryError: no such probe set. InputError: an index outside the set.
        """
        wanted = sorted({int(i) for i in indices})
        if not wanted:
            raise InputError("no probe indices to spend")
        with self._writing() as s:
            row, model = self._probeset_row(s, probeset_id)
            bad = [i for i in wanted if not 0 <= i < row.size]
            if bad:
                raise InputError(f"probe index {bad[0]} is outside probe set {probeset_id} of {row.size}")
            self._ensure_owner(s, owner_key)
            record = {
                "probeset": probeset_id,
                "model": model.name,
                "root": row.root.hex(),
                "indices": wanted,
                "reason": reason,
            }
            index = self._append(s, owner_key, SPEND_TYPE, record)
            spent = set(s.scalars(select(SpendRow.probe_index).where(SpendRow.probeset_id == probeset_id)))
            s.add_all(
                SpendRow(probeset_id=probeset_id, probe_index=i, entry_idx=index)
                for i in wanted
                if i not in spent
            )
            return index

    def add_verification(self, owner_key: OwnerKey, record: dict[str, Any]) -> int:
        """Log a verification; the entry index.

        Args:
            owner_key: signs the entry.
            record: needs ``suspect`` (str) and ``verdict`` (``owned``, ``not_owned`` or
                ``inconclusive``); ``model`` and ``evidence_sha256`` are indexed when
                present; everything in it is signed.
        """
        suspect, verdict = record.get("suspect"), record.get("verdict")
        if not isinstance(suspect, str) or not suspect:
            raise InputError("a verification record needs a suspect")
        if verdict not in VERDICTS:
            raise InputError(f"verdict must be one of {', '.join(VERDICTS)}, got {verdict!r}")
        model, digest = record.get("model"), record.get("evidence_sha256")
        canonical_json(record)
        with self._writing() as s:
            self._ensure_owner(s, owner_key)
            index = self._append(s, owner_key, VERIFICATION_TYPE, dict(record))
            s.add(
                VerificationRow(
                    model_name=model if isinstance(model, str) else None,
                    suspect=suspect,
                    verdict=verdict,
                    evidence_sha256=digest if isinstance(digest, str) else None,
                    entry_idx=index,
                )
            )
            return index

    # ---------------------------------------------------------------- reading

    def size(self) -> int:
        """Number of entries in the log."""
        with self._reading() as s:
            head = s.get(LogHead, 1)
            assert head is not None
            return head.size

    def root(self, size: int | None = None) -> bytes:
        """The RFC 6962 root of the first ``size`` entries (default: all)."""
        if size is None:
            with self._reading() as s:
                head = s.get(LogHead, 1)
                assert head is not None
                return head.root
        return merkle.root_from_hashes(self._leaf_hashes(size))

    def _leaf_hashes(self, size: int) -> list[bytes]:
        with self._reading() as s:
            hashes = list(
                s.scalars(
                    select(LogEntryRow.leaf_hash).where(LogEntryRow.idx < size).order_by(LogEntryRow.idx)
                )
            )
        if len(hashes) != size:
            raise RegistryError(f"the log has {len(hashes)} entries, not {size}")
        return hashes

    def entries(
        self, start: int = 0, stop: int | None = None, *, payload_type: str | None = None
    ) -> list[LogEntry]:
        """Log entries ``start <= index < stop``, optionally of one payload type, in order."""
        q = select(LogEntryRow).where(LogEntryRow.idx >= start).order_by(LogEntryRow.idx)
        if stop is not None:
            q = q.where(LogEntryRow.idx < stop)
        if payload_type is not None:
            q = q.where(LogEntryRow.payload_type == payload_type)
        with self._reading() as s:
            return [_entry(r) for r in s.scalars(q)]

    def entry(self, index: int) -> LogEntry:
        """One log entry; :class:`RegistryError` if there is none at ``index``."""
        with self._reading() as s:
            row = s.get(LogEntryRow, index)
            if row is None:
                raise RegistryError(f"no log entry {index}")
            return _entry(row)

    def owners(self) -> list[OwnerInfo]:
        """Every owner the log knows."""
        with self._reading() as s:
            return [
                OwnerInfo(r.key_id, r.name, r.public_key_pem, r.entry_idx)
                for r in s.scalars(select(OwnerRow).order_by(OwnerRow.entry_idx))
            ]

    def owner_public_key(self, key_id: str) -> tuple[str, Ed25519PublicKey]:
        """An owner's name and public key by key id."""
        with self._reading() as s:
            row = s.get(OwnerRow, key_id)
            if row is None:
                raise RegistryError(f"no owner with key id {key_id[:16]}")
            return row.name, public_key_from_pem(row.public_key_pem)

    def model(self, name: str) -> ModelInfo:
        """A registered model by name; :class:`RegistryError` if unknown."""
        with self._reading() as s:
            return _model_info(self._model_row(s, name))

    def models(self) -> list[ModelInfo]:
        """Every registered model, in log order."""
        with self._reading() as s:
            return [_model_info(r) for r in s.scalars(select(ModelRow).order_by(ModelRow.entry_idx))]

    def probesets(self, model_name: str, kind: str | None = None) -> list[ProbeSetInfo]:
        """Public records of a model's committed probe sets, optionally of one kind."""
        with self._reading() as s:
            model = self._model_row(s, model_name)
            q = select(ProbeSetRow).where(ProbeSetRow.model_id == model.id)
            if kind is not None:
                q = q.where(ProbeSetRow.kind == kind)
            rows = list(s.scalars(q.order_by(ProbeSetRow.entry_idx)))
            counts: dict[int, int] = {
                pid: n
                for pid, n in s.execute(
                    select(SpendRow.probeset_id, func.count())
                    .where(SpendRow.probeset_id.in_([r.entry_idx for r in rows]))
                    .group_by(SpendRow.probeset_id)
                )
            }
            return [
                ProbeSetInfo(
                    id=r.entry_idx,
                    model=model_name,
                    kind=r.kind,
                    scheme=r.scheme,
                    size=r.size,
                    num_classes=r.num_classes,
                    root=r.root,
                    null=json.loads(r.null_model),
                    spent=int(counts.get(r.entry_idx, 0)),
                    has_key=r.sealed_key is not None,
                )
                for r in rows
            ]

    def unspent_indices(self, probeset_id: int) -> list[int]:
        """Indices of the probes of a set not yet revealed, ascending."""
        with self._reading() as s:
            row, _ = self._probeset_row(s, probeset_id)
            spent = set(s.scalars(select(SpendRow.probe_index).where(SpendRow.probeset_id == probeset_id)))
            return [i for i in range(row.size) if i not in spent]

    def load_probeset(self, probeset_id: int, owner_key: OwnerKey) -> ProbeSet:
        """Decrypt a committed probe set; checks it against its commitment.

        Raises:
            RegistryError: no such probe set. IntegrityError: sealed by another key,
                changed, or not matching the committed root.
        """
        from core.probeset import ProbeSet

        with self._reading() as s:
            row, model = self._probeset_row(s, probeset_id)
            sealed, root = row.sealed_probes, row.root
        context = {"purpose": "probes", "model": model.name, "root": root.hex()}
        probeset = ProbeSet.from_bytes(open_sealed(owner_key, sealed, context))
        if probeset.root != root:
            raise IntegrityError(f"probe set {probeset_id} does not match its committed root")
        return probeset

    def load_secret_key(self, probeset_id: int, owner_key: OwnerKey) -> bytes | None:
        """Decrypt the watermark key stored with a probe set, if one was."""
        with self._reading() as s:
            row, model = self._probeset_row(s, probeset_id)
            sealed, root = row.sealed_key, row.root
        if sealed is None:
            return None
        return open_sealed(
            owner_key, sealed, {"purpose": "watermark-key", "model": model.name, "root": root.hex()}
        )

    # ---------------------------------------------------------------- checkpoints and proofs

    def checkpoint(
        self, owner_key: OwnerKey, *, tsa_url: str | None = None, tsa_timeout: float = 30.0
    ) -> str:
        """Sign the log's current state as a C2SP checkpoint note and store it; the note.

        Args:
            owner_key: signs the checkpoint (its owner name is the note key name).
            tsa_url: when given, an RFC 3161 time-stamping authority asked to
                timestamp the note; its token is stored beside it.
            tsa_timeout: seconds to wait for the authority.
        """
        with self._writing() as s:
            self._ensure_owner(s, owner_key)
        with self._reading() as s:
            head = s.get(LogHead, 1)
            assert head is not None
            state = Checkpoint(origin=head.origin, size=head.size, root=head.root)
        note = sign_checkpoint(state, owner_key)
        token = None
        if tsa_url is not None:
            from registry import tsa

            token = tsa.request_timestamp(tsa_url, note.encode("utf-8"), timeout=tsa_timeout)
        with self._writing() as s:
            s.add(
                CheckpointRow(
                    size=state.size,
                    root=state.root,
                    signer_key_id=owner_key.key_id,
                    note=note,
                    tsa_token=token,
                )
            )
        return note

    def checkpoints(self) -> list[CheckpointInfo]:
        """Every stored checkpoint, by size then id."""
        with self._reading() as s:
            rows = s.scalars(select(CheckpointRow).order_by(CheckpointRow.size, CheckpointRow.id))
            return [CheckpointInfo(r) for r in rows]

    def latest_checkpoint(self, min_size: int = 0) -> CheckpointInfo | None:
        """The largest checkpoint covering at least ``min_size`` entries, if any."""
        with self._reading() as s:
            row = s.scalar(
                select(CheckpointRow)
                .where(CheckpointRow.size >= min_size)
                .order_by(CheckpointRow.size.desc(), CheckpointRow.id.desc())
                .limit(1)
            )
            return CheckpointInfo(row) if row is not None else None

    def inclusion_proof(self, entry_index: int, tree_size: int | None = None) -> InclusionProof:
        """RFC 9162 inclusion proof of an entry in the tree of ``tree_size`` (default: all)."""
        size = self.size() if tree_size is None else tree_size
        if not 0 <= entry_index < size:
            raise InputError(f"log entry {entry_index} is not in a tree of {size} entries")
        hashes = self._leaf_hashes(size)
        return InclusionProof(
            index=entry_index,
            tree_size=size,
            leaf_hash=hashes[entry_index],
            hashes=tuple(merkle.inclusion_proof(hashes, entry_index)),
            root=merkle.root_from_hashes(hashes),
        )

    def consistency_proof(self, size1: int, size2: int | None = None) -> ConsistencyProof:
        """RFC 9162 consistency proof from the tree of ``size1`` to that of ``size2``."""
        size2 = self.size() if size2 is None else size2
        if not 0 < size1 <= size2:
            raise InputError(f"no consistency proof from size {size1} to size {size2}")
        hashes = self._leaf_hashes(size2)
        return ConsistencyProof(
            size1=size1,
            size2=size2,
            root1=merkle.root_from_hashes(hashes[:size1]),
            root2=merkle.root_from_hashes(hashes),
            hashes=tuple(merkle.consistency_proof(hashes, size1)),
        )

    def proof_bundle(self, entry_index: int) -> dict[str, Any]:
        """A self-contained inclusion proof for one entry, checkable by anyone.

        Holds the entry's envelope, its signer's and the checkpoint signer's
        public keys, the newest checkpoint that covers the entry, and the RFC 9162
        inclusion proof against that checkpoint. Check it with
        :func:`registry.proofs.check_proof_bundle`.

        Raises:
            RegistryError: no such entry, or no checkpoint covers it yet.
        """
        entry = self.entry(entry_index)
        cp = self.latest_checkpoint(entry_index + 1)
        if cp is None:
            raise RegistryError(
                f"no checkpoint covers log entry {entry_index}", hint="run `wm audit checkpoint`"
            )
        proof = self.inclusion_proof(entry_index, cp.size)
        entry_owner, entry_pub = self.owner_public_key(entry.key_id)
        cp_owner, cp_pub = self.owner_public_key(cp.signer_key_id)
        from registry.proofs import PROOF_BUNDLE_TYPE, public_key_b64

        return {
            "type": PROOF_BUNDLE_TYPE,
            "entry": entry.envelope,
            "inclusion": proof.to_dict(),
            "checkpoint": cp.note,
            "tsa_token": b64e(cp.tsa_token) if cp.tsa_token else None,
            "keys": {
                "entry": {"name": entry_owner, "public_key": public_key_b64(entry_pub)},
                "checkpoint": {"name": cp_owner, "public_key": public_key_b64(cp_pub)},
            },
        }

    # ---------------------------------------------------------------- audit

    def verify_log(self, *, tsa_ca_pem: bytes | None = None) -> LogReport:
        """Recompute every leaf, signature, root and checkpoint; raise on the first fault.

        Walks the log in order. Each entry must sit at the index it signed,
        follow the root it signed, carry a valid signature by a key that an
        earlier owner entry introduced (owner entries sign themselves), and have
        the stored leaf hash. Then the log head, every checkpoint (signature,
        root at its size, consistency with the next, RFC 3161 token) and the
        record tables are checked against the log.

        Args:
            tsa_ca_pem: trust anchor for RFC 3161 tokens; without it a token's
                signature and imprint are checked but not who issued its certificate.

        Raises:
            IntegrityError: naming the first broken entry (``log entry N: ...``),
                checkpoint or record row.
        """
        walker = _LogWalker(self.origin)
        with self._reading() as s:
            checkpoints = list(
                s.scalars(select(CheckpointRow).order_by(CheckpointRow.size, CheckpointRow.id))
            )
            walker.want_roots = {c.size for c in checkpoints}
            table = LogEntryRow.__table__
            result = (
                s.connection().execution_options(yield_per=2000).execute(select(table).order_by(table.c.idx))
            )
            for row in result:
                walker.add(row._mapping)
            head = s.get(LogHead, 1)
            assert head is not None
            if head.size > walker.size:
                raise IntegrityError(
                    f"log entry {walker.size}: missing (the log head counts {head.size} entries)"
                )
            if head.size != walker.size or head.root != walker.root:
                raise IntegrityError(
                    f"log head: says {head.size} entries with another root than the "
                    f"{walker.size} entries in the log"
                )
            timestamps = _check_checkpoints(walker, checkpoints, tsa_ca_pem)
            _check_tables(s, walker)
        return LogReport(walker.size, walker.root, len(checkpoints), timestamps)


def _reason(exc: SQLAlchemyError) -> str:
    orig = getattr(exc, "orig", None)
    text_ = str(orig if orig is not None else exc).strip()
    return text_.splitlines()[0] if text_ else type(exc).__name__


def _entry(row: LogEntryRow) -> LogEntry:
    return LogEntry(
        index=row.idx,
        payload_type=row.payload_type,
        key_id=row.key_id,
        payload=bytes(row.payload),
        signatures=LogEntry.signatures_from_text(row.signatures),
        leaf_hash=bytes(row.leaf_hash),
    )


def _model_info(r: ModelRow) -> ModelInfo:
    return ModelInfo(
        name=r.name,
        owner_key_id=r.owner_key_id,
        file_sha256=r.file_sha256,
        weights_sha256=r.weights_sha256,
        arch=r.arch,
        input_shape=tuple(json.loads(r.input_shape)) if r.input_shape else None,
        num_classes=r.num_classes,
        entry_index=r.entry_idx,
    )


class _LogWalker:
    """Replays the log entry by entry, checking each against what came before."""

    def __init__(self, origin: str) -> None:
        self.origin = origin
        self.size = 0
        self.frontier: list[bytes] = []
        self.root = merkle.EMPTY_ROOT
        self.hashes: list[bytes] = []
        self.keys: dict[str, tuple[str, Ed25519PublicKey]] = {}
        self.want_roots: set[int] = set()
        self.roots: dict[int, bytes] = {0: merkle.EMPTY_ROOT}
        # Records of the registry's own types, by entry index, to check the tables against.
        self.records: dict[int, tuple[str, str, dict[str, Any]]] = {}

    def add(self, row: Any) -> None:
        p = self.size
        if row["idx"] != p:
            raise IntegrityError(f"log entry {p}: missing (the next stored entry is {row['idx']})")
        try:
            leaf, ptype, kid, record = self._check(row, p)
        except IntegrityError as exc:
            raise IntegrityError(f"log entry {p}: {exc}") from exc
        self.hashes.append(leaf)
        self.frontier = push_frontier(self.frontier, p, leaf)
        self.size = p + 1
        self.root = fold_frontier(self.frontier)
        if self.size in self.want_roots:
            self.roots[self.size] = self.root
        if ptype in RESERVED_TYPES:
            self.records[p] = (ptype, kid, record)

    def _check(self, row: Any, p: int) -> tuple[bytes, str, str, dict[str, Any]]:
        ptype, kid = row["payload_type"], row["key_id"]
        body = bytes(row["payload"])
        envelope = {
            "payloadType": ptype,
            "payload": b64e(body),
            "signatures": list(LogEntry.signatures_from_text(row["signatures"])),
        }
        if kid in self.keys:
            public = self.keys[kid][1]
        elif ptype == OWNER_TYPE:
            rec = dsse.payload_of(envelope).get("record")
            raw = b64d(rec.get("public_key", ""), what="owner public key") if isinstance(rec, dict) else b""
            try:
                public = Ed25519PublicKey.from_public_bytes(raw)
            except ValueError as exc:
                raise IntegrityError("owner entry holds no valid Ed25519 public key") from exc
            if key_id_of(public) != kid:
                raise IntegrityError("owner entry is not signed by the key it introduces")
        else:
            raise IntegrityError(f"signed by key {kid[:16]}, which no earlier owner entry introduces")
        statement = dsse.verify_envelope(envelope, public, payload_type=ptype)
        log = statement.get("log")
        if not isinstance(log, dict) or log.get("origin") != self.origin:
            raise IntegrityError("belongs to another log (origin differs)")
        if log.get("index") != p:
            raise IntegrityError(f"signed as entry {log.get('index')} (rows moved, inserted or deleted)")
        if log.get("prev_root") != b64e(self.root):
            raise IntegrityError("does not follow the entries before it (its signed previous root differs)")
        leaf = merkle.leaf_hash(dsse.envelope_bytes(envelope))
        if bytes(row["leaf_hash"]) != leaf:
            raise IntegrityError("stored leaf hash does not match the entry")
        record = statement.get("record")
        if not isinstance(record, dict):
            raise IntegrityError("payload has no record")
        if ptype == OWNER_TYPE:
            name = record.get("name")
            if record.get("key_id") != kid or not isinstance(name, str):
                raise IntegrityError("owner entry is malformed")
            self.keys[kid] = (name, public)
        return leaf, ptype, kid, record


def _check_checkpoints(
    walker: _LogWalker, checkpoints: Sequence[CheckpointRow], tsa_ca_pem: bytes | None
) -> int:
    timestamps = 0
    previous: Checkpoint | None = None
    for c in checkpoints:
        where = f"checkpoint {c.id} (size {c.size})"
        if c.size > walker.size:
            raise IntegrityError(f"log entry {walker.size}: missing ({where} covers {c.size} entries)")
        signer = walker.keys.get(c.signer_key_id)
        if signer is None:
            raise IntegrityError(f"{where}: signed by a key no owner entry introduces")
        try:
            state = verify_checkpoint(c.note, signer[0], signer[1], origin=walker.origin)
        except IntegrityError as exc:
            raise IntegrityError(f"{where}: {exc}") from exc
        if state.size != c.size or state.root != c.root:
            raise IntegrityError(f"{where}: stored size or root differs from its signed note")
        if walker.roots.get(c.size) != state.root:
            raise IntegrityError(
                f"{where}: its signed root is not the root of the log's first {c.size} entries"
            )
        if previous is not None and previous.size > 0:
            proof = merkle.consistency_proof(walker.hashes[: state.size], previous.size)
            try:
                merkle.verify_consistency(previous.size, state.size, proof, previous.root, state.root)
            except IntegrityError as exc:
                raise IntegrityError(f"{where}: not consistent with the checkpoint before: {exc}") from exc
        if c.tsa_token is not None:
            from registry import tsa

            try:
                tsa.verify_timestamp(c.tsa_token, c.note.encode("utf-8"), ca_pem=tsa_ca_pem)
            except IntegrityError as exc:
                raise IntegrityError(f"{where}: time-stamp token: {exc}") from exc
            timestamps += 1
        previous = state
    return timestamps


def _check_tables(s: Session, walker: _LogWalker) -> None:
    """Each index-table row must say what its log entry says (and vice versa)."""

    def logged(index: int, ptype: str, what: str) -> tuple[str, dict[str, Any]]:
        found = walker.records.get(index)
        if found is None or found[0] != ptype:
            raise IntegrityError(f"{what}: its log entry {index} is not a {ptype} record")
        return found[1], found[2]

    counts = {t: 0 for t in RESERVED_TYPES}
    for ptype, _, _ in walker.records.values():
        counts[ptype] += 1
    for o in s.scalars(select(OwnerRow)):
        kid, rec = logged(o.entry_idx, OWNER_TYPE, f"owner {o.name!r}")
        pem_kid = key_id_of(public_key_from_pem(o.public_key_pem))
        if kid != o.key_id or rec.get("name") != o.name or pem_kid != o.key_id:
            raise IntegrityError(f"owner {o.name!r}: row does not match log entry {o.entry_idx}")
    models = {}
    for m in s.scalars(select(ModelRow)):
        models[m.id] = m.name
        kid, rec = logged(m.entry_idx, MODEL_TYPE, f"model {m.name!r}")
        row = {
            "name": m.name,
            "file_sha256": m.file_sha256,
            "weights_sha256": m.weights_sha256,
            "arch": m.arch,
            "input_shape": json.loads(m.input_shape) if m.input_shape else None,
            "num_classes": m.num_classes,
        }
        if kid != m.owner_key_id or rec != row:
            raise IntegrityError(f"model {m.name!r}: row does not match log entry {m.entry_idx}")
    for p in s.scalars(select(ProbeSetRow)):
        kid, rec = logged(p.entry_idx, PROBESET_TYPE, f"probe set {p.entry_idx}")
        ok = (
            kid == p.sealed_by
            and rec.get("model") == models.get(p.model_id)
            and rec.get("kind") == p.kind
            and rec.get("scheme") == p.scheme
            and rec.get("size") == p.size
            and rec.get("root") == p.root.hex()
            and canonical_json(rec.get("null")).decode() == p.null_model
            and rec.get("sealed_probes_sha256") == hashlib.sha256(p.sealed_probes).hexdigest()
            and rec.get("sealed_key_sha256")
            == (hashlib.sha256(p.sealed_key).hexdigest() if p.sealed_key is not None else None)
        )
        if not ok:
            raise IntegrityError(f"probe set {p.entry_idx}: row does not match its log entry")
    for sp in s.scalars(select(SpendRow)):
        _, rec = logged(sp.entry_idx, SPEND_TYPE, f"spend of probe {sp.probe_index}")
        if rec.get("probeset") != sp.probeset_id or sp.probe_index not in rec.get("indices", []):
            raise IntegrityError(
                f"spend of probe {sp.probe_index} of set {sp.probeset_id}: "
                f"not what log entry {sp.entry_idx} says"
            )
    for v in s.scalars(select(VerificationRow)):
        _, rec = logged(v.entry_idx, VERIFICATION_TYPE, f"verification {v.id}")
        if rec.get("suspect") != v.suspect or rec.get("verdict") != v.verdict:
            raise IntegrityError(f"verification {v.id}: row does not match log entry {v.entry_idx}")
    rows = {
        OWNER_TYPE: s.scalar(select(func.count()).select_from(OwnerRow)),
        MODEL_TYPE: s.scalar(select(func.count()).select_from(ModelRow)),
        PROBESET_TYPE: s.scalar(select(func.count()).select_from(ProbeSetRow)),
        VERIFICATION_TYPE: s.scalar(select(func.count()).select_from(VerificationRow)),
    }
    for ptype, n in rows.items():
        if n != counts[ptype]:
            raise IntegrityError(f"the log holds {counts[ptype]} {ptype} records but the table {n}")
