"""The evidence bundle: one DSSE-signed file holding everything a third party checks.

The bundle is a DSSE envelope (payload type :data:`EVIDENCE_TYPE`, signed by
the owner key; :mod:`registry.dsse`) over the RFC 8785 canonical JSON::

    {"type": "wm.evidence/v2", "created", "owner": {"name", "key_id", "public_key"},
     "suspect": {"url", "protocol", "detected"},
     "transcript": {"header": {...}, "records": [query records]},
     "decoys": [{"index", "shape", "input"}],
     "tests": [{"model", "probeset_id", "kind", "scheme", "size", "num_classes",
                "input_shape", "null", "root", "derivation", "derivation_key",
                "openings": [ProbeOpening...], "registry": proof, "time": time proof}],
     "models": [{"name", "registry": proof}],
     "statistics": {...}, "verdict", "p_value", "model"}

``statistics`` are the run's, as :func:`verifier.stats.compute_statistics`
makes them; ``verdict``, ``p_value`` and ``model`` are corrected for every
probe set in the log at the bundle's checkpoint (:mod:`verifier.selection`;
the checkpoint's last entry signs that count): they are the claim.

``registry`` entries are self-contained inclusion proofs
(:func:`registry.proofs.check_proof_bundle`). Only the probes that were sent
are opened, each with its Merkle proof (:class:`core.commitment.ProbeOpening`);
the rest stay secret. ``derivation_key`` is present only for sets opened with
``wm verify --open-keys`` (the set is burnt). ``time`` is the earliest
checkpoint covering the set's registry entry that carries third-party time
(an RFC 3161 token, witness cosignatures), with the entry's inclusion proof in
it, or null. ``decoys`` holds the decoy inputs that were sent, so the run can
be replayed.

Torch-free: :func:`build_bundle` takes the session's result as built.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from core.canonical import b64e, canonical_json, parse_json
from core.errors import InputError
from registry import dsse
from registry.keys import OwnerKey
from verifier.transcript import public_header

if TYPE_CHECKING:
    from verifier.selection import Selection
    from verifier.session import SessionResult

__all__ = ["EVIDENCE_TYPE", "PAYLOAD_TYPE", "build_bundle", "read_bundle", "write_bundle"]

EVIDENCE_TYPE = "application/vnd.wm.evidence+json"
PAYLOAD_TYPE = "wm.evidence/v2"


def _array(x: np.ndarray) -> dict[str, Any]:
    arr = np.ascontiguousarray(x, dtype="<f4")
    return {"shape": list(arr.shape), "input": b64e(arr.tobytes())}


def build_bundle(
    result: SessionResult,
    owner_key: OwnerKey,
    selection: Selection,
    *,
    probeset_proofs: Mapping[int, dict[str, Any]],
    model_proofs: Mapping[str, dict[str, Any]],
    time_proofs: Mapping[int, dict[str, Any]],
    open_keys: bool = False,
) -> dict[str, Any]:
    """Sign the evidence of a finished run; the DSSE envelope.

    Args:
        result: the session's result (statistics, transcript, sources, sent probes and decoys).
        owner_key: signs the bundle.
        selection: the verdict corrected for every committed probe set (the bundle's claim).
        probeset_proofs: registry proof bundle of each source's probe set entry, by source index.
        model_proofs: registry proof bundle of each model's entry, by model name.
        time_proofs: each source's earliest third-party-timed checkpoint, by source index.
        open_keys: reveal each set's derivation key (the caller burns those sets).
    """
    tests = []
    for i, src in enumerate(result.sources):
        sent = sorted(set(result.sent.get(i, [])))
        key = src.probes.derivation_key
        tests.append(
            {
                **src.describe(),
                "derivation": src.probes.summary()["derivation"],
                "derivation_key": b64e(key) if open_keys and key is not None else None,
                "openings": [o.to_dict() for o in src.probes.open(sent)],
                "registry": probeset_proofs.get(i),
                "time": time_proofs.get(i),
            }
        )
    models = list(dict.fromkeys([*result.header.get("models", []), *(s.model for s in result.sources)]))
    stats = result.statistics
    payload = {
        "type": PAYLOAD_TYPE,
        "created": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "owner": {
            "name": owner_key.name,
            "key_id": owner_key.key_id,
            "public_key": b64e(owner_key.public_raw()),
        },
        "suspect": result.header["suspect"],
        "transcript": {"header": public_header(result.header), "records": result.records},
        "decoys": [{"index": i, **_array(x)} for i, x in sorted(result.decoy_inputs.items())],
        "tests": tests,
        "models": [{"name": m, "registry": model_proofs.get(m)} for m in models],
        "statistics": stats.to_dict(),
        "verdict": selection.verdict,
        "p_value": selection.p_value,
        "model": selection.model,
    }
    return dsse.sign_envelope(owner_key, EVIDENCE_TYPE, payload)


def write_bundle(path: str | Path, envelope: Mapping[str, Any]) -> str:
    """Write the bundle atomically and durably; its SHA-256 (hex)."""
    p = Path(path)
    data = canonical_json(dict(envelope)) + b"\n"
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(p)
    return hashlib.sha256(data).hexdigest()


def read_bundle(path: str | Path) -> dict[str, Any]:
    """Read a bundle file; :class:`InputError` if it cannot be read or parsed."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read evidence bundle {p}: {exc.strerror}") from exc
    doc = parse_json(raw, what=f"evidence bundle {p}")
    if not isinstance(doc, dict):
        raise InputError(f"evidence bundle {p} is not a JSON object")
    return doc
