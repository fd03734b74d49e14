"""Batched appends on PostgreSQL: writers queue their records, the log's lock holder appends them all.

Every entry signs its own index and the root before it, so an entry can only
be signed by a writer that holds the log head. With one commit (one WAL
flush) per append, writers queued on that lock append no faster than one, and
slower once they contend. Here a writer first queues its record in
``append_queue`` (a short transaction whose commit need not reach the disk:
nothing is acknowledged until the log entry is durable), then takes the head
lock. If another writer holding the same owner key appended the record
meanwhile, the writer reads back its index and leaves; otherwise it appends
every queued record of its owner, oldest first, in one transaction and one
durable commit — group commit, after Trillian's sequencer. A writer that
finds the head free appends at once (after any queued records), so one
writer alone pays nothing for the queue.

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

from sqlalchemy import delete, insert, select, text
from sqlalchemy.orm import Session

from core.canonical import canonical_json, parse_json
from core.errors import IntegrityError
from registry.dsse import pae
from registry.keys import OwnerKey
from registry.schema import AppendQueueRow

if TYPE_CHECKING:
    from registry.store import LogStore

__all__ = ["QUEUE_BATCH", "append_queued"]

QUEUE_BATCH = 512  # most records appended in one transaction
_INFO = b"wm.registry.append-queue/v1"


def _mac(key: bytes, payload_type: str, body: bytes) -> bytes:
    return hmac.new(key, pae(payload_type, body), hashlib.sha256).digest()


def append_queued(store: LogStore, owner_key: OwnerKey, payload_type: str, payload: dict[str, Any]) -> int:
    """Queue ``payload`` and see it appended (by this writer or another of its owner); its index.

    Raises:
        IntegrityError: the queued row was altered before it was appended.
        RegistryError: the database refused or is unreachable.
    """
    mac_key = owner_key.derive_key(_INFO)
    with store._writer_session(wait=False) as (s, held):
        if held:  # nobody else holds the log: append now, after what others queued
            store._ensure_owner(s, owner_key)
            _append_queue(store, s, owner_key, mac_key)
            return store._append(s, owner_key, payload_type, payload)
        body = canonical_json(payload)
        s.execute(text("SET LOCAL synchronous_commit TO OFF"))  # a ticket, not yet a record
        qid = s.execute(
            insert(AppendQueueRow)
            .values(key_id=owner_key.key_id, payload_type=payload_type, payload=body,
                    mac=_mac(mac_key, payload_type, body))
            .returning(AppendQueueRow.id)
        ).scalar_one()
    taken = (
        delete(AppendQueueRow)
        .where(AppendQueueRow.id == qid, AppendQueueRow.idx.is_not(None))
        .returning(AppendQueueRow.idx)
    )
    index: int | None = None
    while index is None:
        with store._writing() as s:
            index = s.execute(taken).scalar()
            if index is None:
                store._ensure_owner(s, owner_key)
                _append_queue(store, s, owner_key, mac_key)
                index = s.execute(taken).scalar()
            else:
                s.execute(text("SET LOCAL synchronous_commit TO OFF"))  # it only took its ticket back
    if index < 0:
        raise IntegrityError("the queued record was altered in the database before it was appended")
    return index


def _append_queue(store: LogStore, s: Session, owner_key: OwnerKey, mac_key: bytes) -> None:
    """Append the owner's queued records, oldest first (inside the writer transaction)."""
    rows = s.scalars(
        select(AppendQueueRow)
        .where(AppendQueueRow.key_id == owner_key.key_id, AppendQueueRow.idx.is_(None))
        .order_by(AppendQueueRow.id)
        .limit(QUEUE_BATCH)
    ).all()
    for r in rows:
        body = bytes(r.payload)
        r.idx = -1  # refused unless it is the owner's, intact
        if hmac.compare_digest(bytes(r.mac), _mac(mac_key, r.payload_type, body)):
            record = parse_json(body, what="a queued record")  # the owner's own canonical JSON
            r.idx = store._append(s, owner_key, r.payload_type, record)
