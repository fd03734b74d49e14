"""The log store: an append-only RFC 6962 Merkle log of DSSE-signed entries, over SQL.

:class:`LogStore` owns the database (SQLite file or PostgreSQL, migrated on
open), the writer transaction that serialises appends, the tree (its right
edge as a :class:`core.merkle.CompactRange` in ``log_head``, every interior
node in ``merkle_nodes``) and the C2SP signed checkpoints (:mod:`registry.note`).
Every entry is a statement binding the record to its place in the log
(:mod:`registry.records`)::

    {"log": {"origin": O, "index": i, "prev_root": base64(root of entries < i),
             "probesets": number of probe-set entries < i},
     "record": {...}, "signed_at": "2026-01-01T00:00:00.000Z"}

Inclusion and consistency proofs (RFC 9162 sections 2.1.3 and 2.1.4) read the
O(log n) stored subtrees that tile the proof's ranges, not every leaf.
:class:`registry.log.Registry` adds the domain records on top.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any, Self

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import Connection, Engine, select
from sqlalchemy.exc import IntegrityError as SqlIntegrityError
from sqlalchemy.exc import OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session

from core import merkle
from core.canonical import b64d, b64e
from core.clock import utc_now
from core.errors import InputError, RegistryError
from registry import dsse
from registry.db import WRITE_OPTION, WriterLock, create_registry_engine, migrate, redact, sqlite_path
from registry.keys import OwnerKey, public_key_from_pem
from registry.note import Checkpoint, sign_checkpoint
from registry.records import (
    OWNER_TYPE,
    PROBESET_TYPE,
    CheckpointInfo,
    ConsistencyProof,
    InclusionProof,
    LogEntry,
    OwnerInfo,
)
from registry.schema import CheckpointRow, LogEntryRow, LogHead, MerkleNodeRow, OwnerRow

_HEAD_IF_FREE = select(LogHead).where(LogHead.id == 1).with_for_update(skip_locked=True)

__all__ = ["LogStore"]


class LogStore:
    """The signed, append-only log in a database; see the module docstring.

    Open with :meth:`open`; use as a context manager or call :meth:`close`.
    """

    def __init__(self, engine: Engine, url: str) -> None:
        self._engine = engine
        self._writer = engine.execution_options(**{WRITE_OPTION: True})
        self.url = url
        self._pg = engine.dialect.name == "postgresql"
        path = sqlite_path(url)
        self._lock = WriterLock(path) if path is not None else None
        self._owners: dict[str, int] = {}
        self._contended = False  # the last append found the head held (a hint for the sequencer)
        with self._reading() as s:
            head = s.get(LogHead, 1)
            if head is None:
                raise RegistryError(f"registry {redact(url)} has no log head")
            self.origin: str = head.origin

    # ---------------------------------------------------------------- lifecycle

    @classmethod
    def open(cls, url: str, *, create: bool = True) -> Self:
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

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _reading(self) -> Iterator[Session]:
        try:
            with Session(self._engine, expire_on_commit=False) as s, s.begin():
                yield s
        except OperationalError as exc:
            raise RegistryError(f"registry {redact(self.url)}: {db_reason(exc)}") from exc

    @contextmanager
    def _writing(self) -> Iterator[Session]:
        """One writer transaction; appends are serialised by the lock it takes first."""
        with self._writer_session(wait=True) as (s, _):
            yield s

    @contextmanager
    def _writer_session(
        self, *, wait: bool, bind: Connection | None = None
    ) -> Iterator[tuple[Session, bool]]:
        """A writer transaction and whether it holds the log head (always, unless ``wait=False``
        on PostgreSQL finds another writer holding it); on ``bind`` if given, else on a
        connection from the pool."""
        try:
            with (
                self._lock.held() if self._lock is not None else nullcontext(),
                Session(bind if bind is not None else self._writer, expire_on_commit=False) as s,
                s.begin(),
            ):
                # PostgreSQL: the row lock on the head serialises writers (SQLite: BEGIN
                # IMMEDIATE), so every check-then-insert in the transaction is race-free.
                if self._pg and not wait:
                    held = s.scalar(_HEAD_IF_FREE) is not None
                else:
                    held = s.get(LogHead, 1, with_for_update=self._pg) is not None
                yield s, held
            self._owners.update(s.info.get("owners", {}))  # only once committed
        except SqlIntegrityError as exc:
            raise RegistryError(f"registry refused the write: {db_reason(exc)}") from exc
        except OperationalError as exc:
            raise RegistryError(f"registry {redact(self.url)}: {db_reason(exc)}") from exc

    # ---------------------------------------------------------------- appending

    def _append(self, s: Session, key: OwnerKey, payload_type: str, record: dict[str, Any]) -> int:
        """Sign ``record`` at the end of the log; inside :meth:`_writing`. Its index."""
        head = s.get(LogHead, 1)  # loaded under the writer lock by _writing()
        assert head is not None
        index = head.size
        statement = {
            "log": {
                "origin": head.origin,
                "index": index,
                "prev_root": b64e(head.root),
                "probesets": head.probesets,
            },
            "record": record,
            "signed_at": utc_now(),
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
        tree = merkle.CompactRange.from_bytes(index, head.frontier)
        for (level, end), node in tree.append(leaf):
            s.add(MerkleNodeRow(end_idx=end, level=level, hash=node))
        head.size = tree.size
        head.frontier = tree.to_bytes()
        head.root = tree.root()
        head.probesets += payload_type == PROBESET_TYPE
        return index

    def _ensure_owner(self, s: Session, key: OwnerKey) -> int:
        """The index of the entry that introduces ``key``, appending it (self-signed) if none does."""
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
        s.info.setdefault("owners", {})[key.key_id] = index
        return index

    def add_owner(self, key: OwnerKey) -> int:
        """Introduce ``key``'s owner to the log (self-signed); idempotent. The entry index."""
        with self._writing() as s:
            return self._ensure_owner(s, key)

    # ---------------------------------------------------------------- reading

    def size(self) -> int:
        """Number of entries in the log."""
        with self._reading() as s:
            head = s.get(LogHead, 1)
            assert head is not None
            return head.size

    def root(self, size: int | None = None) -> bytes:
        """The RFC 6962 root of the first ``size`` entries (default: all)."""
        with self._reading() as s:
            head = s.get(LogHead, 1)
            assert head is not None
            if size is None:
                return head.root
            self._check_size(size, head.size)
            ids = merkle.perfect_subtrees(0, size)
            nodes = self._nodes(s, ids)
        return merkle.fold_subtrees([nodes[i] for i in ids])

    @staticmethod
    def _check_size(size: int, have: int) -> None:
        if not 0 <= size <= have:
            raise InputError(f"the log has {have} entries, not {size}")

    def _nodes(self, s: Session, ids: Iterable[merkle.NodeId]) -> dict[merkle.NodeId, bytes]:
        """The stored subtree roots ``ids`` (leaves from the entries, the rest from merkle_nodes)."""
        want = set(ids)
        leaves = [end - 1 for level, end in want if level == 0]
        inner = [(end, level) for level, end in want if level > 0]
        found: dict[merkle.NodeId, bytes] = {}
        if leaves:
            q = select(LogEntryRow.idx, LogEntryRow.leaf_hash).where(LogEntryRow.idx.in_(leaves))
            found.update({(0, i + 1): bytes(h) for i, h in s.execute(q)})
        if inner:
            # By end_idx alone (the primary key's first column): SQLite scans the whole
            # table for a row-value IN. A few more rows come back (nodes ending at the same
            # leaf on other levels) and are dropped here.
            wanted = set(inner)
            ends = sorted({end for end, _ in inner})
            q2 = select(MerkleNodeRow.end_idx, MerkleNodeRow.level, MerkleNodeRow.hash).where(
                MerkleNodeRow.end_idx.in_(ends)
            )
            found.update(
                {(level, end): bytes(h) for end, level, h in s.execute(q2) if (end, level) in wanted}
            )
        if len(found) != len(want):
            missing = min(want - found.keys())
            raise RegistryError(f"the log store lacks the tree node {missing} (run `wm audit verify`)")
        return found

    def _range_hashes(self, ranges: list[tuple[int, int]], size: int) -> tuple[list[bytes], bytes]:
        """Subtree hashes of ``ranges`` and the root of the first ``size`` entries, from stored nodes."""
        plans = [merkle.perfect_subtrees(lo, hi) for lo, hi in ranges]
        prefix = merkle.perfect_subtrees(0, size)
        with self._reading() as s:
            head = s.get(LogHead, 1)
            assert head is not None
            self._check_size(size, head.size)
            nodes = self._nodes(s, [i for plan in (*plans, prefix) for i in plan])
        hashes = [merkle.fold_subtrees([nodes[i] for i in plan]) for plan in plans]
        return hashes, merkle.fold_subtrees([nodes[i] for i in prefix])

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
            return [entry_of(r) for r in s.scalars(q)]

    def entry(self, index: int) -> LogEntry:
        """One log entry; :class:`RegistryError` if there is none at ``index``."""
        with self._reading() as s:
            row = s.get(LogEntryRow, index)
            if row is None:
                raise RegistryError(f"no log entry {index}")
            return entry_of(row)

    # ---------------------------------------------------------------- proofs

    def inclusion_proof(self, entry_index: int, tree_size: int | None = None) -> InclusionProof:
        """RFC 9162 inclusion proof of an entry in the tree of ``tree_size`` (default: all)."""
        size = self.size() if tree_size is None else tree_size
        if not 0 <= entry_index < size:
            raise InputError(f"log entry {entry_index} is not in a tree of {size} entries")
        ranges = merkle.inclusion_ranges(entry_index, size)
        hashes, root = self._range_hashes([(entry_index, entry_index + 1), *ranges], size)
        return InclusionProof(
            index=entry_index, tree_size=size, leaf_hash=hashes[0], hashes=tuple(hashes[1:]), root=root
        )

    def consistency_proof(self, size1: int, size2: int | None = None) -> ConsistencyProof:
        """RFC 9162 consistency proof from the tree of ``size1`` to that of ``size2``."""
        size2 = self.size() if size2 is None else size2
        if not 0 < size1 <= size2:
            raise InputError(f"no consistency proof from size {size1} to size {size2}")
        hashes, root2 = self._range_hashes(merkle.consistency_ranges(size1, size2), size2)
        root1 = self.root(size1)
        return ConsistencyProof(size1=size1, size2=size2, root1=root1, root2=root2, hashes=tuple(hashes))

    # ---------------------------------------------------------------- owners

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

    # ---------------------------------------------------------------- checkpoints

    def checkpoint(
        self,
        owner_key: OwnerKey,
        *,
        tsa_url: str | None = None,
        witnesses: Sequence[str] = (),
        timeout: float = 30.0,
    ) -> CheckpointInfo:
        """Sign the log's current state as a C2SP checkpoint, get it time-stamped and cosigned, store it.

        Args:
            owner_key: signs the checkpoint (its owner name is the note key name).
            tsa_url: when given, an RFC 3161 time-stamping authority asked to stamp
                the checkpoint's body; its token is stored beside the note.
            witnesses: URLs of C2SP tlog-witness witnesses (submission prefixes);
                each one's cosignature lines are added to the note.
            timeout: seconds to wait for each authority or witness.

        Raises:
            RegistryError: an authority or witness is unreachable or refuses.
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

            token = tsa.request_timestamp(tsa_url, state.body().encode("utf-8"), timeout=timeout)
        if witnesses:
            from registry.witness import request_cosignatures

            note = request_cosignatures(self, note, state, witnesses, timeout=timeout)
        self._store_checkpoint(note, state.size, state.root, owner_key.key_id, token)
        cp = self.latest_checkpoint(state.size, signer=owner_key.key_id)
        assert cp is not None
        return cp

    def proof_bundle(self, entry_index: int) -> dict[str, Any]:
        """A self-contained inclusion proof for one entry, checkable by anyone offline.

        Holds the entry's envelope, the newest checkpoint its own signer signed
        that covers it (with any witness cosignatures and RFC 3161 token), the
        RFC 9162 inclusion proof against that checkpoint, the checkpoint's last
        entry with its proof (it signs the log's count of probe sets), and the
        public keys.
        Check it with :func:`registry.proofs.check_proof_bundle`, against a key
        the checker pinned.

        Raises:
            RegistryError: no such entry, or no checkpoint by its signer covers it yet.
        """
        from registry.proofs import PROOF_BUNDLE_TYPE, public_key_b64

        entry = self.entry(entry_index)
        cp = self.latest_checkpoint(entry_index + 1, signer=entry.key_id)
        if cp is None:
            raise RegistryError(
                f"no checkpoint covers log entry {entry_index}", hint="run `wm audit checkpoint`"
            )
        proof = self.inclusion_proof(entry_index, cp.size)
        name, public = self.owner_public_key(entry.key_id)
        tail = self.entry(cp.size - 1)
        return {
            "type": PROOF_BUNDLE_TYPE,
            "entry": entry.envelope,
            "inclusion": proof.to_dict(),
            "checkpoint": cp.note,
            "tsa_token": b64e(cp.tsa_token) if cp.tsa_token else None,
            "tail": {
                "entry": tail.envelope,
                "inclusion": self.inclusion_proof(tail.index, cp.size).to_dict(),
            },
            "keys": {
                "entry": {"name": name, "public_key": public_key_b64(public)},
                "checkpoint": {"name": name, "public_key": public_key_b64(public)},
            },
        }

    def _store_checkpoint(self, note: str, size: int, root: bytes, signer: str, token: bytes | None) -> None:
        with self._writing() as s:
            s.add(CheckpointRow(size=size, root=root, signer_key_id=signer, note=note, tsa_token=token))

    def checkpoints(self) -> list[CheckpointInfo]:
        """Every stored checkpoint, by size then id."""
        with self._reading() as s:
            rows = s.scalars(select(CheckpointRow).order_by(CheckpointRow.size, CheckpointRow.id))
            return [checkpoint_info(r) for r in rows]

    def latest_checkpoint(self, min_size: int = 0, *, signer: str | None = None) -> CheckpointInfo | None:
        """The largest checkpoint covering at least ``min_size`` entries (by ``signer``), if any."""
        q = select(CheckpointRow).where(CheckpointRow.size >= min_size)
        if signer is not None:
            q = q.where(CheckpointRow.signer_key_id == signer)
        with self._reading() as s:
            row = s.scalar(q.order_by(CheckpointRow.size.desc(), CheckpointRow.id.desc()).limit(1))
            return checkpoint_info(row) if row is not None else None


def db_reason(exc: SQLAlchemyError) -> str:
    """The first line of the database's own message, for one-line errors."""
    orig = getattr(exc, "orig", None)
    text_ = str(orig if orig is not None else exc).strip()
    return text_.splitlines()[0] if text_ else type(exc).__name__


def entry_of(row: LogEntryRow) -> LogEntry:
    """The :class:`LogEntry` of a stored row."""
    return LogEntry(
        index=row.idx,
        payload_type=row.payload_type,
        key_id=row.key_id,
        payload=bytes(row.payload),
        signatures=LogEntry.signatures_from_text(row.signatures),
        leaf_hash=bytes(row.leaf_hash),
    )


def checkpoint_info(row: CheckpointRow) -> CheckpointInfo:
    """The :class:`CheckpointInfo` of a stored row."""
    return CheckpointInfo(
        id=row.id,
        size=row.size,
        root=bytes(row.root),
        note=row.note,
        signer_key_id=row.signer_key_id,
        tsa_token=bytes(row.tsa_token) if row.tsa_token is not None else None,
    )
