"""Write-ahead journal of marked queries and its batched flush to the registry log.

Every marked answer is recorded before it leaves the guard: the record (the
input's keyed digest, the input sealed by :class:`guard.vault.InputVault`,
the returned label, the client's identity, the time) is appended to a local
JSON-lines journal and ``fsync``-ed, and only then is the answer sent. A
:class:`RegistryFlusher` thread appends the journal's records to the registry
log in batches, one signed entry (payload type :data:`GUARD_QUERIES_TYPE`)
per batch. A crash at any point loses nothing: on restart the journal is read
back (a torn last line, never acknowledged, is cut off), the registry is asked
how far this journal was flushed (the log is the cursor, so a batch is never
written twice), and the rest is flushed before the guard answers again.

One guard process owns a journal segment at a time (an exclusive ``flock``).
With several workers (``wm guard --workers N``) worker W writes segment W
(``journal-W.jsonl``): its own file, lock, journal id and sequence numbers.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import threading
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.canonical import b64d, b64e
from core.errors import InputError, IntegrityError, WmError
from core.files import write_atomic
from registry.keys import OwnerKey

__all__ = [
    "GUARD_QUERIES_TYPE",
    "GuardRecord",
    "Journal",
    "RegistryFlusher",
    "guard_entries",
]

GUARD_QUERIES_TYPE = "application/vnd.wm.guard-queries+json"
_JOURNAL_TYPE = "wm.guard-journal/v1"
_BATCH_TYPE = "wm.guard-queries/v1"
_COMPACT_EVERY = 4096
_SEGMENT = re.compile(r"^journal-(\d{1,4})\.jsonl$")


@dataclass(frozen=True)
class GuardRecord:
    """One marked query, as journaled and logged. The input is sealed, never plain.

    Attributes:
        seq: position in its journal (0, 1, 2, ...).
        digest: keyed digest of the input's canonical bytes (:meth:`guard.prf.Marker.digest`).
        label: the marked label that was returned.
        output: what the upstream answered (labels, probabilities or logits).
        client: the client's identity as the request headers gave it (pseudonymised credentials).
        time: when it was answered (UTC).
        epoch: the vault epoch (UTC day) whose key sealed the input.
        sealed_input: the input's canonical bytes, sealed.
        key_epoch: the guard epoch whose committed key marked the answer (:mod:`guard.epochs`).
    """

    seq: int
    digest: str
    label: int
    output: str
    client: str
    time: str
    epoch: str
    sealed_input: bytes
    key_epoch: int

    def to_dict(self) -> dict[str, Any]:
        """JSON form (journal line and registry payload)."""
        return {
            "seq": self.seq,
            "digest": self.digest,
            "label": self.label,
            "output": self.output,
            "client": self.client,
            "time": self.time,
            "epoch": self.epoch,
            "input_sealed": b64e(self.sealed_input),
            "key_epoch": self.key_epoch,
        }

    @classmethod
    def from_dict(cls, d: Any) -> GuardRecord:
        """Parse the JSON form; :class:`IntegrityError` if malformed."""
        try:
            return cls(
                seq=int(d["seq"]),
                digest=str(d["digest"]),
                label=int(d["label"]),
                output=str(d["output"]),
                client=str(d["client"]),
                time=str(d["time"]),
                epoch=str(d["epoch"]),
                sealed_input=b64d(d["input_sealed"], what="sealed guard input"),
                key_epoch=int(d["key_epoch"]),
            )
        except (KeyError, TypeError, ValueError, InputError) as exc:
            raise IntegrityError(f"malformed guard record: {exc}") from exc


class Journal:
    """The append-only, fsynced local journal of one model's marked queries.

    Args:
        directory: the guard's directory for the model (created with mode 0700).
        model: the model name, written in the journal header.
        segment: the worker's segment number (0 for a single guard process).

    Raises:
        InputError: another guard process holds this journal.
        IntegrityError: the journal is damaged other than by a torn last line.
    """

    def __init__(self, directory: Path, model: str, segment: int = 0) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path = self.directory / f"journal-{segment}.jsonl"
        self.model = model
        self.segment = segment
        self._lock = threading.Lock()
        self._lock_fd = os.open(self.directory / f"journal-{segment}.lock",
                                os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            os.close(self._lock_fd)
            raise InputError(
                f"another wm guard is already running for model {model!r} ({self.directory})"
            ) from exc
        self.journal_id, self._next_seq, self._records = self._load()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    @staticmethod
    def segments(directory: Path) -> list[int]:
        """The segment numbers of the journals in ``directory``, ascending."""
        if not Path(directory).is_dir():
            return []
        found = (_SEGMENT.match(p.name) for p in Path(directory).iterdir())
        return sorted(int(m.group(1)) for m in found if m)

    def _load(self) -> tuple[str, int, list[GuardRecord]]:
        if not self.path.exists():
            journal_id = uuid.uuid4().hex
            self._rewrite(journal_id, 0, [])
            return journal_id, 0, []
        data = self.path.read_bytes()
        good = data.rfind(b"\n") + 1
        if good < len(data):  # a torn last line: never fsynced, never acknowledged
            with open(self.path, "r+b") as f:
                f.truncate(good)
                f.flush()
                os.fsync(f.fileno())
        lines = data[:good].splitlines()
        if not lines:
            raise IntegrityError(f"guard journal {self.path} has no header")
        try:
            header = json.loads(lines[0])
            if header.get("type") != _JOURNAL_TYPE or header.get("model") != self.model:
                raise ValueError("not this model's guard journal")
            journal_id, next_seq = str(header["journal"]), int(header["next_seq"])
            records = [GuardRecord.from_dict(json.loads(line)) for line in lines[1:]]
        except (ValueError, KeyError, TypeError) as exc:
            raise IntegrityError(f"guard journal {self.path} is damaged: {exc}") from exc
        if records:
            next_seq = max(next_seq, records[-1].seq + 1)
        return journal_id, next_seq, records

    def _rewrite(self, journal_id: str, next_seq: int, records: Sequence[GuardRecord]) -> None:
        header = {"type": _JOURNAL_TYPE, "journal": journal_id, "model": self.model,
                  "next_seq": next_seq}
        body = json.dumps(header, sort_keys=True) + "\n"
        body += "".join(json.dumps(r.to_dict(), sort_keys=True) + "\n" for r in records)
        write_atomic(self.path, body.encode(), mode=0o600)

    def append(self, pending: Sequence[dict[str, Any]]) -> list[GuardRecord]:
        """Number, write and fsync records (each without ``seq``); returns them numbered.

        Returns only once the records are durable: the caller may then answer.
        """
        with self._lock:
            out = [GuardRecord(seq=self._next_seq + i, **p) for i, p in enumerate(pending)]
            data = "".join(json.dumps(r.to_dict(), sort_keys=True) + "\n" for r in out).encode()
            os.write(self._fd, data)
            os.fsync(self._fd)
            self._next_seq += len(out)
            self._records.extend(out)
            return out

    def records_after(self, seq: int) -> list[GuardRecord]:
        """Journaled records with a sequence number above ``seq``, in order."""
        with self._lock:
            return [r for r in self._records if r.seq > seq]

    @property
    def next_seq(self) -> int:
        """The sequence number the next record will get."""
        with self._lock:
            return self._next_seq

    def compact(self, flushed_seq: int) -> None:
        """Drop records already in the registry (``seq <= flushed_seq``) from the journal file."""
        with self._lock:
            keep = [r for r in self._records if r.seq > flushed_seq]
            if len(keep) == len(self._records):
                return
            self._rewrite(self.journal_id, self._next_seq, keep)
            os.close(self._fd)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND, 0o600)
            self._records = keep

    def close(self) -> None:
        """Release the file and the lock."""
        with self._lock:
            os.close(self._fd)
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)


def guard_entries(registry: Any, model: str | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(log index, payload)`` of every guard batch in the registry, optionally of one model."""
    for entry in registry.entries(payload_type=GUARD_QUERIES_TYPE):
        payload = entry.record
        if isinstance(payload, dict) and payload.get("type") == _BATCH_TYPE and (
            model is None or payload.get("model") == model
        ):
            yield entry.index, payload


class RegistryFlusher:
    """Flushes a journal to the registry log in batches, from a background thread.

    Args:
        registry_url: the registry to write to (opened in this object).
        owner_key: signs the log entries.
        journal: the journal to flush.
        batch_size: most records per log entry.
        interval: seconds between flushes.
    """

    def __init__(
        self,
        registry_url: str,
        owner_key: OwnerKey,
        journal: Journal,
        *,
        batch_size: int = 512,
        interval: float = 0.5,
    ) -> None:
        from registry.log import Registry

        self._registry = Registry.open(registry_url)
        self._owner_key = owner_key
        self.journal = journal
        self.batch_size = batch_size
        self.interval = interval
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._flush_lock = threading.Lock()
        self.flushed_seq = self._registry_cursor()
        self.last_error: str | None = None
        self._compacted = self.flushed_seq

    def _registry_cursor(self) -> int:
        last = -1
        for _, payload in guard_entries(self._registry, self.journal.model):
            if payload.get("journal") == self.journal.journal_id:
                last = max(last, int(payload.get("last", -1)))
        return last

    def flush(self) -> int:
        """Append every unflushed record to the registry now; how many were written."""
        with self._flush_lock:
            pending = self.journal.records_after(self.flushed_seq)
            written = 0
            for i in range(0, len(pending), self.batch_size):
                chunk = pending[i : i + self.batch_size]
                payload = {
                    "type": _BATCH_TYPE,
                    "model": self.journal.model,
                    "journal": self.journal.journal_id,
                    "first": chunk[0].seq,
                    "last": chunk[-1].seq,
                    "records": [r.to_dict() for r in chunk],
                }
                self._registry.append(self._owner_key, GUARD_QUERIES_TYPE, payload)
                self.flushed_seq = chunk[-1].seq
                written += len(chunk)
            return written

    def start(self) -> RegistryFlusher:
        """Flush what an earlier run left, compact the journal, then flush in the background."""
        self.flush()
        self.journal.compact(self.flushed_seq)
        self._compacted = self.flushed_seq
        self._thread = threading.Thread(target=self._run, name="wm-guard-flush", daemon=True)
        self._thread.start()
        return self

    def wake(self) -> None:
        """Ask for a flush soon (a full batch is waiting)."""
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.interval)
            self._wake.clear()
            try:
                self.flush()
                if self.flushed_seq - self._compacted >= _COMPACT_EVERY:
                    self.journal.compact(self.flushed_seq)
                    self._compacted = self.flushed_seq
                self.last_error = None
            except (WmError, OSError) as exc:  # keep journaling; retry next round
                self.last_error = f"{type(exc).__name__}: {exc}"

    def stop(self) -> None:
        """Stop the thread and flush what is left (raises if the registry refuses)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        try:
            self.flush()
        finally:
            self.close()

    def close(self) -> None:
        """Close the registry connection (after :meth:`stop`, or when no thread was started)."""
        self._registry.close()
