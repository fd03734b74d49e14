"""HTTP to a suspect: timeouts, an overall deadline, retries with backoff, a cap on answers.

One logical request (:meth:`HttpCaller.send`) is retried after connection
errors, timeouts, 429 and 503 with exponential backoff and jitter, honouring
``Retry-After`` (RFC 9110 section 10.2.3). Besides httpx's per-operation
timeouts (connect, each read, each write), every logical request has an
overall **deadline** that covers its attempts, its waits and every byte of
its answer: a suspect that answers one byte a second, or drips its headers,
is cut off when the deadline passes. The deadline is enforced inside the
socket reads and writes (:class:`DeadlineTransport` clamps each operation's
timeout to the time left), so it holds whichever phase the answer is in.
Answers larger than the cap are refused before they are read in full.
"""

from __future__ import annotations

import email.utils
import random
import re
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpcore
import httpx

from core.canonical import parse_json
from core.errors import InputError, SuspectError

__all__ = [
    "DeadlineTransport",
    "HttpCaller",
    "HttpReply",
    "HttpSettings",
    "error_text",
    "parse_headers",
    "parse_suspect_json",
    "retry_after",
]

_RETRY_STATUS = frozenset({429, 503})
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


@dataclass(frozen=True)
class HttpSettings:
    """How a client talks HTTP.

    Attributes:
        timeout: seconds for connecting, and for each read or write.
        deadline: seconds one logical request may take in all: every attempt,
            every wait between attempts, and the whole answer.
        retries: further attempts after a connection error, timeout, 429 or 503.
        backoff: first backoff in seconds; doubles per attempt (with jitter), capped at 30 s.
        max_retry_after: a ``Retry-After`` longer than this is an error, not a wait.
        max_response_bytes: answers larger than this are refused.
        concurrency: most requests in flight at once.
        headers: extra request headers (for example ``Authorization``).
    """

    timeout: float = 30.0
    deadline: float = 300.0
    retries: int = 4
    backoff: float = 0.25
    max_retry_after: float = 120.0
    max_response_bytes: int = 16 << 20
    concurrency: int = 4
    headers: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.timeout > 0:
            raise InputError(f"timeout must be positive, got {self.timeout}")
        if not self.deadline > 0:
            raise InputError(f"deadline must be positive, got {self.deadline}")
        if self.retries < 0:
            raise InputError(f"retries must be >= 0, got {self.retries}")
        if self.concurrency < 1:
            raise InputError(f"concurrency must be >= 1, got {self.concurrency}")
        if self.max_response_bytes < 1024:
            raise InputError("max_response_bytes must be at least 1024")


def parse_headers(items: Sequence[str]) -> dict[str, str]:
    """Parse ``--header 'K: V'`` values; :class:`InputError` naming a malformed one."""
    out: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition(":")
        name = name.strip()
        if not sep or not name or not _TOKEN.fullmatch(name):
            raise InputError("--header needs the form 'Name: value', got a value without one")
        if "\n" in value or "\r" in value:
            raise InputError(f"--header {name}: the value must be one line")
        out[name] = value.strip()
    return out


def retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delay-seconds or HTTP-date)."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def error_text(body: bytes) -> str:
    """An error answer's text, one line of at most 200 characters (its ``error`` field if JSON)."""
    try:
        doc = parse_json(body, what="error")
    except InputError:
        doc = None
    if isinstance(doc, dict) and isinstance(doc.get("error"), str):
        text = doc["error"]
    else:
        text = body[:4096].decode("utf-8", "replace")
    text = " ".join(text.split())
    return text[:200] + ("..." if len(text) > 200 else "")


def parse_suspect_json(data: bytes, what: str) -> Any:
    """A suspect's JSON answer, strictly parsed; every fault a :class:`SuspectError`."""
    try:
        return parse_json(data, what=what)
    except InputError as exc:
        raise SuspectError(str(exc)) from exc


# ---------------------------------------------------------------- the deadline, inside the socket

_LOCAL = threading.local()


def _clamp(timeout: float | None, error: type[Exception]) -> float | None:
    """``timeout`` cut to the time left before this thread's deadline; ``error`` once it passed."""
    deadline: float | None = getattr(_LOCAL, "deadline", None)
    if deadline is None:
        return timeout
    left = deadline - time.monotonic()
    if left <= 0:
        raise error("the request's overall deadline passed")
    return left if timeout is None else min(timeout, left)


class _DeadlineStream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, _clamp(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, _clamp(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore.NetworkStream:
        inner = self._inner.start_tls(ssl_context, server_hostname,
                                      _clamp(timeout, httpcore.ConnectTimeout))
        return _DeadlineStream(inner)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    def __init__(self, inner: httpcore.NetworkBackend) -> None:
        self._inner = inner

    def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                    local_address: str | None = None,
                    socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:
        stream = self._inner.connect_tcp(host, port, _clamp(timeout, httpcore.ConnectTimeout),
                                         local_address, socket_options)
        return _DeadlineStream(stream)

    def connect_unix_socket(self, path: str, timeout: float | None = None,
                            socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:
        stream = self._inner.connect_unix_socket(path, _clamp(timeout, httpcore.ConnectTimeout),
                                                 socket_options)
        return _DeadlineStream(stream)

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class DeadlineTransport(httpx.HTTPTransport):
    """httpx's HTTP transport whose socket operations obey the calling thread's deadline.

    httpx has per-operation timeouts only; this transport wraps httpcore's
    network backend (the pool's ``_network_backend``, the one seam httpcore
    offers) so that each connect, read and write waits at most until the
    deadline :class:`HttpCaller` set for the request being made in this thread.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        pool: Any = self._pool
        pool._network_backend = _DeadlineBackend(pool._network_backend)


# ---------------------------------------------------------------- one logical request


@dataclass(frozen=True)
class HttpReply:
    """The final answer to one logical request.

    Attributes:
        status: HTTP status.
        body: the answer's bytes (at most the cap).
        attempts: requests made, retries included.
        latency_s: seconds from the first attempt to the last byte.
    """

    status: int
    body: bytes
    attempts: int
    latency_s: float


class HttpCaller:
    """Sends logical requests to one suspect with the settings' timeouts, deadline and retries.

    Args:
        settings: timeouts, deadline, retries, caps, headers.
        transport: an ``httpx.BaseTransport`` (default :class:`DeadlineTransport`;
            an injected one, for example ``httpx.MockTransport``, has no deadline
            inside its reads).
        sleep: how to wait between retries (tests may record waits).
    """

    def __init__(self, settings: HttpSettings, *, transport: httpx.BaseTransport | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        s = settings
        self.settings = s
        self._sleep = sleep
        limits = httpx.Limits(max_connections=s.concurrency, max_keepalive_connections=s.concurrency)
        self._client = httpx.Client(
            transport=transport if transport is not None else DeadlineTransport(limits=limits),
            timeout=httpx.Timeout(s.timeout),
            limits=limits,
            headers={"User-Agent": "wm-verifier/1", **dict(s.headers)},
            follow_redirects=False,
        )

    def close(self) -> None:
        """Close the connections."""
        self._client.close()

    def send(self, method: str, url: str, body: bytes | None) -> HttpReply:
        """One logical request with retries, within the deadline.

        Raises:
            SuspectError: unreachable or timing out after the retries, past the
                deadline, an absurd ``Retry-After``, or an answer over the cap.
        """
        s = self.settings
        start = time.monotonic()
        deadline = start + s.deadline
        attempt = 0
        _LOCAL.deadline = deadline
        try:
            while True:
                attempt += 1
                try:
                    wait = self._attempt(method, url, body, attempt)
                except httpx.TimeoutException as exc:
                    if time.monotonic() >= deadline:
                        raise self._past_deadline(url, attempt) from exc
                    if attempt > s.retries:
                        raise SuspectError(
                            f"suspect at {url} did not answer within {s.timeout:g} s "
                            f"({attempt} attempts)"
                        ) from exc
                    wait = self._backoff(attempt)
                except httpx.TransportError as exc:
                    if attempt > s.retries:
                        raise SuspectError(
                            f"cannot reach the suspect at {url}: {type(exc).__name__} "
                            f"({attempt} attempts)",
                            hint="check the URL and that the server is up",
                        ) from exc
                    wait = self._backoff(attempt)
                if isinstance(wait, HttpReply):
                    return HttpReply(wait.status, wait.body, attempt, time.monotonic() - start)
                if time.monotonic() + wait >= deadline:
                    raise self._past_deadline(url, attempt)
                self._sleep(wait)
        finally:
            _LOCAL.deadline = None

    def _past_deadline(self, url: str, attempts: int) -> SuspectError:
        return SuspectError(
            f"suspect at {url} did not finish answering within the {self.settings.deadline:g} s "
            f"deadline ({attempts} attempts)"
        )

    def _attempt(self, method: str, url: str, body: bytes | None, attempt: int) -> HttpReply | float:
        """One attempt: the reply, or the seconds to wait before the next attempt."""
        s = self.settings
        headers = {"Content-Type": "application/json"} if body is not None else {}
        with self._client.stream(method, url, content=body, headers=headers) as r:
            if r.status_code in _RETRY_STATUS and attempt <= s.retries:
                wait = retry_after(r.headers.get("Retry-After"))
                if wait is not None and wait > s.max_retry_after:
                    raise SuspectError(
                        f"suspect answered HTTP {r.status_code} and asks to retry after "
                        f"{wait:.0f} s, more than the {s.max_retry_after:.0f} s allowed"
                    )
                return self._backoff(attempt) if wait is None else wait
            return HttpReply(r.status_code, self._read_capped(r), attempt, 0.0)

    def _backoff(self, attempt: int) -> float:
        base = min(30.0, self.settings.backoff * 2 ** (attempt - 1))
        return base * (0.5 + 0.5 * random.random())

    def _read_capped(self, r: httpx.Response) -> bytes:
        cap = self.settings.max_response_bytes
        declared = r.headers.get("Content-Length")
        if declared is not None and declared.isdigit() and int(declared) > cap:
            raise SuspectError(f"suspect's answer is {int(declared)} bytes, over the {cap}-byte cap")
        body = bytearray()
        for chunk in r.iter_bytes():
            body += chunk
            if len(body) > cap:
                raise SuspectError(f"suspect's answer exceeds the {cap}-byte cap")
        return bytes(body)

    def get_json(self, url: str, what: str) -> tuple[int, Any]:
        """``GET url``: ``(200, parsed JSON)``, or ``(status, one-line error text)``."""
        reply = self.send("GET", url, None)
        if reply.status != 200:
            return reply.status, error_text(reply.body)
        return reply.status, parse_suspect_json(reply.body, what)
