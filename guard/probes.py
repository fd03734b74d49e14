"""Marked queries → a guard ``ProbeSet`` (kind ``"guard"``, exact null ``Binomial(1/C)``).

The guard's records in the registry log (:data:`guard.journal.GUARD_QUERIES_TYPE`)
are read back, their inputs opened from the vault, and every label is
recomputed with the guard key (a record whose label is not the keyed one is an
integrity failure, not a probe). Probes are deduplicated by the input's keyed
digest, both within the records and against inputs already committed in an
earlier guard probe set of the same model, because one input queried twice is
one Bernoulli trial, not two (see :mod:`guard.prf`). Records whose vault epoch
was shredded (retention passed) cannot be opened and are skipped.

:func:`commit_guard_probes` commits the result to the registry with
:meth:`registry.log.Registry.add_probeset`, after which ``wm verify --model
NAME`` uses it against a suspect like any other probe set.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import torch

from core.errors import InputError, IntegrityError
from core.probeset import SALT_SIZE, Binomial, ProbeSet
from guard.journal import GuardRecord, guard_entries
from guard.prf import PRF_NAME, GuardKey, Marker, canonical_bytes
from guard.vault import InputVault
from registry.keys import OwnerKey
from registry.log import Registry

__all__ = [
    "CommitResult",
    "GuardProbes",
    "collect_probes",
    "commit_guard_probes",
    "committed_digests",
    "decode_input",
]


def decode_input(data: bytes) -> np.ndarray:
    """Inverse of :func:`guard.prf.canonical_bytes`."""
    if len(data) < 4:
        raise IntegrityError("a guard input is truncated")
    (ndim,) = struct.unpack(">I", data[:4])
    if ndim > 8 or len(data) < 4 + 4 * ndim:
        raise IntegrityError("a guard input has a malformed shape")
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    body = data[4 + 4 * ndim :]
    if len(body) != 4 * int(np.prod(shape)):
        raise IntegrityError("a guard input's size does not match its shape")
    return np.frombuffer(body, dtype="<f4").reshape(shape).astype(np.float32)


@dataclass
class GuardProbes:
    """Marked queries gathered for a probe set, with what was left out and why."""

    inputs: list[np.ndarray] = field(default_factory=list)
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
        marker: recomputes each record's keyed label and digest.
        vault: opens the sealed inputs.
        model: the registered model's name.
        input_shape: the model's input shape; records of another shape are skipped.
        exclude: digests already committed (never probes twice).
        client_filter: keep only records of clients it accepts.

    Raises:
        IntegrityError: a record's input does not open, or its digest or label is not the keyed one.
    """
    out = GuardProbes()
    seen = set(exclude or ())
    for rec in _records(registry, model):
        out.records += 1
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
        if marker.decide(data).label != rec.label:
            raise IntegrityError(f"guard record {rec.seq}: its label is not the keyed label")
        x = decode_input(data)
        if tuple(x.shape) != tuple(input_shape):
            out.other_shape += 1
            continue
        seen.add(rec.digest)
        out.inputs.append(x)
        out.labels.append(rec.label)
        out.digests.append(rec.digest)
        out.clients.append(rec.client)
    return out


@dataclass(frozen=True)
class CommitResult:
    """What :func:`commit_guard_probes` did."""

    probeset_id: int | None
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
    """Commit the marked queries of ``model`` not committed yet as a guard probe set.

    Args:
        registry: the registry (records are read from it, the probe set added to it).
        owner_key: derives the guard key, opens inputs, signs the commitment.
        vault: the model's input vault.
        model: the registered model's name.
        clients: only these clients' queries (default: every client's).

    Returns:
        The new probe set's id (``None`` when there was nothing new) and the tallies.

    Raises:
        RegistryError: unknown model. InputError: the model's class count or input shape is unknown.
    """
    info = registry.model(model)
    if info.num_classes is None or info.input_shape is None:
        raise InputError(f"model {model!r} was registered without its class count and input shape")
    marker = Marker(GuardKey.derive(owner_key, model), 0.0, info.num_classes)
    wanted = set(clients) if clients is not None else None
    probes = collect_probes(
        registry, marker, vault, model, info.input_shape,
        exclude=committed_digests(registry, owner_key, model, marker),
        client_filter=(lambda c: c in wanted) if wanted is not None else None,
    )
    if not probes.inputs:
        return CommitResult(None, probes)
    n = len(probes.inputs)
    ps = ProbeSet(
        inputs=torch.from_numpy(np.stack(probes.inputs)),
        expected=torch.tensor(probes.labels, dtype=torch.int64),
        kind="guard",
        scheme=f"dawn-guard:prf={PRF_NAME}:labels=uniform:classes={info.num_classes}:n={n}",
        null=Binomial(1.0 / info.num_classes),
        num_classes=info.num_classes,
        salts=tuple(os.urandom(SALT_SIZE) for _ in range(n)),
    )
    return CommitResult(registry.add_probeset(owner_key, model, ps), probes)
