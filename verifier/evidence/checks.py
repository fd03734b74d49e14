"""One function per part of the evidence checklist (:mod:`verifier.evidence.checklist`).

Each check reads what the earlier ones learnt from a :class:`CheckState`, and
returns one line saying what it established, raises :class:`NotDone` (the
pins given do not allow it; said plainly, never passed) or
:class:`CheckFailed` (the bundle does not hold; the message says why). The
order matters: nothing is believed before the signature under the pinned
owner key verifies, and the statistics are recomputed only from what the
earlier checks vouched for.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from core.canonical import b64e
from core.derive import expected_input, expected_label
from core.errors import InputError, IntegrityError
from core.nulls import BetaBinomial, Conformal, require_exact_null
from registry import dsse
from registry.keys import key_id_of
from registry.proofs import ProofCheck, check_proof_bundle
from registry.records import MODEL_TYPE, PROBESET_TYPE
from registry.timeproof import ProvenTime
from verifier.evidence.bundle import EVIDENCE_TYPE, PAYLOAD_TYPE
from verifier.evidence.claims import BundleClaims, parse_claims
from verifier.evidence.dating import TimeUnproven, commitment_time
from verifier.selection import correct_for_selection
from verifier.stats import Futility, Statistics, TestInput, compute_statistics
from verifier.transcript import DECOY, input_digest, tests_from_records

if TYPE_CHECKING:
    from verifier.evidence.checklist import Pins

__all__ = ["CHECKS", "CheckFailed", "CheckState", "NotDone"]


class CheckFailed(Exception):  # noqa: N818 - an outcome of a check, not a program error
    """The part failed; the message says why."""


class NotDone(Exception):  # noqa: N818 - an outcome of a check, not a program error
    """The part could not be done with what was pinned; the message says why."""


@dataclass
class CheckState:
    """What the parts learn, in order."""

    envelope: Any
    pins: Pins
    claims: BundleClaims | None = None
    key_id: str | None = None
    checkpoint: ProofCheck | None = None
    proofs: dict[int, ProofCheck] = field(default_factory=dict)
    kept: list[int] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    inputs: list[TestInput] = field(default_factory=list)
    futility: Futility | None = None
    stats: Statistics | None = None
    verdict: str | None = None
    p_value: float | None = None
    model: str | None = None
    trusted: list[str] = field(default_factory=list)

    @property
    def c(self) -> BundleClaims:
        assert self.claims is not None
        return self.claims


def _format(st: CheckState) -> str:
    try:
        payload = dsse.payload_of(st.envelope)
    except IntegrityError as exc:
        raise CheckFailed(str(exc)) from exc
    if payload.get("type") != PAYLOAD_TYPE:
        raise CheckFailed(f"the payload is not {PAYLOAD_TYPE}")
    try:
        st.claims = parse_claims(payload)
    except InputError as exc:
        raise CheckFailed(str(exc)) from exc
    if not st.c.tests:
        raise CheckFailed("the bundle holds no tests")
    return (f"a DSSE envelope over a {PAYLOAD_TYPE} payload: {len(st.c.tests)} probe sets, "
            f"{len(st.c.records)} answered requests")


def _owner_key(st: CheckState) -> str:
    try:
        public = Ed25519PublicKey.from_public_bytes(st.c.owner_public_key)
    except ValueError as exc:
        raise CheckFailed("the bundle's owner key is not an Ed25519 public key") from exc
    kid = key_id_of(public)
    if st.c.owner_key_id != kid:
        raise CheckFailed("the owner key id in the bundle is not that of its key")
    try:
        dsse.verify_envelope(st.envelope, public, payload_type=EVIDENCE_TYPE)
    except IntegrityError as exc:
        raise CheckFailed(str(exc)) from exc
    st.key_id = kid
    if st.pins.owner_key_ids:
        if kid not in st.pins.owner_key_ids:
            raise CheckFailed(f"signed by key {kid[:16]}, not by the pinned owner key "
                          f"{', '.join(sorted(k[:16] for k in st.pins.owner_key_ids))}")
        st.trusted.append(f"owner key {kid[:16]} is the owner's ({st.pins.key_source})")
        return f"signature verifies under the pinned owner key {kid[:16]} ({st.c.owner_name!r})"
    st.trusted.append("UNTRUSTED: the owner key was taken from the bundle itself (--trust-embedded-key)")
    raise NotDone(f"UNTRUSTED: signature verifies under key {kid[:16]} found inside the bundle, "
                   "which no one pinned (--trust-embedded-key)")


def _proof(proof: Mapping[str, Any], kid: str, what: str) -> ProofCheck:
    try:
        return check_proof_bundle(proof, owner_key=kid)
    except (InputError, IntegrityError) as exc:
        raise CheckFailed(f"{what}: {exc}") from exc


def _registry(st: CheckState) -> str:
    assert st.key_id is not None
    checks: list[ProofCheck] = []
    names = set()
    for m in st.c.models:
        pc = _proof(m.registry, st.key_id, f"model {m.name!r}")
        if m.registry.get("entry", {}).get("payloadType") != MODEL_TYPE or pc.payload["record"].get(
                "name") != m.name:
            raise CheckFailed(f"the proof for model {m.name!r} is for another entry")
        names.add(m.name)
        checks.append(pc)
    for i, t in enumerate(st.c.tests):
        pc = _proof(t.registry, st.key_id, f"test {i}")
        rec = pc.payload["record"]
        if t.registry.get("entry", {}).get("payloadType") != PROBESET_TYPE or pc.index != t.probeset_id:
            raise CheckFailed(f"test {i}: the proof is not for probe set {t.probeset_id}")
        claimed = {
            "model": t.model, "kind": t.kind, "scheme": t.scheme, "size": t.size,
            "num_classes": t.num_classes, "input_shape": list(t.input_shape), "root": t.root.hex(),
            "null": dict(t.null_dict),
            "derivation": None if t.derivation is None else t.derivation.to_dict(),
        }
        for k, v in claimed.items():
            if rec.get(k) != v:
                raise CheckFailed(f"test {i}: its {k} differs from the registered probe set")
        if t.model not in names:
            raise CheckFailed(f"test {i}: model {t.model!r} has no registry proof")
        st.proofs[i] = pc
        checks.append(pc)
    origins = {pc.origin for pc in checks}
    if len(origins) != 1:
        raise CheckFailed(f"the entries come from {len(origins)} different logs")
    st.checkpoint = max(checks, key=lambda pc: pc.tree_size)
    return (f"{len(st.c.models)} models and {len(st.c.tests)} probe sets are entries of log "
            f"{st.checkpoint.origin!r} signed by the owner key, in its checkpoint of "
            f"{st.checkpoint.tree_size} entries")


def _time(st: CheckState) -> str:
    pins = st.pins
    pinned = pins.tsa_ca_pem is not None or bool(pins.witness_keys)
    st.kept = list(range(len(st.c.tests)))
    if pins.suspect_since is None and not pinned:
        st.trusted.append("time: owner's word only (no --suspect-since, --tsa-ca or --witness-key)")
        raise NotDone("time: owner's word only; pass --suspect-since TIME with --tsa-ca or --witness-key")
    assert st.checkpoint is not None and st.c is not None
    proven: dict[int, tuple[ProvenTime, ...]] = {}
    reasons: dict[int, str] = {}
    for i, t in enumerate(st.c.tests):
        try:
            proven[i] = commitment_time(t, st.proofs[i], st.c.owner_name, st.c.owner_public_key,
                                        tsa_ca_pem=pins.tsa_ca_pem, witness_keys=pins.witness_keys)
        except TimeUnproven as exc:
            reasons[i] = str(exc)
    described = "; ".join(f"set {i} by " + ", ".join(f"{t.by} at {t.time.isoformat()}" for t in ts)
                          for i, ts in proven.items())
    if pins.suspect_since is None:
        st.trusted.append("time: not compared with the suspect (no --suspect-since)")
        raise NotDone(f"no --suspect-since given; proven: {described or 'none'}")
    since = pins.suspect_since
    st.kept = [i for i in proven if proven[i][0].time < since]
    for i in range(len(st.c.tests)):
        if i in reasons:
            st.dropped.append(f"set {i} (probe set {st.c.tests[i].probeset_id}): {reasons[i]}")
        elif i not in st.kept:
            st.dropped.append(f"set {i} (probe set {st.c.tests[i].probeset_id}): committed by "
                              f"{proven[i][0].time.isoformat()}, not before {since.isoformat()}")
    authorities = sorted({t.by for i in st.kept for t in proven[i]})
    st.trusted.append(f"time: {', '.join(authorities) or 'nobody'} (pinned by you)")
    if not st.kept:
        raise CheckFailed(f"no probe set is proven committed before {since.isoformat()}; dropped: "
                      + "; ".join(st.dropped))
    dropped = f"; dropped {'; '.join(st.dropped)}" if st.dropped else ""
    return (f"{len(st.kept)} of {len(st.c.tests)} probe sets proven committed before "
            f"{since.isoformat()} ({described}){dropped}")


def _nulls(st: CheckState) -> str:
    kinds = []
    for i, t in enumerate(st.c.tests):
        try:
            require_exact_null(t.kind, t.null, t.num_classes)
        except InputError as exc:
            raise CheckFailed(f"test {i}: {exc}") from exc
        if t.kind not in ("watermark", "guard", "fingerprint"):
            raise CheckFailed(f"test {i}: unknown kind {t.kind!r}")
        # Fail closed: N references vouch for no tail below 1/(N + 1), whatever the set claims.
        if isinstance(t.null, BetaBinomial) and t.null.p_floor < 1.0 / (t.null.references + 1) * (1 - 1e-12):
            raise CheckFailed(f"test {i}: its null claims a floor of {t.null.p_floor:.3g}, below "
                              f"1/(K+1) for its {t.null.references} references")
        kinds.append(t.kind)
    calibrated = [i for i, k in enumerate(kinds) if k == "fingerprint"]
    conformal = [i for i in calibrated if isinstance(st.c.tests[i].null, Conformal)]
    if calibrated:
        st.trusted.append(f"the calibrated nulls of sets {calibrated}, as committed with them "
                          "(worth what their commitment's time is worth)")
    return ("key-random sets use p0 = 1/C exactly"
            + (f"; sets {calibrated} carry the calibrated null they committed" if calibrated else "")
            + (f"; sets {conformal} commit their references' matches (conformal p recomputed, "
               "floor 1/(K+1))" if conformal else ""))


def _derivation(st: CheckState) -> str:
    opened, probes, inputs = [], 0, 0
    committed_inputs = []
    for i, t in enumerate(st.c.tests):
        if t.derivation_key is None:
            continue
        if t.derivation is None:
            raise CheckFailed(f"test {i}: a derivation key is opened but none was committed")
        if not t.derivation.opens_with(t.derivation_key):
            raise CheckFailed(f"test {i}: the opened derivation key is not the one committed")
        for o in t.openings:
            try:
                label = expected_label(t.derivation, t.derivation_key, o.index, t.num_classes, o.input)
                x = expected_input(t.derivation, t.derivation_key, o.index, t.input_shape)
            except InputError as exc:
                raise CheckFailed(f"test {i}: probe {o.index}: {exc}") from exc
            if label != o.label:
                raise CheckFailed(f"test {i}: probe {o.index} carries label {o.label}, "
                              f"its key derives {label}")
            if x is not None:
                if x.tobytes() != o.input.astype("<f4").tobytes():
                    raise CheckFailed(f"test {i}: probe {o.index}'s input is not the one its key derives")
                inputs += 1
        if not t.derivation.data_free:
            committed_inputs.append(i)
        opened.append(i)
        probes += len(t.openings)
    if not opened:
        keyed = [i for i, t in enumerate(st.c.tests) if t.derivation is not None]
        st.trusted.append("labels: drawn by the committed keys on the owner's word "
                          "(no derivation key opened; wm verify --open-keys opens them)")
        raise NotDone(f"no derivation key opened (sets {keyed} commit to one); "
                       "their labels rest on the commitment and its time")
    if committed_inputs:
        st.trusted.append(f"the inputs of sets {committed_inputs} were chosen from data at "
                          "commitment: they rest on the commitment's time")
    return (f"{len(opened)} opened keys match their commitments and re-derive all {probes} opened "
            f"labels and {inputs} data-free inputs")


def _openings(st: CheckState) -> str:
    n = 0
    for i, t in enumerate(st.c.tests):
        for o in t.openings:
            if o.tree_size != t.size or not 0 <= o.index < t.size:
                raise CheckFailed(f"test {i}: probe {o.index} opens against a tree of another size")
            if tuple(o.input.shape) != t.input_shape:
                raise CheckFailed(f"test {i}: probe {o.index} has another input shape than the set")
            try:
                o.verify(t.root)
            except IntegrityError as exc:
                raise CheckFailed(f"test {i}: {exc}") from exc
            n += 1
    return f"{n} opened probes open against their sets' Merkle roots"


def _counting(st: CheckState) -> str:
    ids = [t.probeset_id for t in st.c.tests]
    roots = [t.root for t in st.c.tests]
    if len(set(ids)) != len(ids) or len(set(roots)) != len(roots):
        raise CheckFailed("a probe set is tested twice")
    digests: dict[str, tuple[int, int]] = {}
    for i, t in enumerate(st.c.tests):
        seen: set[int] = set()
        for o in t.openings:
            if o.index in seen:
                raise CheckFailed(f"test {i}: probe {o.index} is opened twice")
            seen.add(o.index)
            d = input_digest(o.input)
            if d in digests:
                raise CheckFailed(f"test {i}: probe {o.index} has the same input as probe "
                              f"{digests[d][1]} of test {digests[d][0]}")
            digests[d] = (i, o.index)
    batches: set[int] = set()
    sent: set[tuple[int, int]] = set()
    for r in st.c.records:
        if r.batch in batches:
            raise CheckFailed(f"batch {r.batch} appears twice")
        batches.add(r.batch)
        for src, idx, _ in r.items:
            if src == DECOY:
                continue
            if (src, idx) in sent:
                raise CheckFailed(f"batch {r.batch}: probe {src}/{idx} was already counted")
            sent.add((src, idx))
    return f"{len(ids)} distinct probe sets, {len(sent)} distinct probes, {len(digests)} distinct inputs"


def _transcript(st: CheckState) -> str:
    c = st.c
    if len(c.header_sources) != len(c.tests):
        raise CheckFailed("the header lists another number of probe sets than the tests")
    for i, (s, t) in enumerate(zip(c.header_sources, c.tests, strict=True)):
        want = {"model": t.model, "kind": t.kind, "root": b64e(t.root), "probeset_id": t.probeset_id,
                "null": dict(t.null_dict)}
        if any(s.get(k) != v for k, v in want.items()):
            raise CheckFailed(f"header source {i} differs from test {i}")
    if c.header.get("suspect") != dict(c.suspect):
        raise CheckFailed("the header names another suspect")
    named = set(c.models_named)
    if not {t.model for t in c.tests} <= named or {m.name for m in c.models} != named:
        raise CheckFailed("the models named differ between the header, the tests and the proofs")
    opened = [{o.index: o for o in t.openings} for t in c.tests]
    used: list[set[int]] = [set() for _ in c.tests]
    decoys_used: set[int] = set()
    for r in c.records:
        for src, idx, digest in r.items:
            if src == DECOY:
                if idx not in c.decoys or input_digest(c.decoys[idx]) != digest:
                    raise CheckFailed(f"batch {r.batch}: decoy {idx} is not the included input")
                decoys_used.add(idx)
                continue
            if not 0 <= src < len(c.tests) or idx not in opened[src]:
                raise CheckFailed(f"batch {r.batch}: probe {src}/{idx} is not opened")
            if input_digest(opened[src][idx].input) != digest:
                raise CheckFailed(f"batch {r.batch}: probe {src}/{idx} was not the opened input")
            used[src].add(idx)
    for i, by_index in enumerate(opened):
        if set(by_index) != used[i]:
            raise CheckFailed(f"test {i}: opened probes differ from the probes sent")
    if set(c.decoys) != decoys_used:
        raise CheckFailed("the included decoys differ from the decoys sent")
    st.trusted.append("the suspect's answers as the owner recorded them "
                      "(wm evidence replay re-sends the queries to check them)")
    return (f"{len(c.records)} requests name only opened probes ({sum(map(len, used))}) "
            f"and included decoys ({len(decoys_used)})")


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


def _statistics(st: CheckState) -> str:
    c = st.c
    # Model, kind and null as registered; the unspent count (the futility rule's population) as
    # the header says: it can only make a run stop early as "not owned", never as "owned".
    # The scheme as registered too: it alone says whether a set is read from second choices.
    sources = [{"model": t.model, "kind": t.kind, "null": dict(t.null_dict), "scheme": t.scheme,
                "unspent": s.get("unspent")} for t, s in zip(c.tests, c.header_sources, strict=True)]
    labels = [{o.index: o.label for o in t.openings} for t in c.tests]
    try:
        st.inputs = tests_from_records(sources, [dict(r.raw) for r in c.records],
                                       lambda s, i: labels[s][i])
        st.futility = Futility.from_dict(c.header.get("futility"))
        stats = compute_statistics(st.inputs, alpha=c.alpha, mode=c.mode, models=c.models_named,
                                   futility=st.futility)
    except InputError as exc:
        raise CheckFailed(str(exc)) from exc
    where = _close(stats.to_dict(), dict(c.statistics))
    if where is not None:
        raise CheckFailed(f"recomputed statistics differ at {where}")
    st.stats = stats
    return (f"{stats.probes} answered probes give p = {stats.p_value:.3g} "
            f"({stats.mode}, alpha {stats.alpha:g}), as signed")


def _selection(st: CheckState) -> str:
    c = st.c
    assert st.checkpoint is not None and st.stats is not None
    committed = st.checkpoint.probesets
    if committed is None:
        raise CheckFailed("the log does not prove how many probe sets it held at its checkpoint "
                      "(no signed count in the checkpoint's last entry)")
    kept = [st.inputs[i] for i in st.kept]
    stats = compute_statistics(kept, alpha=st.stats.alpha, mode=st.stats.mode,
                               models=c.models_named, futility=st.futility) if kept else None
    if stats is None:
        raise CheckFailed("no probe set is left to decide on")
    try:
        selection = correct_for_selection(stats, committed)
    except InputError as exc:
        raise CheckFailed(str(exc)) from exc
    st.verdict, st.p_value, st.model = selection.verdict, selection.p_value, selection.model
    st.trusted.append(f"the count of {committed} probe sets in the log at its checkpoint of "
                      f"{st.checkpoint.tree_size} entries, signed by the owner in its last entry "
                      "(a false count contradicts the signed entries before it, which an audit "
                      "of the whole log finds)")
    return (f"{committed} probe sets in the log by its checkpoint (every owner's: at least "
            f"every one this owner could have chosen) counted; {len(kept)} tested sets give "
            f"corrected p = {selection.p_value:.3g}")


def _verdict(st: CheckState) -> str:
    c = st.c
    if st.verdict != c.verdict:
        raise CheckFailed(f"the bundle says {c.verdict}; under your pins: {st.verdict} "
                      f"(p = {st.p_value:.3g})")
    assert st.p_value is not None
    if not st.dropped and not math.isclose(st.p_value, c.p_value, rel_tol=1e-9, abs_tol=1e-300):
        raise CheckFailed(f"the bundle's p-value {c.p_value:.3g} differs from the recomputed "
                      f"{st.p_value:.3g}")
    return f"{st.verdict} (model {st.model}, p = {st.p_value:.3g}) stands"


CHECKS: tuple[Callable[[CheckState], str], ...] = (
    _format, _owner_key, _registry, _time, _nulls, _derivation, _openings, _counting,
    _transcript, _statistics, _selection, _verdict,
)


