"""The audit behind ``wm audit verify``: recompute the whole log and name the first fault.

:func:`verify_log` streams the log in batches and checks, entry by entry, that
each sits at the index it signed, follows the root it signed (the tree is
grown incrementally as a :class:`core.merkle.CompactRange`), carries the
running count of probe sets it signed, has a valid signature by a key an
earlier owner entry introduced (owner entries sign themselves) and the stored
leaf hash; every stored interior node must be the node the tree computes.
Then the log head, every checkpoint (its signature, and its root equal to the
root of the log's first ``size`` entries, which makes all of them mutually
consistent), each RFC 3161 token, and the record tables are checked against
the log.

Rollback and forks: the database can be rewritten wholesale by whoever
controls it (triggers dropped, rows and checkpoints deleted, head fixed), and
then the log is self-consistent. ``since`` is a checkpoint saved outside the
database earlier (``wm audit checkpoint --out FILE``): the log must still
contain that checkpoint's tree, or the audit fails naming a truncation (the
log is now shorter) or a fork (its first entries differ).
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from typing import TYPE_CHECKING, Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core import merkle
from core.canonical import b64d, b64e, canonical_json
from core.errors import InputError, IntegrityError
from registry import dsse
from registry.keys import key_id_of, public_key_from_pem
from registry.note import Checkpoint, parse_checkpoint, verify_checkpoint
from registry.records import (
    MODEL_TYPE,
    OWNER_TYPE,
    PROBESET_TYPE,
    RESERVED_TYPES,
    SPEND_TYPE,
    VERIFICATION_TYPE,
    LogEntry,
    LogReport,
)
from registry.schema import (
    CheckpointRow,
    LogEntryRow,
    LogHead,
    MerkleNodeRow,
    ModelRow,
    OwnerRow,
    ProbeSetRow,
    SpendRow,
    VerificationRow,
)

if TYPE_CHECKING:
    from registry.store import LogStore

__all__ = ["BATCH", "verify_log"]

BATCH = 4096  # entries read (and checked) per round trip


def verify_log(
    store: LogStore, *, tsa_ca_pem: bytes | None = None, since: str | None = None, workers: int = 1
) -> LogReport:
    """Recompute every leaf, signature, node, root and checkpoint; raise on the first fault.

    Args:
        store: an open registry.
        tsa_ca_pem: the pinned RFC 3161 authorities; without them tokens are
            counted as not checked (a token proves nothing without a pinned authority).
        since: a signed checkpoint note saved earlier; the log must extend it.
        workers: processes that verify Ed25519 signatures ahead of the sequential
            checks (1: none, all in this process). Worth it only with idle cores.

    Raises:
        IntegrityError: naming the first broken entry (``log entry N: ...``),
            node, checkpoint or record row, or the truncation or fork ``since`` shows.
    """
    walker = _LogWalker(store.origin)
    saved = _saved_checkpoint(since, store.origin) if since is not None else None
    with store._reading() as s:
        checkpoints = list(s.scalars(select(CheckpointRow).order_by(CheckpointRow.size, CheckpointRow.id)))
        walker.want_roots = {c.size for c in checkpoints} | ({saved.size} if saved else set())
        head = s.get(LogHead, 1)
        assert head is not None
        entries = LogEntryRow.__table__
        batches = _batches(s)
        if workers > 1:
            with _SignatureJobs(workers) as jobs:
                ahead = next(batches, None)
                pending = jobs.submit(ahead[0]) if ahead is not None else None
                while ahead is not None and pending is not None:
                    rows, stored = ahead
                    ahead = next(batches, None)  # read and hand out the next batch before checking this one
                    following = jobs.submit(ahead[0]) if ahead is not None else None
                    walker.add_batch(rows, stored, verified=jobs.results(pending))
                    pending = following
        else:
            for rows, stored in batches:
                walker.add_batch(rows, stored)
        later = s.scalar(select(func.min(entries.c.idx)).where(entries.c.idx >= walker.size))
        if later is not None:
            raise IntegrityError(f"log entry {walker.size}: missing (the next stored entry is {later})")
        if head.size > walker.size:
            raise IntegrityError(
                f"log entry {walker.size}: missing (the log head counts {head.size} entries)"
            )
        if head.size != walker.size or head.root != walker.root or head.probesets != walker.probesets:
            raise IntegrityError(
                f"log head: says {head.size} entries with another root or count than the "
                f"{walker.size} entries in the log"
            )
        if saved is not None:
            _check_since(walker, since or "", saved)
        timestamps, unchecked = _check_checkpoints(walker, checkpoints, tsa_ca_pem)
        _check_tables(s, walker)
    return LogReport(
        size=walker.size,
        root=walker.root,
        checkpoints=len(checkpoints),
        timestamps=timestamps,
        unchecked_timestamps=unchecked,
        probesets=walker.probesets,
        since=saved.size if saved is not None else None,
    )


Batch = tuple[list[Any], list[tuple[int, int, bytes]]]


def _batches(s: Session) -> Iterator[Batch]:
    """The log's entries and the tree nodes they complete, :data:`BATCH` entries at a time."""
    entries, nodes = LogEntryRow.__table__, MerkleNodeRow.__table__
    start = 0
    while True:
        rows = s.execute(
            select(entries)
            .where(entries.c.idx >= start, entries.c.idx < start + BATCH)
            .order_by(entries.c.idx)
        ).all()
        stored = s.execute(
            select(nodes.c.end_idx, nodes.c.level, nodes.c.hash)
            .where(nodes.c.end_idx > start, nodes.c.end_idx <= start + BATCH)
            .order_by(nodes.c.end_idx, nodes.c.level)
        ).all()
        yield [r._mapping for r in rows], [(e, lv, bytes(h)) for e, lv, h in stored]
        if len(rows) < BATCH:
            return
        start += BATCH


Job = tuple[bytes, bytes, tuple[bytes, ...]] | None  # (public key, signed message, signatures)
Verdict = tuple[bool, bytes] | None  # (all signatures verify, the public key they were checked with)


def _verify_jobs(jobs: list[Job]) -> list[Verdict]:
    """In a worker process: check each job's Ed25519 signatures."""
    out: list[Verdict] = []
    for job in jobs:
        if job is None:
            out.append(None)
            continue
        raw, message, sigs = job
        key = Ed25519PublicKey.from_public_bytes(raw)
        try:
            for sig in sigs:
                key.verify(sig, message)
        except InvalidSignature:
            out.append((False, raw))
        else:
            out.append((True, raw))
    return out


class _SignatureJobs:
    """Hands out each batch's signatures to worker processes, keys resolved as the log introduces them.

    A verdict is only a shortcut: the sequential check uses it when it was made
    with the very key the check resolves (else it verifies again itself).
    """

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.keys: dict[str, bytes] = {}
        self.pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))

    def __enter__(self) -> _SignatureJobs:
        return self

    def __exit__(self, *exc: object) -> None:
        self.pool.shutdown(cancel_futures=True)

    def submit(self, rows: list[Any]) -> list[Future[list[Verdict]]]:
        jobs = [self._job(r) for r in rows]
        n, k = len(jobs), self.workers
        return [self.pool.submit(_verify_jobs, jobs[i * n // k : (i + 1) * n // k]) for i in range(k)]

    @staticmethod
    def results(futures: list[Future[list[Verdict]]]) -> list[Verdict]:
        return [v for f in futures for v in f.result()]

    def _job(self, row: Any) -> Job:
        kid, ptype, body = row["key_id"], row["payload_type"], bytes(row["payload"])
        if kid not in self.keys and ptype == OWNER_TYPE:
            try:
                self.keys[kid] = b64d(json.loads(body)["record"]["public_key"], what="owner key")
            except (ValueError, KeyError, TypeError, InputError):
                return None
        raw = self.keys.get(kid)
        try:
            sigs = tuple(
                b64d(sg["sig"], what="signature")
                for sg in LogEntry.signatures_from_text(row["signatures"])
                if sg["keyid"] == kid
            )
        except (IntegrityError, InputError):
            return None
        if raw is None or len(raw) != 32 or not sigs:
            return None
        return raw, dsse.pae(ptype, body), sigs


def _saved_checkpoint(note: str, origin: str) -> Checkpoint:
    """The checkpoint of a note saved earlier (its form and origin; its signers are checked later)."""
    try:
        state, _, _ = parse_checkpoint(note)
    except IntegrityError as exc:
        raise IntegrityError(f"the checkpoint saved earlier: {exc}") from exc
    if state.origin != origin:
        raise IntegrityError(
            f"the checkpoint saved earlier is for log {state.origin!r}, not this one ({origin!r})"
        )
    return state


def _check_since(walker: _LogWalker, note: str, saved: Checkpoint) -> None:
    if saved.size > walker.size:
        raise IntegrityError(
            f"truncation: the log has {walker.size} entries, fewer than the {saved.size} of the "
            "checkpoint saved earlier (entries were removed)"
        )
    if walker.roots.get(saved.size) != saved.root:
        raise IntegrityError(
            f"fork: the log's first {saved.size} entries have another root than the checkpoint "
            "saved earlier (the log was rewritten)"
        )
    for name, public in walker.keys.values():
        try:
            verify_checkpoint(note, name, public, origin=walker.origin)
            return
        except IntegrityError:
            continue
    raise IntegrityError("the checkpoint saved earlier is signed by no owner this log knows")


class _LogWalker:
    """Replays the log entry by entry, checking each against what came before."""

    def __init__(self, origin: str) -> None:
        self.origin = origin
        self.size = 0
        self.probesets = 0
        self.tree = merkle.CompactRange()
        self.root = merkle.EMPTY_ROOT
        self.keys: dict[str, tuple[str, Ed25519PublicKey]] = {}
        self.want_roots: set[int] = set()
        self.roots: dict[int, bytes] = {0: merkle.EMPTY_ROOT}
        # Records of the registry's own types, by entry index, to check the tables against.
        self.records: dict[int, tuple[str, str, dict[str, Any]]] = {}

    def add_batch(
        self,
        rows: Sequence[Any],
        nodes: Sequence[tuple[int, int, bytes]],
        verified: Sequence[Verdict] | None = None,
    ) -> None:
        """Check a batch of consecutive entries and the interior nodes they complete."""
        want = iter(nodes)
        for i, row in enumerate(rows):
            made = self.add(row, verified[i] if verified is not None else None)
            for (level, end), node in made:
                got = next(want, None)
                if got is None or got[:2] != (end, level):
                    raise IntegrityError(f"tree node (level {level}, ending at entry {end - 1}): missing")
                if got[2] != node:
                    raise IntegrityError(
                        f"tree node (level {level}, ending at entry {end - 1}): not the hash of its leaves"
                    )
        left = next(want, None)
        if left is not None:
            raise IntegrityError(
                f"tree node (level {left[1]}, ending at entry {left[0] - 1}): not in the tree"
            )

    def add(self, row: Any, verdict: Verdict = None) -> list[tuple[merkle.NodeId, bytes]]:
        p = self.size
        if row["idx"] != p:
            raise IntegrityError(f"log entry {p}: missing (the next stored entry is {row['idx']})")
        try:
            leaf, ptype, kid, record = self._check(row, p, verdict)
        except IntegrityError as exc:
            raise IntegrityError(f"log entry {p}: {exc}") from exc
        made = self.tree.append(leaf)
        self.size = p + 1
        self.root = self.tree.root()
        self.probesets += ptype == PROBESET_TYPE
        if self.size in self.want_roots:
            self.roots[self.size] = self.root
        if ptype in RESERVED_TYPES:
            self.records[p] = (ptype, kid, record)
        return made

    def _check(self, row: Any, p: int, verdict: Verdict) -> tuple[bytes, str, str, dict[str, Any]]:
        ptype, kid = row["payload_type"], row["key_id"]
        envelope = {
            "payloadType": ptype,
            "payload": b64e(bytes(row["payload"])),
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
        if verdict is not None and verdict[1] == public.public_bytes_raw():
            if not verdict[0]:
                raise IntegrityError("envelope: signature does not verify")
            statement = dsse.payload_of(envelope)  # signatures checked by a worker, with this key
        else:
            statement = dsse.verify_envelope(envelope, public, payload_type=ptype, key_id=kid)
        log = statement.get("log")
        if not isinstance(log, dict) or log.get("origin") != self.origin:
            raise IntegrityError("belongs to another log (origin differs)")
        if log.get("index") != p:
            raise IntegrityError(f"signed as entry {log.get('index')} (rows moved, inserted or deleted)")
        if log.get("prev_root") != b64e(self.root):
            raise IntegrityError("does not follow the entries before it (its signed previous root differs)")
        if "probesets" in log and log["probesets"] != self.probesets:
            raise IntegrityError(
                f"signs {log['probesets']} probe sets before it, but the log holds {self.probesets}"
            )
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
) -> tuple[int, int]:
    """Each checkpoint's signature and root, and its token; (tokens verified, tokens not checked)."""
    timestamps = unchecked = 0
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
        if c.tsa_token is not None and tsa_ca_pem is None:
            unchecked += 1
        elif c.tsa_token is not None and tsa_ca_pem is not None:
            from registry import tsa

            try:
                tsa.verify_timestamp(c.tsa_token, state.body().encode("utf-8"), ca_pem=tsa_ca_pem)
            except IntegrityError as exc:
                raise IntegrityError(f"{where}: time-stamp token: {exc}") from exc
            timestamps += 1
    return timestamps, unchecked


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
        if m.data is not None:
            row["data"] = m.data
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
        if (
            rec.get("probeset") != sp.probeset_id
            or sp.probe_index not in rec.get("indices", [])
            or rec.get("claim") != sp.claim
        ):
            raise IntegrityError(
                f"spend of probe {sp.probe_index} of set {sp.probeset_id}: "
                f"not what log entry {sp.entry_idx} says"
            )
    rows = {
        OWNER_TYPE: s.scalar(select(func.count()).select_from(OwnerRow)),
        MODEL_TYPE: s.scalar(select(func.count()).select_from(ModelRow)),
        PROBESET_TYPE: s.scalar(select(func.count()).select_from(ProbeSetRow)),
        VERIFICATION_TYPE: s.scalar(select(func.count()).select_from(VerificationRow)),
    }
    for ptype, n in rows.items():
        if n != counts[ptype]:
            raise IntegrityError(f"the log holds {counts[ptype]} {ptype} records but the table {n}")
    spends = len(
        {
            (r[2].get("probeset"), i)
            for r in walker.records.values()
            if r[0] == SPEND_TYPE
            for i in r[2].get("indices", [])
        }
    )
    n = s.scalar(select(func.count()).select_from(SpendRow))
    if n != spends:
        raise IntegrityError(f"the log spends {spends} probes but the spend table holds {n}")
