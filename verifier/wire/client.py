"""The suspect client: send a batch of inputs to a black-box inference API, get validated labels.

:class:`SuspectClient` is the base of the per-protocol clients (one per codec
module: :mod:`verifier.wire.oip`, :mod:`~verifier.wire.v1`,
:mod:`~verifier.wire.torchserve`, :mod:`~verifier.wire.plain`). It owns the
HTTP side (:class:`verifier.wire.transport.HttpCaller`: timeouts, deadline,
retries, caps) and the bookkeeping of one answered request
(:class:`SuspectAnswer`: digests of the exact bytes, attempts, latency); a
subclass says how to write the request and read the answer. Whatever a
suspect does — garbage, deep nesting, ``10**400``, NaN, wrong shapes, labels
out of range, huge or endless answers — surfaces as a
:class:`core.errors.SuspectError` (exit 2 in ``wm verify``), never as another
exception.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import httpx
import numpy as np

from core.clock import utc_now
from core.errors import InputError, SuspectError
from verifier.wire.tensors import DecodedAnswer, OutputKind
from verifier.wire.transport import HttpCaller, HttpSettings, error_text, parse_suspect_json

__all__ = ["Detection", "ProtocolName", "SuspectAnswer", "SuspectClient"]

ProtocolName = Literal["oip", "tfserving", "torchserve", "json"]
_URL = re.compile(r"^https?://[^/\s]+")


@dataclass(frozen=True)
class Detection:
    """What ``--protocol auto`` (or a metadata probe) found at the suspect."""

    protocol: ProtocolName
    url: str
    detail: str

    def to_dict(self) -> dict[str, str]:
        """JSON form."""
        return {"protocol": self.protocol, "url": self.url, "detail": self.detail}


@dataclass(frozen=True)
class SuspectAnswer:
    """One request to a suspect and its validated answer.

    ``request_sha256``/``response_sha256`` are SHA-256 digests of the exact
    bytes sent and received; ``attempts`` counts retries too. ``seconds``
    holds each input's second choice where the answer carried scores
    (probabilities or logits), ``None`` for a label-only answer: how
    dark-knowledge probes are read (:func:`core.nulls.answer_rank`).
    """

    labels: np.ndarray
    output: OutputKind
    status: int
    request_sha256: str
    response_sha256: str
    attempts: int
    latency_s: float
    time: str
    seconds: np.ndarray | None = None


class SuspectClient(ABC):
    """A suspect's inference API: send a batch of inputs, get validated labels back.

    Args:
        url: the endpoint as its operator publishes it.
        num_classes: the task's class count.
        input_shape: the shape of one input (``[C, H, W]`` or ``[D]``).
        settings: timeouts, deadline, retries, caps, headers.
        transport: an ``httpx.BaseTransport`` (default: real HTTP with the deadline).
        sleep: how to wait between retries (tests may record waits).
    """

    protocol: ClassVar[ProtocolName]
    max_batch: ClassVar[int | None] = None
    url_form: ClassVar[re.Pattern[str] | None] = None
    """The endpoint URLs the protocol has (``None``: any URL); its groups land in :attr:`parts`."""
    url_example: ClassVar[str] = ""
    """Says what a URL of this protocol looks like, for the error on one that is not."""

    def __init__(
        self,
        url: str,
        *,
        num_classes: int,
        input_shape: Sequence[int],
        settings: HttpSettings | None = None,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not _URL.match(url):
            raise InputError(f"suspect URL must be http:// or https://, got {url!r}")
        self.url = url.rstrip("/")
        m = self.url_form.match(self.url) if self.url_form is not None else None
        if self.url_form is not None and m is None:
            raise InputError(f"{self.url_example}, got {url!r}")
        self.parts: dict[str, str | None] = m.groupdict() if m is not None else {}
        self.num_classes = num_classes
        self.input_shape = tuple(int(s) for s in input_shape)
        self.settings = settings or HttpSettings()
        self.http = HttpCaller(self.settings, transport=transport, sleep=sleep)

    def close(self) -> None:
        """Close the connections."""
        self.http.close()

    def __enter__(self) -> SuspectClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- what each protocol defines

    @abstractmethod
    def request_body(self, x: np.ndarray) -> tuple[str, dict[str, Any]]:
        """The URL and JSON body that ask for the answers to inputs ``x`` ``[N, *input_shape]``."""

    @abstractmethod
    def parse_answer(self, doc: Any, n: int) -> DecodedAnswer:
        """The parsed answer document for ``n`` inputs, read; :class:`SuspectError` if unusable."""

    @abstractmethod
    def describe(self) -> Detection:
        """Probe the endpoint's metadata; a :class:`Detection` or :class:`SuspectError`."""

    # -- one request

    def infer(self, x: np.ndarray) -> SuspectAnswer:
        """Send inputs ``x`` ``[N, *input_shape]`` (float32) in one request; the validated answer.

        Raises:
            SuspectError: unreachable after retries, past the deadline, an HTTP
                error, or an unusable answer.
        """
        n = int(x.shape[0])
        if self.max_batch is not None and n > self.max_batch:
            raise InputError(f"{self.protocol} takes at most {self.max_batch} inputs per request")
        url, doc = self.request_body(np.ascontiguousarray(x, dtype=np.float32))
        body = json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()
        when = utc_now()
        reply = self.http.send("POST", url, body)
        if reply.status != 200:
            hint = None
            if reply.status in (401, 403):
                hint = "pass credentials with --header 'Authorization: ...'"
            elif reply.status == 404:
                hint = "check the model name in --suspect"
            raise SuspectError(f"suspect answered HTTP {reply.status}: {error_text(reply.body)}",
                               hint=hint)
        answer = self.read_answer(reply.body, n)
        return SuspectAnswer(
            labels=answer.labels,
            output=answer.kind,
            status=reply.status,
            request_sha256=hashlib.sha256(body).hexdigest(),
            response_sha256=hashlib.sha256(reply.body).hexdigest(),
            attempts=reply.attempts,
            latency_s=reply.latency_s,
            time=when,
            seconds=answer.seconds,
        )

    def read_answer(self, body: bytes, n: int) -> DecodedAnswer:
        """An answer's bytes for ``n`` inputs, parsed and read; every fault a :class:`SuspectError`.

        A hostile answer may be built to break a parser rather than to be
        wrong (numbers past float64, runaway nesting); those faults are
        reported as the suspect's, never raised as something else.
        """
        doc = parse_suspect_json(body, "suspect's answer")
        try:
            return self.parse_answer(doc, n)
        except (ValueError, TypeError, OverflowError, RecursionError, MemoryError) as exc:
            raise SuspectError(f"suspect's answer cannot be read ({type(exc).__name__})") from exc
