"""``wm verify`` end to end: registry probe sets → suspect queries → signed evidence → log.

:func:`verify_suspect` loads the named models' committed probe sets from the
registry (only unspent probes are planned), talks to the suspect, spends each
probe in the registry before it is sent, writes the MAC-chained transcript as
it goes (the MAC key derived from the owner key), then takes a registry
checkpoint and builds and signs the evidence bundle: the registry's inclusion
proofs, each set's earliest third-party-timed checkpoint, the verdict
corrected for every probe set in the log (the checkpoint's last entry signs
their count; :mod:`verifier.selection`), and with ``--open-keys`` the sets' derivation keys
(those sets are burnt: every probe left is spent). It writes the HTML report
beside the bundle and appends the verification to the registry log.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import torch

from core.canonical import b64e
from core.data import decoy_data
from core.errors import InputError, RegistryError
from registry.keys import OwnerKey
from registry.log import Registry
from registry.note import parse_checkpoint
from registry.proofs import check_proof_bundle
from registry.records import PROBESET_TYPE
from verifier.evidence import build_bundle, write_bundle
from verifier.report import write_report
from verifier.selection import Selection, correct_for_selection
from verifier.session import ProbeSource, QueryPlan, SessionResult, VerificationSession
from verifier.stats import Mode
from verifier.transcript import MAC_INFO, read_transcript
from verifier.wire.client import Detection, SuspectClient
from verifier.wire.detect import detect, make_client
from verifier.wire.transport import HttpSettings

__all__ = [
    "VerifyOptions",
    "VerifyOutcome",
    "default_paths",
    "load_sources",
    "probesets_in_log",
    "time_proof",
    "verify_suspect",
]

TRANSCRIPT_SUFFIX = ".transcript.jsonl"


@dataclass(frozen=True)
class VerifyOptions:
    """What ``wm verify`` was asked to do (see its ``--help``)."""

    suspect: str
    models: tuple[str, ...]
    protocol: str = "auto"
    alpha: float = 1e-6
    budget: int = 100
    batch_size: int = 16
    decoy_ratio: float = 1.0
    mode: Mode = "sequential"
    evidence: Path | None = None
    resume: Path | None = None
    settings: HttpSettings = field(default_factory=HttpSettings)
    json_input_field: str = "inputs"
    json_output_field: str = "outputs"
    input_name: str | None = None
    open_keys: bool = False


@dataclass(frozen=True)
class VerifyOutcome:
    """What a verification produced."""

    result: SessionResult
    selection: Selection
    detection: Detection
    evidence: Path
    evidence_sha256: str
    report: Path
    transcript: Path
    log_entry: int

    def to_json(self) -> dict[str, Any]:
        """The object ``wm verify --json`` prints."""
        st = self.result.statistics
        return {
            "verdict": self.selection.verdict,
            "model": self.selection.model,
            "p_value": self.selection.p_value,
            "committed": self.selection.committed,
            "alpha": st.alpha,
            "mode": st.mode,
            "queries": st.probes,
            "decoys": self.result.decoys,
            "requests": self.result.requests,
            "stopped_early": self.result.stopped_early,
            "futility": st.to_dict()["futility"],
            "protocol": self.detection.protocol,
            "detected": self.detection.detail,
            "tests": [t.to_dict() for t in st.tests],
            "warnings": self.result.warnings,
            "models": [
                {"model": m.model, "p_value": m.p_value, "p_adjusted": m.p_adjusted}
                for m in st.models
            ],
            "evidence": str(self.evidence),
            "evidence_sha256": self.evidence_sha256,
            "report": str(self.report),
            "transcript": str(self.transcript),
            "log_entry": self.log_entry,
        }


def default_paths(evidence: Path | None, resume: Path | None) -> tuple[Path, Path, Path]:
    """``(bundle, transcript, report)`` paths: beside ``--evidence``, or from ``--resume``."""
    if evidence is None and resume is not None:
        name = resume.name
        stem = name[: -len(TRANSCRIPT_SUFFIX)] if name.endswith(TRANSCRIPT_SUFFIX) else resume.stem
        evidence = resume.with_name(stem if stem.endswith(".json") else stem + ".json")
    if evidence is None:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        evidence = Path(f"wm-evidence-{stamp}.json")
    transcript = resume if resume is not None else evidence.with_name(evidence.name + TRANSCRIPT_SUFFIX)
    report = evidence.with_suffix(".html")
    return evidence, transcript, report


def load_sources(
    registry: Registry, owner_key: OwnerKey, models: Sequence[str],
    probeset_ids: Sequence[int] | None = None,
) -> list[ProbeSource]:
    """The committed probe sets of ``models`` (or exactly ``probeset_ids``), with unspent probes.

    Raises:
        RegistryError: an unknown model, or a model with no committed probe set.
    """
    sources: list[ProbeSource] = []
    if probeset_ids is not None:
        for pid in probeset_ids:
            ps = registry.load_probeset(pid, owner_key)
            model = next((i.model for m in models for i in registry.probesets(m) if i.id == pid), None)
            if model is None:
                raise RegistryError(f"probe set {pid} belongs to none of the models {list(models)}")
            sources.append(ProbeSource(model, ps, tuple(registry.unspent_indices(pid)), pid))
        return sources
    for name in models:
        registry.model(name)
        infos = registry.probesets(name)
        if not infos:
            raise RegistryError(
                f"model {name!r} has no committed watermark or fingerprint",
                hint="register it with its .wmkey, or run `wm fingerprint`",
            )
        for info in infos:
            ps = registry.load_probeset(info.id, owner_key)
            sources.append(ProbeSource(name, ps, tuple(registry.unspent_indices(info.id)), info.id))
    return sources


def _client(options: VerifyOptions, num_classes: int, input_shape: tuple[int, ...],
            transport: httpx.BaseTransport | None) -> tuple[SuspectClient, Detection]:
    kwargs: dict[str, Any] = {
        "num_classes": num_classes, "input_shape": input_shape,
        "settings": options.settings, "transport": transport,
    }
    kwargs |= {"input_field": options.json_input_field, "output_field": options.json_output_field,
               "input_name": options.input_name}
    if options.protocol == "auto":
        return detect(options.suspect, **kwargs)
    client = make_client(options.protocol, options.suspect, **kwargs)
    try:
        return client, client.describe()
    except BaseException:
        client.close()
        raise


def probesets_in_log(registry: Registry) -> int:
    """How many probe sets the log holds now (every owner's; the session's selection count)."""
    return len(registry.entries(payload_type=PROBESET_TYPE))


def time_proof(registry: Registry, owner_key: OwnerKey, entry_index: int) -> dict[str, Any] | None:
    """The earliest checkpoint by ``owner_key`` covering ``entry_index`` that carries third-party
    time (an RFC 3161 token or a witness cosignature), with the entry's inclusion proof in it;
    None when there is none."""

    def third_party(note: str, token: bytes | None) -> bool:
        return token is not None or any(name != owner_key.name for name, _, _ in parse_checkpoint(note)[2])

    timed = [cp for cp in registry.checkpoints()
             if cp.size > entry_index and cp.signer_key_id == owner_key.key_id
             and third_party(cp.note, cp.tsa_token)]
    if not timed:
        return None
    cp = min(timed, key=lambda c: c.id)
    return {
        "checkpoint": cp.note,
        "tsa_token": b64e(cp.tsa_token) if cp.tsa_token else None,
        "inclusion": registry.inclusion_proof(entry_index, cp.size).to_dict(),
    }


def verify_suspect(
    registry: Registry,
    owner_key: OwnerKey,
    options: VerifyOptions,
    decoys: torch.Tensor | None,
    *,
    transport: httpx.BaseTransport | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> VerifyOutcome:
    """Run a verification (or resume one) and record its evidence; see the module docstring.

    ``decoys`` are in-distribution inputs to shuffle the probes among; ``None``
    takes them from the test split of the data the models were trained on, as
    the registry records it (:func:`core.data.decoy_data`).

    Raises:
        InputError, RegistryError, KeyError_: bad options, registry or key problems, or a
            transcript to resume whose MAC chain fails.
        SuspectError: the suspect failed; the transcript keeps what was answered.
    """
    evidence, transcript, report = default_paths(options.evidence, options.resume)
    models = list(dict.fromkeys(options.models))
    mac_key = owner_key.derive_key(MAC_INFO)
    if options.resume is not None:
        header = read_transcript(options.resume, mac_key=mac_key).header
        ids = [s.get("probeset_id") for s in header.get("sources", [])]
        if any(not isinstance(i, int) for i in ids):
            raise InputError("--resume: the transcript's probe sets are not from the registry")
        models = list(dict.fromkeys(header.get("models") or models))
        sources = load_sources(registry, owner_key, models, ids)
    else:
        if not models:
            raise InputError("name at least one registered model with --model")
        sources = load_sources(registry, owner_key, models)
    if decoys is None:
        decoys = decoy_data(None, {m: registry.model(m).data for m in models}).test.x
    first = sources[0].probes
    client, detection = _client(options, first.num_classes, first.input_shape, transport)
    reason = f"verify {options.suspect}"
    committed = probesets_in_log(registry)

    claim: list[str] = []  # this verification's id: the digest of its transcript's header line

    def spend(src: int, indices: list[int]) -> None:
        pid = sources[src].probeset_id
        assert pid is not None
        if not claim:  # the header is written before the first batch is spent, and kept on resume
            with open(transcript, "rb") as f:
                claim.append(hashlib.sha256(f.readline()).hexdigest())
        registry.spend(owner_key, pid, indices, reason, claim=claim[0])

    with client:
        if options.resume is not None:
            session = VerificationSession.resume(
                options.resume, client, sources, decoys, mac_key=mac_key, spend=spend,
                detection=detection, committed=committed,
            )
        else:
            plan = QueryPlan.for_session(
                sources, mode=options.mode, alpha=options.alpha, models=models,
                decoy_count=int(decoys.shape[0]), budget=options.budget,
                batch_size=min(options.batch_size, client.max_batch or options.batch_size),
                decoy_ratio=options.decoy_ratio,
            )
            session = VerificationSession(
                client, sources, decoys, plan, transcript, alpha=options.alpha,
                mode=options.mode, models=models, spend=spend, detection=detection,
                mac_key=mac_key, committed=committed,
            )
        result = session.run(progress=progress)
    if options.open_keys:
        for s in sources:
            left = registry.unspent_indices(s.probeset_id) if s.probeset_id is not None else []
            if s.probes.derivation_key is not None and left and s.probeset_id is not None:
                registry.spend(owner_key, s.probeset_id, left, f"derivation key opened: {reason}")
    registry.checkpoint(owner_key)
    probeset_proofs = {
        i: registry.proof_bundle(s.probeset_id) for i, s in enumerate(sources) if s.probeset_id is not None
    }
    model_proofs = {m: registry.proof_bundle(registry.model(m).entry_index) for m in models}
    checked = [check_proof_bundle(p, owner_key=owner_key.key_id)
               for p in [*probeset_proofs.values(), *model_proofs.values()]]
    counted = max(checked, key=lambda pc: pc.tree_size).probesets
    if counted is None:
        raise RegistryError("the registry's checkpoint does not sign its count of probe sets")
    selection = correct_for_selection(result.statistics, counted)
    time_proofs = {
        i: proof for i, s in enumerate(sources)
        if s.probeset_id is not None and (proof := time_proof(registry, owner_key, s.probeset_id)) is not None
    }
    envelope = build_bundle(
        result, owner_key, selection, probeset_proofs=probeset_proofs, model_proofs=model_proofs,
        time_proofs=time_proofs, open_keys=options.open_keys,
    )
    digest = write_bundle(evidence, envelope)
    from registry.dsse import payload_of

    write_report(report, payload_of(envelope), bundle_name=evidence.name, bundle_sha256=digest)
    st = result.statistics
    entry = registry.add_verification(
        owner_key,
        {
            "suspect": options.suspect,
            "verdict": selection.verdict,
            "model": selection.model,
            "models": models,
            "p_value": selection.p_value,
            "alpha": st.alpha,
            "queries": st.probes,
            "probesets": [s.probeset_id for s in sources],
            "evidence_sha256": digest,
            "transcript_sha256": hashlib.sha256(Path(transcript).read_bytes()).hexdigest(),
        },
    )
    return VerifyOutcome(
        result=result, selection=selection, detection=detection, evidence=evidence,
        evidence_sha256=digest, report=report, transcript=transcript, log_entry=entry,
    )
