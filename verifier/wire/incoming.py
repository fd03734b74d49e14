"""The one reader of incoming inference requests, shared by ``wm serve`` and the guard.

:func:`route_of` says whether a request is an inference call and in which
protocol (Open Inference Protocol, KServe V1 / TF Serving, TorchServe);
:func:`parse_request` parses a body strictly (:func:`core.canonical.parse_json`)
and hands it to the protocol's codec; :func:`read_answer` reads a model's
answer to it. A server that answers a request and a guard that marks it
therefore agree on what the request is: a request one of them refuses, the
other refuses too, with the same status and message (a ragged ``data`` list,
for one, is a 400 for both, never an answer the guard could not mark).

:class:`RequestReader` is how a server uses them under load. It reads a body
from the ASGI stream in linear time, under a size cap, a deadline for the
whole body, and a budget on the body bytes buffered across all requests at
once (over it: 503, retry later). It parses small bodies on the event loop
(a 256 KiB body takes a few milliseconds) and large ones in a worker process:
CPython's JSON parser holds the GIL for the whole document (about 1.5 s for
64 MB), so a worker thread would still stall the event loop and every other
request with it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from core.canonical import parse_json
from core.errors import InputError
from verifier.wire import oip, torchserve, v1
from verifier.wire.inference import MAX_BATCH, InferenceRequest, RequestError, Route
from verifier.wire.tensors import DecodedAnswer
from verifier.wire.transport import parse_suspect_json
from verifier.wire.worker import ParseWorkers

__all__ = [
    "BODY_TIMEOUT",
    "MAX_BODY",
    "BodyLimits",
    "RequestReader",
    "parse_request",
    "read_answer",
    "route_of",
]

MAX_BODY = 64 << 20
"""Default cap on one request body, in bytes."""
BODY_TIMEOUT = 60.0
"""Default seconds a client may take to send a whole request body."""

Receive = Callable[[], Awaitable[Mapping[str, Any]]]


_CODECS: dict[str, Any] = {"oip": oip, "tfserving": v1, "torchserve": torchserve}


def route_of(method: str, path: str) -> Route | None:
    """The inference route of a request (``path`` without its query), or ``None``."""
    if method != "POST":
        return None
    for protocol, codec in _CODECS.items():
        m = codec.PATH.match(path)
        if m:
            return Route(protocol, m["name"], m["version"])  # type: ignore[arg-type]
    return None


def parse_request(route: Route, body: bytes | bytearray | str, input_shape: tuple[int, ...], *,
                  max_batch: int = MAX_BATCH) -> InferenceRequest:
    """A request's body, parsed strictly and read by its protocol's codec.

    Args:
        route: from :func:`route_of`.
        body: the raw body (or its text, decoded as UTF-8).
        input_shape: one input's shape as the model takes it.
        max_batch: most inputs in one request.

    Raises:
        RequestError: invalid JSON (NaN, deep nesting included), or a request
            the codec refuses; the message is the one line to answer with.
    """
    try:
        doc = parse_json(body, what="request body")
    except InputError as exc:
        raise RequestError(str(exc)) from exc
    request: InferenceRequest = _CODECS[route.protocol].parse_request(doc, route, input_shape,
                                                                      max_batch=max_batch)
    return request


def read_answer(route: Route, body: bytes, n: int, num_classes: int) -> DecodedAnswer:
    """A model server's answer to an inference request of ``n`` inputs, parsed and read.

    Raises:
        SuspectError: not JSON, or not answers for ``n`` inputs of ``num_classes`` classes.
    """
    answer: DecodedAnswer = _CODECS[route.protocol].read_answer(
        parse_suspect_json(body, "answer"), n, num_classes)
    return answer


@dataclass(frozen=True)
class BodyLimits:
    """Limits on request bodies.

    Attributes:
        max_bytes: the cap on one body (413 over it).
        timeout: seconds one whole body may take to arrive (408 past it).
        max_buffered: body bytes held across all requests at once (503 over it).
        inline_bytes: bodies up to this size are parsed on the event loop;
            larger ones in a worker process.
        workers: worker processes for large bodies (each parses one at a time).
    """

    max_bytes: int = MAX_BODY
    timeout: float = BODY_TIMEOUT
    max_buffered: int = 4 * MAX_BODY
    inline_bytes: int = 256 << 10
    workers: int = 1

    def __post_init__(self) -> None:
        if self.max_bytes < 1024:
            raise InputError(f"the body cap must be at least 1024 bytes, got {self.max_bytes}")
        if not self.timeout > 0:
            raise InputError(f"the body timeout must be positive, got {self.timeout}")
        if self.max_buffered < self.max_bytes:
            raise InputError("the buffered-bytes budget must be at least the body cap")
        if self.workers < 1:
            raise InputError("at least one parsing worker is needed")


class RequestReader:
    """Reads and parses one server's incoming requests (see the module docstring).

    Args:
        limits: caps, deadline, budget, where to parse.
        max_batch: most inputs in one request.
    """

    def __init__(self, limits: BodyLimits | None = None, *, max_batch: int = MAX_BATCH) -> None:
        self.limits = limits or BodyLimits()
        self.max_batch = max_batch
        self.buffered = 0
        self._workers = ParseWorkers(self.limits.workers)

    @asynccontextmanager
    async def body(self, receive: Receive, declared: str | None = None) -> AsyncIterator[bytearray]:
        """``async with reader.body(receive) as body:`` the whole body, counted against the budget.

        The body is the buffer it was read into (no copy: a large body is held once).

        Args:
            receive: the ASGI receive callable.
            declared: the request's ``Content-Length`` header, if any.

        Raises:
            RequestError: 413 over the cap, 408 past the deadline, 503 over the
                budget, 400 when the client disconnected mid-body.
        """
        lim = self.limits
        size = int(declared) if declared is not None and declared.isdigit() else None
        if size is not None and size > lim.max_bytes:
            raise RequestError(f"request body over {lim.max_bytes} bytes", 413)
        # A declared length is allocated, and counted against the budget, up front: the body is
        # written in place (never copied as it grows) and a client that declares much and sends
        # little still holds only what the budget allows.
        body = bytearray(size or 0)
        held = 0
        received = 0
        try:
            if size:
                self._hold(size)
                held = size
            deadline = time.monotonic() + lim.timeout
            while True:
                try:
                    async with asyncio.timeout(deadline - time.monotonic()):
                        message = await receive()
                except TimeoutError:
                    raise RequestError(f"request body not received within {lim.timeout:g} s",
                                       408) from None
                if message["type"] == "http.disconnect":
                    raise RequestError("client disconnected before sending the whole body")
                chunk: bytes = message.get("body", b"")
                end = received + len(chunk)
                if end > lim.max_bytes:
                    raise RequestError(f"request body over {lim.max_bytes} bytes", 413)
                if end > held:
                    self._hold(end - held)
                    held = end
                body[received:end] = chunk
                received = end
                if not message.get("more_body", False):
                    break
            del body[received:]
            yield body
        finally:
            self.buffered -= held

    def _hold(self, n: int) -> None:
        if self.buffered + n > self.limits.max_buffered:
            raise RequestError("server busy: too many request bytes in flight; retry", 503)
        self.buffered += n

    async def parse(self, route: Route, body: bytes | bytearray, input_shape: tuple[int, ...]
                    ) -> InferenceRequest:
        """:func:`parse_request`: inline for a small body, in a worker process for a large one.

        Raises:
            RequestError: as :func:`parse_request`.
        """
        shape = tuple(input_shape)
        if len(body) <= self.limits.inline_bytes:
            return parse_request(route, body, shape, max_batch=self.max_batch)
        return await asyncio.to_thread(self._workers.parse, route, body, shape, self.max_batch)

    def close(self) -> None:
        """Stop the parsing worker processes, if any were started."""
        self._workers.close()
