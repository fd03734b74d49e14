"""Marked queries → guard ``ProbeSet``s (kind ``"guard"``, exact null ``Binomial(1/C)``), one per epoch.

The guard's records in the registry log (:data:`guard.journal.GUARD_QUERIES_TYPE`)
are read back, their inputs opened from the vault, and every record is
re-derived under its epoch's committed key (:mod:`guard.epochs`): a record
whose input is not marked under that key, or whose label is not the keyed
one, is an integrity failure, not a probe. Probes are deduplicated by the
input's keyed digest, both within the records and against inputs already
committed in an earlier guard probe set of the same model, because one input
queried twice is one Bernoulli trial, not two (see :mod:`core.marking`).
Records whose vault epoch was shredded (retention passed) cannot be opened
and are skipped.

:func:`commit_guard_probes` commits one probe set per guard epoch with
:meth:`registry.log.Registry.add_probeset`; its scheme names the epoch, its
rate and its key commitment, so the signed probe-set record binds the probes
to the key committed before they were marked. ``wm verify --model NAME`` then
uses them against a suspect like any other probe set.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import torch

from core.derive import Derivation
from core.errors import InputError, IntegrityError
from core.marking import MARKING_PRF, canonical_bytes, decode_canonical
from core.probeset import SALT_SIZE, Binomial, ProbeSet
from guard.epochs import GuardEpoch, epochs
from guard.journal import GuardRecord, guard_entries
from guard.prf import GuardKey, Marker
from guard.vault import InputVault
from registry.keys import OwnerKey
from registry.log import Registry

__all__ = [
    "CommitResult",
    "GuardProbes",
    "collect_probes",
    "commit_guard_probes",
    "committed_digests",
]


@dataclass
class GuardProbes:
    """Marked queries gathered for probe sets (per epoch), with what was left out and why."""

    inputs: list[np.ndarray] = field(default_factory=list)
    epochs: list[int] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    digests: list[str] = field(default_factory=list)
    clients: list[str] = field(default_factory=list)
    records: int = 0
    duplicates: int = 0
    already_committed: int = 0
    expired: int = 0
    other_shape: int = 0
    other_clients: int = 0


def _records(registry: Registry, model: str) -> Iterable[GuardRecord]:
    for _, payload in guard_entries(registry, model):
        for d in payload.get("records", []):
            yield GuardRecord.from_dict(d)


def collect_probes(
    registry: Registry,
    marker: Marker,
    known_epochs: dict[int, GuardEpoch],
    vault: InputVault,
    model: str,
    input_shape: tuple[int, ...],
    *,
    exclude: set[str] | None = None,
    client_filter: Callable[[str], bool] | None = None,
) -> GuardProbes:
    """Every distinct, readable marked query of ``model`` in the registry log.

    Args:
        registry: where the guard's records are.
        marker: recomputes each record's keyed digest.
        known_epochs: the model's committed epochs (each record is re-derived under its own).
        vault: opens the sealed inputs.
        model: the registered model's name.
        input_shape: the model's input shape; records of another shape are skipped.
        exclude: digests already committed (never probes twice).
        client_filter: keep only records of clients it accepts.

    Raises:
        IntegrityError: a record's input does not open, names no committed epoch, or its digest,
            marking or label is not the keyed one.
    """
    out = GuardProbes()
    seen = set(exclude or ())
    for rec in _records(registry, model):
        out.records += 1
        epoch = known_epochs.get(rec.key_epoch)
        if epoch is None:
            raise IntegrityError(f"guard record {rec.seq}: epoch {rec.key_epoch} was never committed")
        if client_filter is not None and not client_filter(rec.client):
            out.other_clients += 1
            continue
        if rec.digest in seen:
            if exclude and rec.digest in exclude:
                out.already_committed += 1
            else:
                out.duplicates += 1
            continue
        data = vault.open(rec.epoch, rec.sealed_input, rec.digest)
        if data is None:
            out.expired += 1
            continue
        if marker.digest(data) != rec.digest:
            raise IntegrityError(f"guard record {rec.seq}: its input does not match its digest")
        mark = epoch.marking().decide(data)
        if not mark.marked or mark.label != rec.label:
            raise IntegrityError(f"guard record {rec.seq}: not the keyed mark of epoch {rec.key_epoch}")
        x = decode_canonical(data)
        if tuple(x.shape) != tuple(input_shape):
            out.other_shape += 1
            continue
        seen.add(rec.digest)
        out.inputs.append(x)
        out.labels.append(rec.label)
        out.epochs.append(rec.key_epoch)
        out.digests.append(rec.digest)
        out.clients.append(rec.client)
    return out


@dataclass(frozen=True)
class CommitResult:
    """What :func:`commit_guard_probes` did: the new probe sets' ids (one per epoch) and tallies."""

    probeset_ids: tuple[int, ...]
    probes: GuardProbes


def committed_digests(registry: Registry, owner_key: OwnerKey, model: str, marker: Marker) -> set[str]:
    """Keyed digests of every input already in one of ``model``'s guard probe sets."""
    out: set[str] = set()
    for info in registry.probesets(model, kind="guard"):
        ps = registry.load_probeset(info.id, owner_key)
        out.update(marker.digest(canonical_bytes(ps.inputs[i].numpy())) for i in range(len(ps)))
    return out


def commit_guard_probes(
    registry: Registry,
    owner_key: OwnerKey,
    vault: InputVault,
    model: str,
    *,
    clients: Iterable[str] | None = None,
) -> CommitResult:
    """Commit the marked queries of ``model`` not committed yet, one guard probe set per epoch.

    Args:
        registry: the registry (records are read from it, the probe set added to it).
        owner_key: derives the guard key, opens inputs, signs the commitment.
        vault: the model's input vault.
        model: the registered model's name.
        clients: only these clients' queries (default: every client's).

    Returns:
        The new probe sets' ids (none when there was nothing new) and the tallies.

    Raises:
        RegistryError: unknown model. InputError: the model's class count or input shape is unknown.
    """
    info = registry.model(model)
    if info.num_classes is None or info.input_shape is None:
        raise InputError(f"model {model!r} was registered without its class count and input shape")
    known = epochs(registry, owner_key, model)
    if not known:
        return CommitResult((), GuardProbes())
    marker = Marker(GuardKey.derive(owner_key, model), known[max(known)])
    wanted = set(clients) if clients is not None else None
    probes = collect_probes(
        registry, marker, known, vault, model, info.input_shape,
        exclude=committed_digests(registry, owner_key, model, marker),
        client_filter=(lambda c: c in wanted) if wanted is not None else None,
    )
    ids = []
    for number in sorted(set(probes.epochs)):
        rows = [i for i, e in enumerate(probes.epochs) if e == number]
        epoch, n = known[number], len(rows)
        ps = ProbeSet(
            inputs=torch.from_numpy(np.stack([probes.inputs[i] for i in rows])),
            expected=torch.tensor([probes.labels[i] for i in rows], dtype=torch.int64),
            kind="guard",
            scheme=(f"dawn-guard:prf={MARKING_PRF}:labels=uniform:classes={info.num_classes}"
                    f":rate={epoch.rate:g}:epoch={number}:key={epoch.commitment}:n={n}"),
            null=Binomial(1.0 / info.num_classes),
            num_classes=info.num_classes,
            salts=tuple(os.urandom(SALT_SIZE) for _ in range(n)),
            derivation=Derivation(epoch.commitment, labels="guard-mark/v1", rate=epoch.rate),
            derivation_key=epoch.key,
        )
        ids.append(registry.add_probeset(owner_key, model, ps))
    return CommitResult(tuple(ids), probes)
