"""The guard's HTTP/1.1 front end: llhttp (``httptools``) on raw asyncio, one handler per request.

``wm guard`` sits in front of production traffic, so its server is kept to
what a proxy needs and costs little per request: an :class:`asyncio.Protocol`
per client connection parsing with ``httptools`` (the llhttp parser Node.js
uses), keep-alive and pipelined requests answered in order, and the whole
request handed to an ``async`` handler as a :class:`Request` (the raw request
target included, so the proxy can refuse any target that is not a path).

Limits: a request body over ``max_body`` bytes gets 413, headers over 64 KiB
or a malformed request 400, and a request that does not arrive completely
within ``request_timeout`` seconds 408; each then closes the connection. An
idle keep-alive connection is closed after ``keepalive`` seconds.
:class:`BackgroundHTTPServer` runs one on its own event loop in a thread
(port 0: the OS picks; tests, benchmarks, the single-process ``wm guard``).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import cast

import httptools

from core.serving import bind, url_of

__all__ = ["BackgroundHTTPServer", "Handler", "Request", "Response", "new_event_loop", "serve"]

MAX_HEADER_BYTES = 64 << 10


@dataclass(frozen=True)
class Request:
    """One complete request as it arrived."""

    method: bytes
    target: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    peer: str | None


@dataclass(frozen=True)
class Response:
    """One answer; ``content-length`` is added when it is written."""

    status: int
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""


Handler = Callable[[Request], Awaitable[Response]]


def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b"Unknown"


def _error(status: int, message: str) -> Response:
    body = b'{"error": "' + message.encode() + b'"}'
    return Response(status, [(b"content-type", b"application/json")], body)


class _Connection(asyncio.Protocol):
    """One client connection: parse requests, run the handler in order, write answers."""

    def __init__(self, server: _Server) -> None:
        self.server = server
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.peer: str | None = None
        self.pending: deque[tuple[Request, bool]] = deque()
        self.task: asyncio.Task[None] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self._reset()

    def _reset(self) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.header_bytes = 0
        self.body: list[bytes] = []
        self.size = 0
        self.keep_alive = False

    def _arm(self, seconds: float, status: int | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.timer = asyncio.get_running_loop().call_later(seconds, self._expire, status)

    def _expire(self, status: int | None) -> None:
        if status is not None and not self.pending and self.task is None:
            self._refuse(status, "request not received in time")
        elif self.transport is not None and not self.pending and self.task is None:
            self.transport.close()

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        peer = transport.get_extra_info("peername")
        self.peer = str(peer[0]) if isinstance(peer, tuple) else None
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._arm(self.server.keepalive, None)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._refuse(400, "protocol upgrades are not supported")
        except httptools.HttpParserError:
            self._refuse(400, "malformed HTTP request")

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.transport = None

    def _refuse(self, status: int, message: str) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self._write(_error(status, f"wm guard: {message}"), keep_alive=False)

    # llhttp callbacks
    def on_message_begin(self) -> None:
        self._reset()
        self._arm(self.server.request_timeout, 408)

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.header_bytes += len(name) + len(value)
        if self.header_bytes > MAX_HEADER_BYTES:
            raise httptools.HttpParserError("headers too large")
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self.keep_alive = bool(self.parser.should_keep_alive())
        for name, value in self.headers:
            if name == b"expect" and value.lower() == b"100-continue" and self.transport:
                self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self.size += len(body)
        if self.size > self.server.max_body:
            self._refuse(413, f"request body over {self.server.max_body} bytes")
            raise httptools.HttpParserError("body too large")
        self.body.append(body)

    def on_message_complete(self) -> None:
        request = Request(self.parser.get_method(), self.url, self.headers, b"".join(self.body),
                          self.peer)
        self.pending.append((request, self.keep_alive))
        if self.timer is not None:
            self.timer.cancel()
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self._run())
        if len(self.pending) > 16 and self.transport is not None:
            self.transport.pause_reading()  # a client pipelining without reading its answers

    async def _run(self) -> None:
        while self.pending:
            request, keep_alive = self.pending.popleft()
            try:
                response = await self.server.handler(request)
            except Exception:  # a handler bug must not take the connection's other requests down
                response = _error(500, "wm guard: internal error")
            if self.transport is None:
                break
            self._write(response, keep_alive)
            if not keep_alive:
                break
            if self.transport is not None and len(self.pending) <= 16:
                self.transport.resume_reading()
        self.task = None
        if self.transport is not None and not self.transport.is_closing():
            self._arm(self.server.keepalive, None)

    def _write(self, response: Response, keep_alive: bool) -> None:
        assert self.transport is not None
        head = [b"HTTP/1.1 ", str(response.status).encode(), b" ", _reason(response.status), b"\r\n"]
        for name, value in response.headers:
            head += [name, b": ", value, b"\r\n"]
        head += [b"content-length: ", str(len(response.body)).encode(), b"\r\n"]
        if not keep_alive:
            head.append(b"connection: close\r\n")
        head.append(b"\r\n")
        self.transport.write(b"".join(head) + response.body)
        if not keep_alive:
            self.transport.close()
            self.transport = None


@dataclass
class _Server:
    handler: Handler
    max_body: int
    request_timeout: float
    keepalive: float


async def serve(handler: Handler, sock: socket.socket, stop: asyncio.Event, *,
                max_body: int = 64 << 20, request_timeout: float = 30.0,
                keepalive: float = 5.0) -> None:
    """Answer connections on ``sock`` with ``handler`` until ``stop`` is set.

    Requests already received when ``stop`` is set are answered before this returns.
    """
    config = _Server(handler, max_body, request_timeout, keepalive)
    connections: set[_Connection] = set()

    def factory() -> _Connection:
        conn = _Connection(config)
        connections.add(conn)
        return conn

    server = await asyncio.get_running_loop().create_server(factory, sock=sock)
    try:
        await stop.wait()
    finally:
        server.close()
        tasks = [c.task for c in connections if c.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=request_timeout)
        for c in connections:
            if c.transport is not None:
                c.transport.close()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(server.wait_closed(), 1.0)


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's event loop where installed (the fast path), else asyncio's."""
    try:
        import uvloop
    except ImportError:  # not on every platform (Windows): the standard loop works, slower
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class BackgroundHTTPServer:
    """Serves ``handler`` on its own event loop in a daemon thread.

    Args:
        handler: answers each request.
        host: address to bind.
        port: port to bind; 0 picks a free one (read :attr:`port`).
        on_stop: a coroutine function run on the loop after serving stops (closing clients).
    """

    def __init__(self, handler: Handler, host: str = "127.0.0.1", port: int = 0,
                 on_stop: Callable[[], Awaitable[None]] | None = None) -> None:
        self.sock = bind(host, port)
        self.host = host
        self.port = int(self.sock.getsockname()[1])
        self._handler = handler
        self._on_stop = on_stop
        self._loop = new_event_loop()
        self._stop = asyncio.Event()
        self._thread = threading.Thread(target=self._run, name="wm-guard-http", daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def main() -> None:
            try:
                await serve(self._handler, self.sock, self._stop)
            finally:
                if self._on_stop is not None:
                    await self._on_stop()

        self._loop.run_until_complete(main())
        self._loop.close()

    @property
    def url(self) -> str:
        """``http://host:port``."""
        return url_of(self.sock)

    def start(self) -> BackgroundHTTPServer:
        """Start serving (the socket is already listening)."""
        self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Stop accepting, answer what was received, and wait for the thread."""
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(timeout)
        self.sock.close()

    def __enter__(self) -> BackgroundHTTPServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
