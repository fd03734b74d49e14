"""The registry: owners, models, probe-set commitments, spends and verifications, in the log.

:class:`Registry` is the log store (:class:`registry.store.LogStore`) with the
domain records on top. Every write appends one DSSE-signed entry
(:mod:`registry.dsse`) in the same transaction as its index row, under the
writer lock, so concurrent writers in several processes never fork the log or
lose an entry, and each check-then-write (a name not yet taken, a probe not
yet spent) is atomic. Checkpoints are C2SP signed notes (:mod:`registry.note`),
optionally time-stamped by an RFC 3161 authority (:mod:`registry.tsa`) and
cosigned by witnesses (:mod:`registry.witness`). :meth:`Registry.verify_log`
runs the audit (:mod:`registry.audit`).

Two rules hold for every probe set the registry commits:

- **nulls nobody chooses**: a key-random kind (``watermark``, ``guard``) must
  carry the exact null ``Binomial(1/C)``; any other is refused;
- **each probe counts once**: :meth:`Registry.spend` records a batch of probe
  indices as spent, or none of them when any was spent before (by another
  verification), across processes and on both databases.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core.canonical import canonical_json
from core.errors import InputError, IntegrityError, RegistryError
from core.files import file_sha256
from core.nulls import KEY_RANDOM_KINDS, null_from_dict, require_exact_null
from registry.keys import OwnerKey
from registry.records import (
    MODEL_TYPE,
    PROBESET_TYPE,
    RESERVED_TYPES,
    SPEND_TYPE,
    VERDICTS,
    VERIFICATION_TYPE,
    LogReport,
    ModelInfo,
    ProbeSetInfo,
)
from registry.schema import (
    ModelRow,
    ProbeSetRow,
    SpendRow,
    VerificationRow,
)
from registry.sealing import open_sealed, seal
from registry.store import LogStore

if TYPE_CHECKING:
    from core.probeset import ProbeSet

__all__ = ["KEY_RANDOM_KINDS", "ProbesSpentError", "Registry"]


class ProbesSpentError(RegistryError):
    """Some probes of a batch were spent already (by another verification); none was spent now."""

    def __init__(self, probeset_id: int, indices: Sequence[int]) -> None:
        shown = ", ".join(str(i) for i in indices[:8]) + (", ..." if len(indices) > 8 else "")
        super().__init__(
            f"probe set {probeset_id}: {len(indices)} of the probes to spend were spent already ({shown})",
            hint="another verification took them; load the unspent probes again",
        )
        self.probeset_id = probeset_id
        self.indices = tuple(indices)


def _check_generic(payload_type: str, payloads: Sequence[Any]) -> None:
    if payload_type in RESERVED_TYPES:
        raise InputError(f"payload type {payload_type} is written by its own registry method")
    if not payload_type or len(payload_type) > 200 or not payload_type.isascii():
        raise InputError("payload type must be 1 to 200 ASCII characters")
    for payload in payloads:
        if not isinstance(payload, dict):
            raise InputError("a log record must be a JSON object")
        canonical_json(payload)  # refuse what cannot be signed before taking the lock


def check_null(summary: dict[str, Any]) -> None:
    """Refuse a key-random probe set (watermark, guard) whose null is not exactly ``Binomial(1/C)``.

    The rule is :func:`core.nulls.require_exact_null`, which the evidence checker applies too.

    Raises:
        InputError: naming the kind, the null and the class count.
    """
    require_exact_null(summary["kind"], null_from_dict(summary["null"]), summary["num_classes"])


class Registry(LogStore):
    """A signed, tamper-evident registry database.

    Open with :meth:`open`; use as a context manager or call :meth:`close`.
    Writers pass the :class:`OwnerKey` that signs; an owner unknown to the log
    is added (self-signed owner entry) on its first write.
    """

    # ---------------------------------------------------------------- generic records

    def append(self, owner_key: OwnerKey, payload_type: str, payload: dict[str, Any]) -> int:
        """Append a generic signed record (for example the guard's); its entry index.

        On PostgreSQL the record is queued and appended together with the other
        queued records of its owner (:mod:`registry.sequencer`); on SQLite
        (one file, cheap commits) writers take turns on the file lock.

        Args:
            owner_key: signs the entry.
            payload_type: a media type such as ``application/vnd.wm.guard+json``; the
                registry's own types are refused here (use their methods).
            payload: any JSON object (RFC 8785 encodable).
        """
        _check_generic(payload_type, [payload])
        if self._pg:  # batched with other writers' (registry.sequencer)
            from registry.sequencer import append_queued

            return append_queued(self, owner_key, payload_type, payload)
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
        _check_generic(payload_type, payloads)
        with self._writing() as s:
            self._ensure_owner(s, owner_key)
            return [self._append(s, owner_key, payload_type, p) for p in payloads]

    # ---------------------------------------------------------------- models and probe sets

    def add_model(
        self,
        owner_key: OwnerKey,
        name: str,
        model_path: str | Path,
        *,
        weights_sha256: str | None = None,
        arch: str | None = None,
        input_shape: Sequence[int] | None = None,
        num_classes: int | None = None,
        data: str | None = None,
    ) -> int:
        """Record a model file under ``name``; the entry index.

        The file's SHA-256 is computed here; the weights digest, architecture,
        input shape, class count and training data's name are recorded as given
        (:func:`registry.register.register_model` reads them off a ``.pt2``).
        ``data`` enters the log record only when known.

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
        if data is not None:
            if not data or len(data) > 200:
                raise InputError("a data set's name must be 1 to 200 characters")
            record["data"] = data
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
                    data=data,
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

        The log records the public summary (everything :meth:`ProbeSet.summary`
        holds: kind, scheme, size, null, Merkle root, derivation commitment);
        the probes and the watermark key are sealed for the owner
        (:mod:`registry.sealing`) and stored beside it, never in plain text.

        Raises:
            RegistryError: no such model.
            InputError: the model belongs to another owner, or a key-random
                kind's null is not exactly ``Binomial(1/C)``.
        """
        summary = probeset.summary()
        check_null(summary)
        context = {"model": model_name, "root": summary["root"]}
        sealed_probes = seal(owner_key, probeset.to_bytes(), {"purpose": "probes", **context})
        sealed_key = (
            seal(owner_key, secret_key, {"purpose": "watermark-key", **context})
            if secret_key is not None
            else None
        )
        record = {
            **summary,
            "model": model_name,
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

    def spend(
        self,
        owner_key: OwnerKey,
        probeset_id: int,
        indices: Sequence[int],
        reason: str,
        *,
        claim: str | None = None,
    ) -> int:
        """Spend a batch of probes (before they are sent), all or none; the entry index.

        Under the writer lock, so across processes and databases a probe is
        spent at most once. ``claim`` names the verification that spends (for
        example a digest of its transcript's header): a probe it spent before
        may be listed again (a resumed verification re-sends its own batch),
        and the batch records only the new ones.

        Raises:
            ProbesSpentError: a probe of the batch was spent before, without
                this claim; nothing was recorded.
            RegistryError: no such probe set. InputError: an index outside the set.
        """
        wanted = sorted({int(i) for i in indices})
        if not wanted:
            raise InputError("no probe indices to spend")
        if claim is not None and not 0 < len(claim) <= 64:
            raise InputError("a spend claim must be 1 to 64 characters")
        with self._writing() as s:
            row, model = self._probeset_row(s, probeset_id)
            bad = [i for i in wanted if not 0 <= i < row.size]
            if bad:
                raise InputError(f"probe index {bad[0]} is outside probe set {probeset_id} of {row.size}")
            spent = {
                i: c
                for i, c in s.execute(
                    select(SpendRow.probe_index, SpendRow.claim).where(
                        SpendRow.probeset_id == probeset_id, SpendRow.probe_index.in_(wanted)
                    )
                )
            }
            taken = [i for i in wanted if i in spent and (claim is None or spent[i] != claim)]
            if taken:
                raise ProbesSpentError(probeset_id, taken)
            new = [i for i in wanted if i not in spent]
            self._ensure_owner(s, owner_key)
            record = {
                "probeset": probeset_id,
                "model": model.name,
                "root": row.root.hex(),
                "indices": new,
                "reason": reason,
                "claim": claim,
            }
            index = self._append(s, owner_key, SPEND_TYPE, record)
            s.add_all(
                SpendRow(probeset_id=probeset_id, probe_index=i, entry_idx=index, claim=claim) for i in new
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

    # ---------------------------------------------------------------- reading records

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

    def verify_log(
        self, *, tsa_ca_pem: bytes | None = None, since: str | None = None, workers: int = 1
    ) -> LogReport:
        """Audit the whole log (:func:`registry.audit.verify_log`); raise on the first fault."""
        from registry.audit import verify_log

        return verify_log(self, tsa_ca_pem=tsa_ca_pem, since=since, workers=workers)


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
        data=r.data,
    )
