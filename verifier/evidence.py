"""Evidence bundles: one DSSE-signed file that a third party checks offline.

The bundle is a DSSE envelope (payload type :data:`EVIDENCE_TYPE`, signed by
the owner key; see :mod:`registry.dsse`) over the RFC 8785 canonical JSON::

    {"type": "wm.evidence/v1", "created", "owner": {"name", "key_id", "public_key"},
     "suspect": {"url", "protocol", "detected"},
     "transcript": {"header": {...}, "records": [...]},
     "tests": [{"model", "probeset_id", "kind", "scheme", "size", "num_classes",
                "null", "root", "openings": [ProbeOpening...], "registry": proof}],
     "models": [{"name", "registry": proof}],
     "statistics": {...}, "verdict", "p_value", "model"}

``registry`` entries are self-contained inclusion proofs
(:func:`registry.proofs.check_proof_bundle`: the log entry's envelope, a signed
C2SP checkpoint and the RFC 9162 inclusion proof). Only the probes that were
sent are opened, each with its Merkle proof against the committed root
(:class:`core.probeset.ProbeOpening`); the rest stay secret.

:func:`check_bundle` verifies every part, in this order, and raises
:class:`~core.errors.EvidenceError` naming the first that fails: ``signature``,
``registry``, ``openings``, ``transcript``, ``statistics``.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from core.canonical import b64d, b64e, canonical_json, parse_json
from core.errors import EvidenceError, InputError, IntegrityError
from core.probeset import ProbeOpening, null_from_dict
from registry import dsse
from registry.keys import OwnerKey, key_id_of
from registry.proofs import check_proof_bundle
from registry.records import MODEL_TYPE, PROBESET_TYPE
from verifier.session import DECOY, SessionResult, input_digest, public_header, tests_from_records
from verifier.stats import Futility, compute_statistics

__all__ = [
    "EVIDENCE_TYPE",
    "PARTS",
    "BundleCheck",
    "build_bundle",
    "check_bundle",
    "read_bundle",
    "write_bundle",
]

EVIDENCE_TYPE = "application/vnd.wm.evidence+json"
PAYLOAD_TYPE = "wm.evidence/v1"
PARTS = ("signature", "registry", "openings", "transcript", "statistics")


def build_bundle(
    result: SessionResult,
    owner_key: OwnerKey,
    *,
    probeset_proofs: Mapping[int, dict[str, Any]],
    model_proofs: Mapping[str, dict[str, Any]],
) -> dict[str, Any]:
    """Sign the evidence of a finished run; the DSSE envelope.

    Args:
        result: the session's result (statistics, transcript, sources, sent probes).
        owner_key: signs the bundle.
        probeset_proofs: registry proof bundle of each source's probe set entry, by source index.
        model_proofs: registry proof bundle of each model's entry, by model name.
    """
    tests = []
    for i, src in enumerate(result.sources):
        desc = src.describe()
        sent = sorted(set(result.sent.get(i, [])))
        tests.append(
            {
                **desc,
                "openings": [o.to_dict() for o in src.probes.open(sent)],
                "registry": probeset_proofs.get(i),
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
        "tests": tests,
        "models": [{"name": m, "registry": model_proofs.get(m)} for m in models],
        "statistics": stats.to_dict(),
        "verdict": stats.verdict,
        "p_value": stats.p_value,
        "model": stats.model,
    }
    return dsse.sign_envelope(owner_key, EVIDENCE_TYPE, payload)


def write_bundle(path: str | Path, envelope: Mapping[str, Any]) -> str:
    """Write the bundle atomically; its SHA-256 (hex)."""
    p = Path(path)
    data = canonical_json(dict(envelope)) + b"\n"
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
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


@dataclass(frozen=True)
class BundleCheck:
    """What a valid bundle establishes."""

    verdict: str
    p_value: float
    model: str | None
    suspect: str
    owner_key_id: str
    probes: int
    parts: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON form (``wm evidence check --json``)."""
        return {
            "valid": True,
            "verdict": self.verdict,
            "p_value": self.p_value,
            "model": self.model,
            "suspect": self.suspect,
            "owner_key_id": self.owner_key_id,
            "probes": self.probes,
            "checked": list(self.parts),
        }


def _fail(part: str, message: str) -> EvidenceError:
    return EvidenceError(f"{part}: {message}")


def _close(a: Any, b: Any, path: str = "") -> str | None:
    """Where two JSON values differ (floats to 1e-9 relative), or None."""
    if isinstance(a, bool) or isinstance(b, bool):
        return None if a is b else path or "value"
    if isinstance(a, int | float) and isinstance(b, int | float):
        if math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-300):
            return None
        return path or "value"
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            return f"{path}.keys" if path else "keys"
        for k in a:
            d = _close(a[k], b[k], f"{path}.{k}" if path else k)
            if d:
                return d
        return None
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return f"{path}.length"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            d = _close(x, y, f"{path}[{i}]")
            if d:
                return d
        return None
    return None if a == b else path or "value"


def check_bundle(envelope: Any, *, trusted_key_ids: set[str] | None = None) -> BundleCheck:
    """Verify an evidence bundle offline; raises on the first part that fails.

    Args:
        envelope: the bundle (a DSSE envelope as parsed JSON).
        trusted_key_ids: when given, the signer's key id must be one of them
            (otherwise the caller must compare :attr:`BundleCheck.owner_key_id`
            with the key the owner publishes).

    Raises:
        EvidenceError: ``"<part>: <what failed>"``, part one of :data:`PARTS`.
    """
    # -- signature
    try:
        claimed = dsse.payload_of(envelope)
        owner = claimed.get("owner")
        if not isinstance(owner, dict):
            raise _fail("signature", "the bundle names no owner key")
        pub = Ed25519PublicKey.from_public_bytes(b64d(str(owner.get("public_key")), what="owner key"))
        payload = dsse.verify_envelope(envelope, pub, payload_type=EVIDENCE_TYPE)
    except (IntegrityError, InputError, ValueError) as exc:
        raise _fail("signature", str(exc)) from exc
    kid = key_id_of(pub)
    if owner.get("key_id") != kid:
        raise _fail("signature", "the owner key id does not match the owner key")
    if trusted_key_ids is not None and kid not in trusted_key_ids:
        raise _fail("signature", f"signed by key {kid[:16]}, which is not trusted")
    if payload.get("type") != PAYLOAD_TYPE:
        raise _fail("signature", f"payload is not {PAYLOAD_TYPE}")
    try:
        return _check_payload(payload, kid)
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise EvidenceError(f"transcript: the bundle is malformed ({type(exc).__name__}: {exc})") from exc


def _check_payload(payload: dict[str, Any], kid: str) -> BundleCheck:
    tests: list[dict[str, Any]] = payload["tests"]
    models: list[dict[str, Any]] = payload["models"]
    if not tests:
        raise _fail("registry", "the bundle holds no tests")
    # -- registry
    for m in models:
        proof = m.get("registry")
        if not isinstance(proof, dict):
            raise _fail("registry", f"model {m.get('name')!r} has no registry proof")
        try:
            pc = check_proof_bundle(proof, owner_key=kid)
        except (IntegrityError, InputError) as exc:
            raise _fail("registry", f"model {m.get('name')!r}: {exc}") from exc
        if proof["entry"].get("payloadType") != MODEL_TYPE or pc.payload["record"].get("name") != m["name"]:
            raise _fail("registry", f"the proof for model {m['name']!r} is for another entry")
    names = {m["name"] for m in models}
    for i, t in enumerate(tests):
        proof = t.get("registry")
        if not isinstance(proof, dict):
            raise _fail("registry", f"test {i} has no registry proof")
        try:
            pc = check_proof_bundle(proof, owner_key=kid)
        except (IntegrityError, InputError) as exc:
            raise _fail("registry", f"test {i}: {exc}") from exc
        rec = pc.payload["record"]
        if proof["entry"].get("payloadType") != PROBESET_TYPE or pc.index != t["probeset_id"]:
            raise _fail("registry", f"test {i}: the proof is not for probe set {t['probeset_id']}")
        want = {
            "model": t["model"], "kind": t["kind"], "scheme": t["scheme"], "size": t["size"],
            "num_classes": t["num_classes"], "root": b64d(t["root"], what="root").hex(),
        }
        for k, v in want.items():
            if rec.get(k) != v:
                raise _fail("registry", f"test {i}: its {k} differs from the registered probe set")
        if _close(rec.get("null"), t["null"]) is not None:
            raise _fail("registry", f"test {i}: its null differs from the registered probe set")
        if t["model"] not in names:
            raise _fail("registry", f"test {i}: model {t['model']!r} has no registry proof")
    # -- openings
    opened: list[dict[int, ProbeOpening]] = []
    for i, t in enumerate(tests):
        root = b64d(t["root"], what="root")
        by_index: dict[int, ProbeOpening] = {}
        for od in t["openings"]:
            try:
                o = ProbeOpening.from_dict(od)
                if o.tree_size != t["size"]:
                    raise IntegrityError(f"probe {o.index} opens against a tree of another size")
                o.verify(root)
            except (IntegrityError, InputError) as exc:
                raise _fail("openings", f"test {i}: {exc}") from exc
            by_index[o.index] = o
        opened.append(by_index)
    # -- transcript
    transcript = payload["transcript"]
    header, records = transcript["header"], transcript["records"]
    sources = header["sources"]
    if len(sources) != len(tests):
        raise _fail("transcript", "the header lists another number of probe sets than the tests")
    for i, (s, t) in enumerate(zip(sources, tests, strict=True)):
        if s["root"] != t["root"] or s["model"] != t["model"] or s["kind"] != t["kind"]:
            raise _fail("transcript", f"header source {i} differs from test {i}")
    if header["suspect"] != payload["suspect"]:
        raise _fail("transcript", "the header names another suspect")
    used: list[set[int]] = [set() for _ in tests]
    seen_batches: set[int] = set()
    for r in records:
        if r.get("type") != "query":
            raise _fail("transcript", f"unexpected record type {r.get('type')!r}")
        if r["batch"] in seen_batches:
            raise _fail("transcript", f"batch {r['batch']} appears twice")
        seen_batches.add(r["batch"])
        if len(r["labels"]) != len(r["items"]):
            raise _fail(
                "transcript",
                f"batch {r['batch']}: {len(r['labels'])} labels for {len(r['items'])} inputs",
            )
        for src, idx, digest in r["items"]:
            if src == DECOY:
                continue
            if not 0 <= src < len(tests) or idx not in opened[src]:
                raise _fail("transcript", f"batch {r['batch']}: probe {src}/{idx} is not opened")
            if input_digest(np.asarray(opened[src][idx].input)) != digest:
                raise _fail("transcript", f"batch {r['batch']}: probe {src}/{idx} was not the opened input")
            used[src].add(idx)
    for i, by_index in enumerate(opened):
        if set(by_index) != used[i]:
            raise _fail("transcript", f"test {i}: opened probes differ from the probes sent")
    # -- statistics
    claimed = payload["statistics"]
    try:
        inputs = tests_from_records(sources, records, lambda s, i: opened[s][i].label)
        for i, t in enumerate(tests):
            if null_from_dict(t["null"]).to_dict() != null_from_dict(sources[i]["null"]).to_dict():
                raise _fail("statistics", f"test {i}: the header's null differs")
        stats = compute_statistics(
            inputs, alpha=float(claimed["alpha"]), mode=claimed["mode"], models=header.get("models"),
            futility=Futility.from_dict(header.get("futility")),
        )
    except InputError as exc:
        raise _fail("statistics", str(exc)) from exc
    where = _close(stats.to_dict(), claimed)
    if where is not None:
        raise _fail("statistics", f"recomputed statistics differ at {where}")
    for k, v in (("verdict", stats.verdict), ("p_value", stats.p_value), ("model", stats.model)):
        if _close(payload[k], v) is not None:
            raise _fail("statistics", f"the bundle's {k} differs from the recomputed one")
    return BundleCheck(
        verdict=stats.verdict,
        p_value=stats.p_value,
        model=stats.model,
        suspect=str(payload["suspect"]["url"]),
        owner_key_id=kid,
        probes=stats.probes,
        parts=PARTS,
    )
