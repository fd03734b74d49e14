"""Batched appends on PostgreSQL: writers queue their records, the log's lock holder appends them all.

Every entry signs its own index and the root before it, so an entry can only
be signed by a writer that holds the log head. With one commit (one WAL
flush) per append, writers queued on that lock append no faster than one, and
slower once they contend. Here a writer that finds the head free appends at
once (after any queued records), so one writer alone pays nothing for the
queue. One that finds it held queues its record in ``append_queue`` (a
commit that need not reach the disk: nothing is acknowledged until the log
entry is durable) and waits for the holder with ``FOR SHARE``, which the
waiters share: the holder appends every queued record of its owner, oldest
first, in one transaction and one durable commit (group commit, after
Trillian's sequencer), and the writers it served wake together and take their
tickets back, each in one round trip, without taking the head in turn. A
record queued too late for that batch is appended by the next holder: the
waiters try the head without waiting, and the first to get it appends the
queue.

A queued record carries an HMAC-SHA256 over its DSSE PAE under a key derived
from the owner's private key, so whoever can write to the database cannot
have an owner sign a record the owner never queued: the appender refuses a
row whose MAC fails and the writer that queued it gets an
:class:`~core.errors.IntegrityError`. Records are appended in queue order,
so each writer's records keep their order; none is lost (a record is
acknowledged only once its entry is committed) or appended twice (the
writer's queue row holds the index it was given, under the lock).
"""

from __future__ import annotations

import hashlib
import hmac
from typing import TYPE_CHECKING, Any

import psycopg
from sqlalchemy import Connection, bindparam, delete, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from core.canonical import canonical_json, parse_json
from core.errors import IntegrityError, RegistryError
from registry.db import redact
from registry.dsse import pae
from registry.keys import OwnerKey
from registry.schema import AppendQueueRow

if TYPE_CHECKING:
    from registry.store import LogStore

__all__ = ["QUEUE_BATCH", "append_queued"]

QUEUE_BATCH = 512  # most records appended in one transaction
_INFO = b"wm.registry.append-queue/v1"
_SWEEPS = 3  # looks at the queue per append transaction
_TRIES = 3  # rounds of waiting for a batch before a writer queues for the head
# A ticket, not yet a record: its commit need not reach the disk (set_config(..., true)
# is SET LOCAL, here in the same statement, so the same round trip, as the insert).
_QUEUE = (
    "WITH not_durable AS (SELECT set_config('synchronous_commit', 'off', true)) "
    "INSERT INTO append_queue (key_id, payload_type, payload, mac) "
    "SELECT %s, %s, %s, %s FROM not_durable RETURNING id"
)
_QUEUED = (
    select(AppendQueueRow)
    .where(AppendQueueRow.key_id == bindparam("key_id"), AppendQueueRow.idx.is_(None))
    .order_by(AppendQueueRow.id)
    .limit(QUEUE_BATCH)
)
_QUEUED_ID = select(AppendQueueRow.id).where(AppendQueueRow.id == bindparam("qid"))
_TAKEN = (
    delete(AppendQueueRow)
    .where(AppendQueueRow.id == bindparam("qid"), AppendQueueRow.idx.is_not(None))
    .returning(AppendQueueRow.idx)
)


def _mac(key: bytes, payload_type: str, body: bytes) -> bytes:
    return hmac.new(key, pae(payload_type, body), hashlib.sha256).digest()


def append_queued(store: LogStore, owner_key: OwnerKey, payload_type: str, payload: dict[str, Any]) -> int:
    """Queue ``payload`` and see it appended (by this writer or another of its owner); its index.

    Raises:
        IntegrityError: the queued row was altered before it was appended.
        RegistryError: the database refused or is unreachable.
    """
    mac_key = owner_key.derive_key(_INFO)
    try:
        conn = store._writer.connect()  # one connection (one pool check-out) for every step
    except OperationalError as exc:
        raise RegistryError(f"registry {redact(store.url)}: {_reason(exc)}") from exc
    with conn:
        # Alone, a writer tries the head straight away; once it has found the head held, it
        # first looks (one round trip, cheaper than a session) until it gets the head again.
        if not store._contended or _one_round_trip(store, conn, _HEAD_HELD) is None:
            with store._writer_session(wait=False, bind=conn) as (s, held):
                store._contended = not held
                if held:  # nobody else holds the log: append now, after what others queued
                    store._ensure_owner(s, owner_key)
                    _append_queue(store, s, owner_key, mac_key)
                    return store._append(s, owner_key, payload_type, payload)
        body = canonical_json(payload)
        row = _one_round_trip(store, conn, _QUEUE,
                              (owner_key.key_id, payload_type, body, _mac(mac_key, payload_type, body)))
        assert row is not None
        qid = int(row[0])
        index = _appended(store, conn, owner_key, mac_key, qid)
    if index < 0:
        raise IntegrityError("the queued record was altered in the database before it was appended")
    return index


def _appended(store: LogStore, conn: Connection, owner_key: OwnerKey, mac_key: bytes, qid: int) -> int:
    """Wait until ticket ``qid`` is appended, appending the queue when the head is free; its index.

    A writer waits for the head's holder with ``FOR SHARE``, which the waiters
    share, so every writer whose record that holder appended wakes at once and
    takes its ticket back without taking the head in turn. One whose record
    came too late for that batch looks whether the head is free (one round
    trip, no lock kept): if it is, it tries to take it without waiting and
    appends the queue; if another writer has it, it waits for that one. After
    :data:`_TRIES` such rounds a writer queues for the head like any other, so
    it cannot be passed over for ever (each holder appends up to
    :data:`QUEUE_BATCH` records, oldest first).
    """
    take = (
        "SELECT 1 FROM log_head WHERE id = 1 FOR SHARE; "  # shared with the other waiters
        "SET LOCAL synchronous_commit TO OFF; "  # it only takes its ticket back
        f"DELETE FROM append_queue WHERE id = {int(qid)} AND idx IS NOT NULL RETURNING idx"
    )
    attempt = 0
    while True:
        row = _one_round_trip(store, conn, take)
        if row is not None:
            return int(row[0])
        if attempt < _TRIES and _one_round_trip(store, conn, _HEAD_HELD) is not None:
            attempt += 1
            continue  # another writer holds the head: wait for it
        with store._writer_session(wait=attempt >= _TRIES, bind=conn) as (s, held):
            if held:
                store._ensure_owner(s, owner_key)
                _append_queue(store, s, owner_key, mac_key)
                index = s.execute(_TAKEN, {"qid": qid}).scalar()
                if index is not None:
                    return int(index)
                if s.execute(_QUEUED_ID, {"qid": qid}).first() is None:  # else it waits for ever
                    raise IntegrityError("the queued record was removed from the database before it "
                                         "was appended")
        attempt += 1


# Whether another writer holds the head (a row), without waiting or keeping a lock.
_HEAD_HELD = (
    "BEGIN; "
    "SELECT 1 WHERE NOT EXISTS (SELECT 1 FROM log_head WHERE id = 1 FOR UPDATE SKIP LOCKED); "
    "ROLLBACK"
)


def _one_round_trip(store: LogStore, conn: Connection, query: str,
                    params: tuple[Any, ...] | None = None) -> tuple[Any, ...] | None:
    """Run ``query`` in one round trip, outside any transaction of SQLAlchemy's; the first row
    of the last result that has rows, or None.

    Without ``params`` it goes as one simple query, whose statements
    PostgreSQL runs as one implicit transaction (unless they say ``BEGIN``),
    each with a fresh snapshot, so a statement after a lock wait sees what the
    writer it waited for committed. With ``params`` it is one statement.
    """
    raw = conn.connection.driver_connection
    assert raw is not None
    row: tuple[Any, ...] | None = None
    try:
        raw.autocommit = True
        try:
            with raw.cursor() as cur:
                cur.execute(query, params)
                while True:
                    if cur.pgresult is not None and cur.pgresult.status == psycopg.pq.ExecStatus.TUPLES_OK:
                        row = cur.fetchone()
                    if not cur.nextset():
                        break
        finally:
            if not raw.closed:
                raw.autocommit = False
    except psycopg.Error as exc:
        conn.invalidate()
        raise RegistryError(f"registry {redact(store.url)}: {str(exc).strip().splitlines()[0]}") from exc
    return row


def _reason(exc: OperationalError) -> str:
    from registry.store import db_reason

    return db_reason(exc)


def _append_queue(store: LogStore, s: Session, owner_key: OwnerKey, mac_key: bytes) -> None:
    """Append the owner's queued records, oldest first (inside the writer transaction).

    Looks again before the commit for records queued meanwhile (up to
    :data:`_SWEEPS` times), so that their writers, waiting for this one,
    find them appended instead of having to take the head next.
    """
    for _ in range(_SWEEPS):
        rows = s.scalars(_QUEUED, {"key_id": owner_key.key_id}).all()  # flushes the last sweep
        if not rows:
            return
        for r in rows:
            body = bytes(r.payload)
            r.idx = -1  # refused unless it is the owner's, intact
            if hmac.compare_digest(bytes(r.mac), _mac(mac_key, r.payload_type, body)):
                record = parse_json(body, what="a queued record")  # the owner's own canonical JSON
                r.idx = store._append(s, owner_key, r.payload_type, record)
