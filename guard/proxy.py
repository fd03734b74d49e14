"""The guard: a reverse proxy that watermarks the owner's own prediction API (DAWN).

After Szyller et al., "DAWN: Dynamic Adversarial Watermarking of Neural
Networks" (ACM MM 2021). :class:`GuardProxy` is an ASGI application in front
of the owner's inference server. Every request is forwarded unchanged (httpx,
explicit timeouts, pooled keep-alive connections) and every answer comes back
unchanged, errors included, except inference answers of the guarded model
(:mod:`guard.protocols`): for each input the keyed PRF of :mod:`guard.prf`
decides whether it is marked (a fraction R of distinct inputs) and with which
label; a marked row's label is replaced (a score row is permuted so that its
argmax is the marked label). Before a marked answer leaves, its record is
sealed and fsynced to the write-ahead journal (:mod:`guard.journal`); if that
fails the client gets 503 rather than an unrecorded mark.

An unreachable upstream gives 502 and a timeout 504, each with one clear
``{"error": ...}`` line; nothing is recorded for them.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np

from core.errors import InputError
from guard.journal import GuardRecord, Journal, RegistryFlusher
from guard.monitor import ExtractionMonitor
from guard.prf import Marker, canonical_bytes
from guard.protocols import encode_marked, parse_answer, parse_inputs, route_of
from guard.vault import InputVault

__all__ = [
    "CREDENTIAL_HEADERS",
    "DEFAULT_CLIENT_HEADERS",
    "GuardConfig",
    "GuardProxy",
    "MarkRecorder",
    "client_identity",
    "upstream_base",
]

Scope = Mapping[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

DEFAULT_CLIENT_HEADERS: tuple[str, ...] = ("x-client-id", "x-api-key", "authorization")
CREDENTIAL_HEADERS = frozenset({"authorization", "proxy-authorization", "x-api-key", "cookie",
                                "api-key"})
MAX_BODY = 64 << 20
_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
                  "trailer", "trailers", "transfer-encoding", "upgrade", "host", "content-length"})
_RESPONSE_DROP = _HOP | {"content-encoding", "date", "server"}
_PATH_MARKERS = ("/v2/", "/v1/", "/predictions/")
_PRINTABLE = re.compile(r"[^\x21-\x7e]")


def upstream_base(url: str) -> tuple[str, str | None]:
    """``(base URL, model name in it or None)`` from the upstream URL the user gave.

    ``http://h:8080/v2/models/digits/infer`` -> ``("http://h:8080", "digits")``;
    a base URL (with or without a path prefix) is kept as it is.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise InputError(f"--upstream must be an http(s) URL, got {url!r}")
    path = parts.path
    name = None
    for marker in _PATH_MARKERS:
        i = path.find(marker)
        if i >= 0:
            rest = path[i + len(marker):]
            if marker != "/predictions/" and rest.startswith("models/"):
                rest = rest[len("models/"):]
            name = re.split(r"[/:]", rest, maxsplit=1)[0] or None
            path = path[:i]
            break
    return f"{parts.scheme}://{parts.netloc}{path.rstrip('/')}", name


def client_identity(
    headers: Mapping[str, str], peer: str | None, pseudonym: Callable[[str], str],
    names: Sequence[str] = DEFAULT_CLIENT_HEADERS,
) -> str:
    """Who sent a request, as its headers say; credentials only as a keyed pseudonym.

    The first of ``names`` present wins: a credential header (``Authorization``,
    ``X-Api-Key``, ...) gives ``key:<16 hex>`` (an HMAC under the guard key, so
    the log never holds a usable secret), any other header ``<name>:<value>``;
    then ``X-Forwarded-For``'s first address, then the peer address.
    """
    for name in names:
        value = headers.get(name.lower())
        if value:
            if name.lower() in CREDENTIAL_HEADERS:
                return "key:" + pseudonym(value)
            return f"{name.lower()}:{_PRINTABLE.sub('_', value)[:128]}"
    forwarded = headers.get("x-forwarded-for")
    if forwarded:
        return "ip:" + _PRINTABLE.sub("_", forwarded.split(",")[0].strip())[:64]
    return "ip:" + (peer or "unknown")


@dataclass(frozen=True)
class GuardConfig:
    """What the proxy needs to know.

    Attributes:
        upstream: the upstream's base URL (see :func:`upstream_base`).
        model: the registered model's name (records and journal).
        upstream_model: the model name in the upstream's URLs whose answers are marked.
        num_classes: the task's class count ``C``.
        input_shape: one input's shape ``(C, H, W)``.
        timeout: seconds for connecting to, writing to and reading from the upstream.
        client_headers: request headers naming the client, in order of preference.
    """

    upstream: str
    model: str
    upstream_model: str
    num_classes: int
    input_shape: tuple[int, ...]
    timeout: float = 30.0
    client_headers: tuple[str, ...] = DEFAULT_CLIENT_HEADERS


class MarkRecorder:
    """Seals and journals marked queries (called in a worker thread; returns once durable).

    Args:
        vault: seals the inputs.
        journal: the write-ahead journal.
        flusher: woken when a batch is waiting, if any.
    """

    def __init__(self, vault: InputVault, journal: Journal,
                 flusher: RegistryFlusher | None = None) -> None:
        self.vault = vault
        self.journal = journal
        self.flusher = flusher

    def record(self, items: Sequence[tuple[bytes, str, int]], output: str,
               client: str) -> list[GuardRecord]:
        """Journal marked queries ``(canonical bytes, digest, label)`` answered to ``client``."""
        now = datetime.now(UTC)
        stamp = now.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        pending = []
        for data, digest, label in items:
            epoch, sealed = self.vault.seal(data, digest, now)
            pending.append({"digest": digest, "label": label, "output": output, "client": client,
                            "time": stamp, "epoch": epoch, "sealed_input": sealed})
        out = self.journal.append(pending)
        if self.flusher is not None and len(self.journal.records_after(self.flusher.flushed_seq)) >= \
                self.flusher.batch_size:
            self.flusher.wake()
        return out


def _json_response(status: int, message: str) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    body = json.dumps({"error": message}).encode()
    return status, [(b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode())], body


class GuardProxy:
    """The ASGI application (see the module docstring).

    Args:
        config: upstream, model and limits.
        marker: the keyed marking decision.
        recorder: journals marked queries; ``None`` marks without recording (benchmarks only).
        monitor: PRADA extraction monitoring, if wanted.
        transport: an httpx transport for the upstream (tests); default a pooled TCP one.
    """

    def __init__(
        self,
        config: GuardConfig,
        marker: Marker,
        recorder: MarkRecorder | None,
        monitor: ExtractionMonitor | None = None,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if marker.num_classes != config.num_classes:
            raise InputError("the marker and the model disagree on the number of classes")
        self.config = config
        self.marker = marker
        self.recorder = recorder
        self.monitor = monitor
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self.counts = {"requests": 0, "inference": 0, "rows": 0, "marked": 0, "upstream_errors": 0}

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            t = self.config.timeout
            self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(t, connect=min(t, 10.0)),
                limits=httpx.Limits(max_connections=1024, max_keepalive_connections=1024),
                transport=self._transport,
                follow_redirects=False,
            )
        return self._client

    async def aclose(self) -> None:
        """Close the upstream connections."""
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        status, headers, body = await self._handle(scope, receive)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _read_body(self, receive: Receive) -> bytes | None:
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > MAX_BODY:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _handle(self, scope: Scope, receive: Receive) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        self.counts["requests"] += 1
        body = await self._read_body(receive)
        if body is None:
            return _json_response(413, f"request body over {MAX_BODY} bytes")
        method: str = scope["method"]
        path: str = scope.get("raw_path", scope["path"].encode()).decode("latin-1").split("?")[0]
        route = route_of(method, scope["path"])
        if route is not None and route.model != self.config.upstream_model:
            route = None
        x = parse_inputs(route, body, self.config.input_shape) if route is not None else None
        req_headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                       for k, v in scope.get("headers", [])}
        forward = [(k, v) for k, v in req_headers.items() if k not in _HOP]
        peer = scope.get("client")
        peer_addr = peer[0] if peer else None
        if peer_addr:
            prior = req_headers.get("x-forwarded-for")
            forward.append(("x-forwarded-for", f"{prior}, {peer_addr}" if prior else peer_addr))
        query = scope.get("query_string", b"").decode("latin-1")
        url = self.config.upstream + path + (f"?{query}" if query else "")
        try:
            r = await self._http().request(method, url, content=body, headers=forward)
        except httpx.TimeoutException as exc:
            self.counts["upstream_errors"] += 1
            return _json_response(
                504, f"wm guard: upstream {self.config.upstream} timed out ({type(exc).__name__})")
        except httpx.HTTPError as exc:
            self.counts["upstream_errors"] += 1
            return _json_response(
                502, f"wm guard: upstream {self.config.upstream} unreachable ({type(exc).__name__})")
        content = r.content
        out_headers = [(k.encode("latin-1"), v.encode("latin-1"))
                       for k, v in r.headers.multi_items() if k.lower() not in _RESPONSE_DROP]
        if route is not None and x is not None and r.status_code == 200:
            self.counts["inference"] += 1
            marked = await self._mark(route, x, content, req_headers, peer_addr)
            if isinstance(marked, tuple):
                return marked
            content = marked
        out_headers.append((b"content-length", str(len(content)).encode()))
        return r.status_code, out_headers, content

    async def _mark(self, route: Any, x: np.ndarray, content: bytes, headers: Mapping[str, str],
                    peer: str | None) -> bytes | tuple[int, list[tuple[bytes, bytes]], bytes]:
        n = int(x.shape[0])
        answer = parse_answer(route, content, n, self.config.num_classes)
        if answer is None:
            return content  # not an answer the guard can mark: as the upstream said it
        self.counts["rows"] += n
        client = client_identity(headers, peer, self.marker.client_pseudonym,
                                 self.config.client_headers)
        if self.monitor is not None:
            self.monitor.submit(client, x, answer.labels, time.time())
        marks: dict[int, int] = {}
        items: list[tuple[bytes, str, int]] = []
        for i in range(n):
            data = canonical_bytes(x[i])
            mark = self.marker.decide(data)
            if mark.marked:
                marks[i] = mark.label
                items.append((data, self.marker.digest(data), mark.label))
        if not marks:
            return content
        if self.recorder is not None:
            try:
                await asyncio.to_thread(self.recorder.record, items, answer.kind, client)
            except OSError as exc:
                return _json_response(
                    503, f"wm guard: cannot record a marked answer ({type(exc).__name__}); retry")
        self.counts["marked"] += len(marks)
        return encode_marked(route, answer, marks, self.config.num_classes)
