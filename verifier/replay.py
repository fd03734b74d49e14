"""``wm evidence replay``: a third party re-sends a bundle's recorded queries to the suspect itself.

DESIGN.md, "Trust": the transcript says what the suspect answered, but it is
the owner's record. Replay lets whoever checks the bundle ask the suspect
again: every recorded batch, in the recorded order, with the same inputs
(opened probes and the decoys the bundle includes), so the suspect sees the
very queries it saw before. For each batch it reports how many labels agree
with the recorded ones and whether the answer's SHA-256 is the recorded one;
then it recomputes the statistics on its *own* answers (the same
:func:`~verifier.stats.compute_statistics` and selection correction the
checker uses, over the probe sets the checker counted) and says whether the
bundle's verdict stands on them.

The bundle is checked offline first (:func:`verifier.evidence.run_checks`,
against the replayer's pins); a bundle that fails is not replayed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from core.errors import EvidenceError, InputError
from verifier.evidence import Checklist, Pins, run_checks
from verifier.evidence.claims import BundleClaims
from verifier.selection import Selection, correct_for_selection
from verifier.stats import Futility, Statistics, compute_statistics
from verifier.transcript import DECOY, tests_from_records

if TYPE_CHECKING:
    import httpx

    from verifier.wire.transport import HttpSettings

__all__ = ["BatchReplay", "Replay", "recorded_batches", "replay_bundle"]


@dataclass(frozen=True)
class BatchReplay:
    """One recorded batch sent again: how far the new answer agrees with the recorded one."""

    batch: int
    inputs: int
    agreed: int
    same_answer: bool

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"batch": self.batch, "inputs": self.inputs, "agreed": self.agreed,
                "same_answer": self.same_answer}


@dataclass(frozen=True)
class Replay:
    """The replayed run: per-batch agreement and the evidence on the replayed answers."""

    checklist: Checklist
    batches: tuple[BatchReplay, ...]
    statistics: Statistics
    selection: Selection

    @property
    def stands(self) -> bool:
        """Whether the bundle's verdict is also the verdict on the replayed answers."""
        return self.selection.verdict == self.checklist.bundle_verdict

    def to_dict(self) -> dict[str, Any]:
        """The object ``wm evidence replay --json`` prints."""
        return {
            "stands": self.stands,
            "bundle_verdict": self.checklist.bundle_verdict,
            "verdict": self.selection.verdict,
            "p_value": self.selection.p_value,
            "model": self.selection.model,
            "committed": self.selection.committed,
            "probes": self.statistics.probes,
            "inputs": sum(b.inputs for b in self.batches),
            "agreed": sum(b.agreed for b in self.batches),
            "same_answers": sum(b.same_answer for b in self.batches),
            "batches": [b.to_dict() for b in self.batches],
            "statistics": self.statistics.to_dict(),
        }


def recorded_batches(claims: BundleClaims) -> list[tuple[int, np.ndarray]]:
    """Each recorded batch's number and inputs ``[n, *shape]``, in the recorded order."""
    opened = [{o.index: o.input for o in t.openings} for t in claims.tests]
    return [
        (r.batch, np.stack([claims.decoys[i] if s == DECOY else opened[s][i] for s, i, _ in r.items]))
        for r in claims.records
    ]


def replay_bundle(
    envelope: Any,
    pins: Pins,
    suspect: str,
    *,
    protocol: str | None = None,
    settings: HttpSettings | None = None,
    transport: httpx.BaseTransport | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Replay:
    """Check ``envelope`` against ``pins``, send its recorded batches to ``suspect``, recompute.

    Args:
        envelope: the bundle.
        pins: what the replayer pinned (as for ``wm evidence check``).
        suspect: the suspect's endpoint URL now.
        protocol: the protocol to speak; default the one the bundle recorded.
        settings: HTTP settings (timeouts, headers); one request at a time, in order.
        transport: an httpx transport (tests).
        progress: called as ``progress(done, total)`` after each request.

    Raises:
        EvidenceError: the bundle does not check (nothing is sent).
        InputError: no owner key pinned, or no protocol to speak.
        SuspectError: the suspect failed.
    """
    from verifier.wire.detect import PROTOCOLS, make_client
    from verifier.wire.transport import HttpSettings

    checklist = run_checks(envelope, pins)
    failure = checklist.failure
    if failure is not None:
        raise EvidenceError(failure.detail, part=failure.part)
    claims, committed = checklist.claims, checklist.committed
    if claims is None or committed is None:
        raise InputError("the bundle was checked without a claim to replay")
    kind = protocol or claims.suspect.get("protocol")
    if kind not in PROTOCOLS or kind == "auto":
        raise InputError(f"the bundle recorded no protocol to replay with ({kind!r})", hint="pass --protocol")
    base = settings or HttpSettings()
    client = make_client(str(kind), suspect, num_classes=claims.tests[0].num_classes,
                         input_shape=claims.tests[0].input_shape, transport=transport,
                         settings=dataclasses.replace(base, concurrency=1))
    batches: list[BatchReplay] = []
    records: list[dict[str, Any]] = []
    sent = recorded_batches(claims)
    with client:
        client.describe()  # reads the endpoint's metadata (input names, shapes), as wm verify does
        for n, (record, (batch, x)) in enumerate(zip(claims.records, sent, strict=True), start=1):
            answer = client.infer(x)
            labels = [int(v) for v in answer.labels]
            agreed = sum(a == b for a, b in zip(labels, record.labels, strict=True))
            batches.append(BatchReplay(batch, len(labels), agreed,
                                       answer.response_sha256 == record.raw.get("response_sha256")))
            rec: dict[str, Any] = {"type": "query", "items": [list(it) for it in record.items],
                                   "labels": labels}
            if answer.seconds is not None:  # read by dark-knowledge sets (core.nulls.answer_rank)
                rec["seconds"] = [int(v) for v in answer.seconds]
            records.append(rec)
            if progress is not None:
                progress(n, len(sent))
    sources = [{"model": t.model, "kind": t.kind, "null": dict(t.null_dict), "scheme": t.scheme,
                "unspent": s.get("unspent")}
               for t, s in zip(claims.tests, claims.header_sources, strict=True)]
    committed_labels = [{o.index: o.label for o in t.openings} for t in claims.tests]
    tests = tests_from_records(sources, records, lambda s, i: committed_labels[s][i])
    stats = compute_statistics([tests[i] for i in checklist.counted], alpha=claims.alpha,
                               mode=claims.mode, models=claims.models_named,
                               futility=Futility.from_dict(claims.header.get("futility")))
    return Replay(checklist=checklist, batches=tuple(batches), statistics=stats,
                  selection=correct_for_selection(stats, committed))
