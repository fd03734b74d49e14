"""The guard's upstream client: pooled HTTP/1.1 keep-alive connections on raw asyncio.

The guard forwards every request to one upstream (the owner's inference
server), so it needs a client that does one thing cheaply: send a request on
a kept-alive connection and read the answer. Profiling ``wm guard`` under
16 connections (``py-spy``, see ``benchmarks/README.md``) put 45% of its CPU
in httpx/httpcore (connection-pool bookkeeping, anyio indirection, an import
lookup per request); this client is an :class:`asyncio.Protocol` per
connection with the ``httptools`` (llhttp) response parser, and a
last-in-first-out pool of idle connections per event loop.

Limits are explicit: a connect timeout, one overall deadline per exchange
(connect, send, and the whole answer: a 1 byte/s upstream cannot hold a
request for ever), and a cap on the answer's size. A connection is reused
only when its last answer was complete and allowed keep-alive; one that the
upstream closed while idle is noticed (``connection_lost``) and never reused.
Only the request target's path and query are sent: the host is always the
configured upstream's, so no request can steer the guard elsewhere.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass
from typing import cast
from urllib.parse import urlsplit

import httptools

from core.errors import InputError

__all__ = ["Upstream", "UpstreamAnswer", "UpstreamError", "UpstreamTimeoutError"]

MAX_ANSWER = 64 << 20
IDLE_SECONDS = 4.0  # below uvicorn's 5 s keep-alive: never reuse one the server is closing


class UpstreamError(Exception):
    """The upstream could not be reached, or broke the exchange (not a :class:`WmError`: it is
    answered with 502, never raised to a caller of the library)."""


class UpstreamTimeoutError(UpstreamError):
    """The exchange did not finish within its deadline (answered with 504)."""


@dataclass(frozen=True)
class UpstreamAnswer:
    """One answer: status, headers (lower-case names, as sent), body."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes


class _Connection(asyncio.Protocol):
    """One upstream connection; answers are parsed by llhttp as they arrive."""

    def __init__(self, max_answer: int) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.max_answer = max_answer
        self.open = False
        self.idle_since = 0.0
        self._waiter: asyncio.Future[UpstreamAnswer] | None = None
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []
        self._size = 0
        self._complete = False
        self._head = False
        self._headers_done = False
        self._keep_alive = False

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self.open = True

    def data_received(self, data: bytes) -> None:
        if self._waiter is None or self._waiter.done():
            self._fail(UpstreamError("answer bytes without a request"))
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(UpstreamError(f"malformed answer ({exc})"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = False
        if self._waiter is not None and not self._waiter.done():
            framed = any(k in (b"content-length", b"transfer-encoding") for k, _ in self._headers)
            if self._headers_done and not framed:  # an answer delimited by the connection's end
                self._waiter.set_result(UpstreamAnswer(
                    self.parser.get_status_code(), self._headers, b"".join(self._body)))
            else:
                self._waiter.set_exception(UpstreamError("connection closed mid-answer"))

    # llhttp callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.lower(), value))

    def on_body(self, body: bytes) -> None:
        self._size += len(body)
        if self._size > self.max_answer:
            self._fail(UpstreamError(f"answer over {self.max_answer} bytes"))
            return
        self._body.append(body)

    def on_headers_complete(self) -> None:
        self._headers_done = True
        self._keep_alive = bool(self.parser.should_keep_alive())
        if self._head:  # a HEAD answer's length describes a body that never comes
            self.on_message_complete()

    def on_message_complete(self) -> None:
        self._complete = True
        self.idle_since = time.monotonic()
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(UpstreamAnswer(
                self.parser.get_status_code(), self._headers, b"".join(self._body)))

    def _fail(self, exc: UpstreamError) -> None:
        self.close()
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(exc)

    def close(self) -> None:
        self.open = False
        if self.transport is not None:
            self.transport.close()

    def send(self, request: bytes, head: bool) -> asyncio.Future[UpstreamAnswer]:
        """Write one request (``head``: a HEAD request); the future resolves with its answer."""
        assert self.transport is not None
        self._headers, self._body, self._size, self._head = [], [], 0, head
        self._complete = self._headers_done = False
        self._waiter = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return self._waiter

    @property
    def reusable(self) -> bool:
        return (self.open and self._complete and self._keep_alive
                and time.monotonic() - self.idle_since < IDLE_SECONDS)


class Upstream:
    """A keep-alive connection pool to one upstream, for use from one event loop.

    Args:
        url: the upstream's base URL, ``http://host:port[/prefix]``.
        timeout: the overall deadline of one exchange, in seconds.
        connect_timeout: the deadline for opening a connection.
        max_answer: the largest answer body accepted, in bytes.
        max_idle: the most idle connections kept.

    Raises:
        InputError: the URL is not a plain ``http://host[:port]`` URL.
    """

    def __init__(self, url: str, *, timeout: float = 30.0, connect_timeout: float = 10.0,
                 max_answer: int = MAX_ANSWER, max_idle: int = 256) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname or parts.query or parts.fragment:
            raise InputError(f"the guard's upstream must be an http://host:port URL, got {url!r}")
        self.host = parts.hostname
        self.port = parts.port or 80
        self.prefix = parts.path.rstrip("/").encode("latin-1")
        self.host_header = parts.netloc.encode("latin-1")
        self.timeout = timeout
        self.connect_timeout = min(connect_timeout, timeout)
        self.max_answer = max_answer
        self.max_idle = max_idle
        self._idle: deque[_Connection] = deque()

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, conn = await loop.create_connection(
                    lambda: _Connection(self.max_answer), self.host, self.port)
        except TimeoutError as exc:
            raise UpstreamTimeoutError("connect timed out") from exc
        except OSError as exc:
            raise UpstreamError(f"cannot connect ({type(exc).__name__})") from exc
        return conn

    def _take(self) -> _Connection | None:
        while self._idle:
            conn = self._idle.pop()
            if conn.reusable:
                return conn
            conn.close()
        return None

    async def request(self, method: bytes, target: bytes, headers: list[tuple[bytes, bytes]],
                      body: bytes) -> UpstreamAnswer:
        """Send one request and return the complete answer.

        Args:
            method: the HTTP method.
            target: the origin-form request target (path and query), starting with ``/``.
            headers: request headers to pass on (hop-by-hop ones already removed).
            body: the request body.

        Raises:
            UpstreamTimeoutError: the deadline passed. UpstreamError: any other failure.
        """
        if not target.startswith(b"/"):
            raise UpstreamError("a request target must start with '/'")
        head = [method, b" ", self.prefix, target, b" HTTP/1.1\r\nhost: ", self.host_header,
                b"\r\ncontent-length: ", str(len(body)).encode(), b"\r\n"]
        for name, value in headers:
            head += [name, b": ", value, b"\r\n"]
        head.append(b"\r\n")
        request = b"".join(head) + body
        try:
            async with asyncio.timeout(self.timeout):
                conn = self._take() or await self._connect()
                try:
                    answer = await conn.send(request, method == b"HEAD")
                except BaseException:
                    conn.close()
                    raise
        except TimeoutError as exc:
            raise UpstreamTimeoutError(f"no complete answer within {self.timeout:g} s") from exc
        if method == b"HEAD" or not conn.reusable or len(self._idle) >= self.max_idle:
            conn.close()  # after HEAD the parser cannot tell where the next answer starts
        else:
            conn.idle_since = time.monotonic()
            self._idle.append(conn)
        return answer

    def close(self) -> None:
        """Close every idle connection."""
        while self._idle:
            self._idle.pop().close()
