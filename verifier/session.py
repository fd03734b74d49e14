"""The verification session: sends a query plan, writes the transcript, stops, resumes.

The :class:`VerificationSession` sends the batches of a :class:`~verifier.plan.QueryPlan`
(up to ``concurrency`` in flight), records spent probes *before* each batch
leaves, and writes the transcript as it goes (:mod:`verifier.transcript`: JSON
Lines, MAC-chained under a key derived from the owner key, each line flushed
and fsynced). After every answered batch the anytime-valid statistics
(:mod:`verifier.stats`) are updated in plan order (corrected, when the session
knows it, for every probe set the owner committed: :mod:`verifier.selection`);
in sequential mode the session stops once they reach ``alpha`` or rule
every model out (:class:`~verifier.futility.Futility`), and never sends a batch
while the batches in flight could already decide either way (a batch sent then
might be spent for nothing).
:meth:`VerificationSession.resume` reads a transcript back, refuses one whose
MAC chain fails (naming the line), drops a torn last line, and continues with
the batches that have no answer, so no answered query is repeated. The decoys
a run sent are kept in its result, so the evidence bundle carries them and a
third party can replay the run (``wm evidence replay``). The plan's names are
re-exported here.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.canonical import b64d, b64e
from core.clock import utc_now
from core.errors import InputError, SuspectError, WmError
from verifier.plan import FOLLOW_UP_PROBES, PlanItem, ProbeSource, QueryPlan, first_decision
from verifier.selection import correct_for_selection
from verifier.stats import Futility, Mode, Statistics, compute_statistics
from verifier.transcript import (
    DECOY,
    TRANSCRIPT_TYPE,
    ChainedLines,
    input_digest,
    read_transcript,
    tests_from_records,
)
from verifier.wire.client import Detection, SuspectAnswer, SuspectClient

__all__ = [
    "DECOY",
    "DEFAULT_FUTILITY",
    "FOLLOW_UP_PROBES",
    "TRANSCRIPT_TYPE",
    "PlanItem",
    "ProbeSource",
    "QueryPlan",
    "SessionResult",
    "VerificationSession",
    "first_decision",
    "input_digest",
    "read_transcript",
    "tests_from_records",
]

DEFAULT_FUTILITY = Futility()
SpendFn = Callable[[int, list[int]], None]


def _drop_torn_tail(path: Path) -> None:
    """Cut a last line that a crash left without its newline, so appends start clean."""
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with open(path, "rb+") as f:
            f.truncate(data.rfind(b"\n") + 1)
            f.flush()
            os.fsync(f.fileno())


@dataclass
class SessionResult:
    """A finished (or stopped) run: statistics, transcript, and what was sent."""

    statistics: Statistics
    header: dict[str, Any]
    records: list[dict[str, Any]]
    sources: list[ProbeSource]
    transcript: Path
    stopped_early: bool
    sent: dict[int, list[int]] = field(default_factory=dict)
    decoy_inputs: dict[int, np.ndarray] = field(default_factory=dict)

    @property
    def warnings(self) -> list[str]:
        """What the reader of the verdict must know: a dark-knowledge set (read from second
        choices) asked of a suspect whose answers held labels only counts every probe as a miss."""
        dark = sorted({s.probes.scheme for s in self.sources if s.probes.rank == 2})
        bare = any(r.get("type") == "query" and "seconds" not in r for r in self.records)
        if not dark or not bare:
            return []
        return [f"the suspect answered labels only; {', '.join(dark)} is read from second choices, "
                "which labels do not show, so those probes counted as misses (ask an endpoint that "
                "answers probabilities or logits)"]

    @property
    def requests(self) -> int:
        """Answered requests."""
        return sum(1 for r in self.records if r.get("type") == "query")

    @property
    def decoys(self) -> int:
        """Answered decoy inputs."""
        return sum(
            1 for r in self.records if r.get("type") == "query" for it in r["items"] if it[0] == DECOY
        )


class VerificationSession:
    """Runs a plan against a suspect, writing the transcript as it goes.

    Args:
        client: the suspect's API client (its :meth:`~SuspectClient.describe` is
            called once when the run starts).
        sources: the probe sets being tested.
        decoys: in-distribution inputs ``[M, C, H, W]``.
        plan: the batches.
        transcript: path of the JSON Lines transcript.
        alpha: decision level.
        mode: ``"sequential"`` (stop once alpha is reached or every model is
            ruled out) or ``"fixed"`` (send all).
        models: every model named (for the multiple-testing correction).
        futility: the early "not owned" rule of a sequential run (``None``: none;
            a fixed run has none).
        spend: called as ``spend(source, indices)`` before a batch with those probes leaves.
        detection: what protocol detection found, when it ran already.
        header_extra: more fields for the transcript header.
        mac_key: the transcript's MAC key (derive it from the owner key with
            :data:`~verifier.transcript.MAC_INFO`); without one a fresh random key
            chains the lines, and the run cannot be resumed.
        committed: how many probe sets the owner has committed; when given, a
            sequential run stops for ownership only once the verdict corrected
            for all of them (:mod:`verifier.selection`) is ``owned``.
    """

    def __init__(
        self,
        client: SuspectClient,
        sources: Sequence[ProbeSource],
        decoys: torch.Tensor,
        plan: QueryPlan,
        transcript: str | Path,
        *,
        alpha: float,
        mode: Mode = "sequential",
        models: Sequence[str] | None = None,
        futility: Futility | None = DEFAULT_FUTILITY,
        spend: SpendFn | None = None,
        detection: Detection | None = None,
        header_extra: dict[str, Any] | None = None,
        mac_key: bytes | None = None,
        committed: int | None = None,
    ) -> None:
        self.client = client
        self.committed = committed
        self.sources = list(sources)
        self.decoys = decoys
        self.plan = plan
        self.path = Path(transcript)
        self.alpha = alpha
        self.mode = mode
        self.futility = futility if mode == "sequential" else None
        self.models = list(dict.fromkeys(models if models is not None else [s.model for s in sources]))
        self.spend = spend
        self.detection = detection
        self.header_extra = header_extra or {}
        shapes = {s.probes.input_shape for s in self.sources}
        if len(shapes) != 1 or (decoys.numel() and tuple(decoys.shape[1:]) not in shapes):
            raise InputError("probes and decoys must all have the same input shape")
        classes = {s.probes.num_classes for s in self.sources}
        if len(classes) != 1:
            raise InputError("all probe sets must have the same number of classes")
        self._done: dict[int, dict[str, Any]] = {}
        self._header: dict[str, Any] | None = None
        self._lines = ChainedLines(self.path, mac_key if mac_key is not None else secrets.token_bytes(32))

    # ---------------------------------------------------------------- transcript

    def _decoys_digest(self) -> str:
        return hashlib.sha256(
            np.ascontiguousarray(self.decoys.numpy(), dtype="<f4").tobytes()
        ).hexdigest()

    def _make_header(self) -> dict[str, Any]:
        det = self.detection.to_dict() if self.detection else None
        return {
            "type": TRANSCRIPT_TYPE,
            "created": utc_now(),
            "suspect": {"url": self.client.url, "protocol": self.client.protocol, "detected": det},
            "alpha": self.alpha,
            "mode": self.mode,
            "futility": None if self.futility is None else self.futility.to_dict(),
            "models": self.models,
            "sources": [s.describe() for s in self.sources],
            "decoys": {"count": int(self.decoys.shape[0]), "sha256": self._decoys_digest()},
            "seed": b64e(self.plan.seed),
            "plan": self.plan.to_json(),
            **self.header_extra,
        }

    def _write(self, doc: dict[str, Any]) -> None:
        self._lines.write(doc)

    @classmethod
    def resume(
        cls,
        transcript: str | Path,
        client: SuspectClient,
        sources: Sequence[ProbeSource],
        decoys: torch.Tensor,
        *,
        mac_key: bytes,
        spend: SpendFn | None = None,
        detection: Detection | None = None,
        committed: int | None = None,
    ) -> VerificationSession:
        """Continue the run recorded in ``transcript`` with the same suspect and probe sets.

        Raises:
            InputError: not a transcript, a line whose MAC does not chain under
                ``mac_key`` (named), or one made with other probe sets, decoys or suspect.
        """
        read = read_transcript(transcript, mac_key=mac_key)
        header, records = read.header, read.records
        _drop_torn_tail(Path(transcript))
        if header.get("suspect", {}).get("url") != client.url:
            raise InputError("--resume: the transcript is for another suspect URL")
        want = [s.describe()["root"] for s in sources]
        have = [s.get("root") for s in header.get("sources", [])]
        if want != have:
            raise InputError("--resume: the transcript was made with other probe sets")
        plan = QueryPlan.from_json(header.get("plan"), b64d(str(header.get("seed", "")), what="seed"))
        session = cls(
            client, sources, decoys, plan, transcript,
            alpha=float(header["alpha"]), mode=header["mode"], models=header.get("models"),
            futility=Futility.from_dict(header.get("futility")), spend=spend, detection=detection,
            committed=committed,
        )
        session._lines = ChainedLines(session.path, mac_key, read.last_mac)
        if header.get("decoys", {}).get("sha256") != session._decoys_digest():
            raise InputError("--resume: the transcript was made with other decoys")
        session._header = header
        for rec in records:
            if rec.get("type") == "query":
                session._done[int(rec["batch"])] = {k: v for k, v in rec.items() if k != "mac"}
        return session

    # ---------------------------------------------------------------- running

    def _batch_inputs(self, b: int) -> np.ndarray:
        xs = [
            self.decoys[it.index] if it.source == DECOY else self.sources[it.source].probes.inputs[it.index]
            for it in self.plan.batches[b]
        ]
        return torch.stack(xs).numpy()

    def _record(self, b: int, x: np.ndarray, answer: SuspectAnswer) -> dict[str, Any]:
        return {
            "type": "query",
            "batch": b,
            "items": [
                [it.source, it.index, input_digest(x[j])] for j, it in enumerate(self.plan.batches[b])
            ],
            "status": answer.status,
            "output": answer.output,
            "labels": [int(v) for v in answer.labels],
            **self._seconds(answer),
            "request_sha256": answer.request_sha256,
            "response_sha256": answer.response_sha256,
            "attempts": answer.attempts,
            "latency_s": round(answer.latency_s, 6),
            "time": answer.time,
        }

    def _seconds(self, answer: SuspectAnswer) -> dict[str, Any]:
        """``{"seconds": [...]}`` where a set is read from second choices (dark-knowledge marks) and
        the answer carried scores; nothing otherwise, so other transcripts keep their form."""
        if answer.seconds is None or all(s.probes.rank == 1 for s in self.sources):
            return {}
        return {"seconds": [int(v) for v in answer.seconds]}

    def _label(self, src: int, idx: int) -> int:
        return int(self.sources[src].probes.expected[idx])

    def _descriptions(self) -> list[dict[str, Any]]:
        """The sources as the transcript header describes them (their unspent count at plan time)."""
        if self._header is not None:
            return list(self._header["sources"])
        return [s.describe() for s in self.sources]

    def _statistics_of(self, records: Sequence[dict[str, Any]]) -> Statistics:
        tests = tests_from_records(self._descriptions(), records, self._label)
        return compute_statistics(tests, alpha=self.alpha, mode=self.mode, models=self.models,
                                  futility=self.futility)

    def statistics(self) -> Statistics:
        """The statistics over the batches answered so far, in plan order."""
        return self._statistics_of([self._done[b] for b in sorted(self._done)])

    def _could_decide(self, in_flight: Sequence[int]) -> bool:
        """Whether some answers to the batches in flight would already decide the run.

        The evidence for "owned" grows with every match and the evidence of
        the futility rule with every mismatch, so it suffices to try the two
        extremes: every probe in flight matching, and none. If neither decides,
        no answer does, and the next batch is needed whatever comes back; if
        one might, the next batch waits, so that no probe is spent for nothing.
        """
        if self.mode != "sequential" or not in_flight:
            return False
        classes = self.sources[0].probes.num_classes
        for match in (True, False):
            hypothetical = {
                b: {
                    "type": "query",
                    "items": [[it.source, it.index, ""] for it in self.plan.batches[b]],
                    "labels": [
                        0 if it.source == DECOY
                        else (self._label(it.source, it.index) + (0 if match else 1)) % classes
                        for it in self.plan.batches[b]
                    ],
                }
                for b in in_flight
            }
            merged = {**self._done, **hypothetical}
            if self._decided(self._statistics_of([merged[b] for b in sorted(merged)])):
                return True
        return False

    def _decided(self, st: Statistics) -> bool:
        """A sequential run stops when ownership is established (corrected for every committed
        probe set, when known) or every model is ruled out."""
        owned = st.verdict == "owned" if self.committed is None else (
            correct_for_selection(st, self.committed).verdict == "owned")
        return owned or st.ruled_out_at is not None

    def _reached(self) -> bool:
        return self.mode == "sequential" and self._decided(self.statistics())

    def run(self, progress: Callable[[int, int], None] | None = None) -> SessionResult:
        """Send the unanswered batches (stopping early in sequential mode); the result.

        Raises:
            SuspectError: the suspect failed; the transcript keeps everything so far
                and :meth:`resume` continues from it.
            WmError: ``spend`` refused a batch (its probes were spent by another
                verification): that batch is not sent, the answers to batches already
                in flight are recorded, and the run stops.
        """
        if self.detection is None:
            self.detection = self.client.describe()
        if self._header is None:
            self._header = self._make_header()
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self.path.exists() and self.path.stat().st_size:
                raise InputError(f"transcript {self.path} exists already", hint="use --resume to continue it")
            self._write(self._header)
        total = len(self.plan.batches)
        pending = deque(b for b in range(total) if b not in self._done)
        # Statistics consume batches in plan order; answered-in-order prefix decides stopping.
        stopped = self._reached()
        in_flight: deque[tuple[int, np.ndarray, Future[SuspectAnswer]]] = deque()
        error: WmError | None = None
        with ThreadPoolExecutor(max_workers=self.client.settings.concurrency) as pool:

            def submit() -> None:
                nonlocal error
                b = pending.popleft()
                x = self._batch_inputs(b)
                if self.spend is not None:
                    by_source: dict[int, list[int]] = {}
                    for it in self.plan.batches[b]:
                        if it.source != DECOY:
                            by_source.setdefault(it.source, []).append(it.index)
                    try:
                        for src, idx in by_source.items():
                            self.spend(src, idx)
                    except WmError as exc:  # e.g. another verification spent them: do not send
                        error = exc
                        return
                in_flight.append((b, x, pool.submit(self.client.infer, x)))

            def fill() -> None:
                while (
                    error is None
                    and not stopped
                    and pending
                    and len(in_flight) < self.client.settings.concurrency
                    and not self._could_decide([b for b, _, _ in in_flight])
                ):
                    submit()

            fill()
            while in_flight:
                b, x, fut = in_flight.popleft()
                try:
                    answer = fut.result()
                except SuspectError as exc:
                    self._write({"type": "error", "batch": b, "time": utc_now(), "error": str(exc)})
                    error = error or exc
                    continue
                rec = self._record(b, x, answer)
                self._write(rec)
                self._done[b] = rec
                if progress is not None:
                    progress(len(self._done), total)
                if error is None and not stopped:
                    stopped = self._reached()
                    fill()
        if error is not None:
            raise error
        reason = "plan completed"
        if stopped:
            reason = "alpha reached" if self.statistics().verdict == "owned" else "ruled out"
        self._write({"type": "end", "time": utc_now(), "reason": reason})
        records = [self._done[b] for b in sorted(self._done)]
        sent: dict[int, list[int]] = {}
        decoy_inputs: dict[int, np.ndarray] = {}
        for rec in records:
            for src, idx, _ in rec["items"]:
                if src != DECOY:
                    sent.setdefault(src, []).append(idx)
                else:
                    decoy_inputs[idx] = self.decoys[idx].numpy()
        return SessionResult(
            statistics=self.statistics(),
            header=self._header,
            records=records,
            sources=self.sources,
            transcript=self.path,
            stopped_early=stopped and len(self._done) < total,
            sent=sent,
            decoy_inputs=decoy_inputs,
        )

    @property
    def header(self) -> dict[str, Any] | None:
        """The transcript header, once written or read."""
        return self._header
