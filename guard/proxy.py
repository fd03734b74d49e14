"""The guard: a reverse proxy that watermarks the owner's own prediction API (DAWN).

After Szyller et al., "DAWN: Dynamic Adversarial Watermarking of Neural
Networks" (ACM MM 2021). :class:`GuardProxy` answers each request that
:mod:`guard.http` received by forwarding it to the owner's inference server
(:mod:`guard.upstream`: pooled keep-alive connections, one overall deadline)
and returning the answer unchanged, errors included, except inference answers
of the guarded model. Requests and answers are read by the codecs ``wm serve``
and the verifier use (:mod:`verifier.wire.incoming`), so the guard marks
exactly what a server would answer; :mod:`guard.protocols` rewrites the marked
rows. For each input the keyed
function of :mod:`core.marking`, under the current epoch's committed key,
decides whether it is marked (a fraction R of distinct inputs) and with which
label; a marked row's label is replaced (a score row is permuted so that its
argmax is the marked label). Before a marked answer leaves, its record is
sealed and fsynced to the write-ahead journal (:mod:`guard.journal`); if that
fails the client gets 503 rather than an unrecorded mark.

What the guard refuses, each with one ``{"error": ...}`` line:

- a request target that is not a path in normal form (400): the upstream URL
  is built from the configured upstream and the target's path and query, and a
  target such as ``@host:port/...`` or ``http://host/...`` must never steer it
  elsewhere (an open proxy answers unmarked); nor may ``%``-escapes, ``//`` or
  dot segments make the guard and the upstream read different paths;
- an inference request for the guarded model that the shared reader refuses
  (400, with the reader's reason; a large body is parsed off the event loop):
  what it cannot read it cannot mark, so it does not pass it on. A request
  that lays an input out otherwise than the registered shape but with the same
  size (``[N, 784]`` for 1x28x28, as a server declaring that layout is sent) is
  read and marked like any other;
- an upstream answer it cannot rewrite when a row must be marked (502);
- with API keys (:mod:`guard.clients`), a request without a known key (401).

An unreachable upstream gives 502 and a timeout 504; nothing is recorded for them.
The answer to a request none of whose inputs is marked is not parsed unless
the PRADA monitor needs its labels.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import unquote, urlsplit

import numpy as np

from core.clock import format_utc
from core.errors import InputError, SuspectError
from core.marking import canonical_bytes
from guard.clients import OPEN_PATHS, ClientKeys
from guard.http import Request, Response
from guard.journal import GuardRecord, Journal, RegistryFlusher
from guard.monitor import ExtractionMonitor
from guard.prf import Marker
from guard.protocols import encode_marked
from guard.upstream import Upstream, UpstreamError, UpstreamTimeoutError
from guard.vault import InputVault
from verifier.wire.incoming import RequestReader, read_answer, route_of
from verifier.wire.inference import RequestError, Route

__all__ = [
    "CREDENTIAL_HEADERS",
    "DEFAULT_CLIENT_HEADERS",
    "GuardConfig",
    "GuardProxy",
    "MarkRecorder",
    "client_identity",
    "normal_path",
    "upstream_base",
]

DEFAULT_CLIENT_HEADERS: tuple[str, ...] = ("x-client-id", "x-api-key", "authorization")
CREDENTIAL_HEADERS = frozenset({"authorization", "proxy-authorization", "x-api-key", "cookie",
                                "api-key"})
_HOP = frozenset({b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization", b"te",
                  b"trailer", b"trailers", b"transfer-encoding", b"upgrade", b"host",
                  b"content-length", b"expect", b"accept-encoding", b"x-forwarded-for"})
_RESPONSE_DROP = frozenset({b"connection", b"keep-alive", b"transfer-encoding", b"content-length",
                            b"trailer", b"upgrade", b"proxy-authenticate"})
_PATH_MARKERS = ("/v2/", "/v1/", "/predictions/")
_PRINTABLE = re.compile(r"[^\x21-\x7e]")
_NOT_NORMAL = re.compile(r"//|/\.\.?(/|$)|[\\\x00-\x20\x7f-\uffff]")


def upstream_base(url: str) -> tuple[str, str | None]:
    """``(base URL, model name in it or None)`` from the upstream URL the user gave.

    ``http://h:8080/v2/models/digits/infer`` -> ``("http://h:8080", "digits")``;
    a base URL (with or without a path prefix) is kept as it is.
    """
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.netloc:
        raise InputError(f"--upstream must be an http:// URL (the guard speaks plain HTTP to a "
                         f"local inference server), got {url!r}")
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


def normal_path(target: bytes) -> tuple[str, bytes] | None:
    """``(decoded path, query)`` of an origin-form request target, or ``None`` to refuse it.

    Refused: a target not starting with ``/`` (absolute form, ``@host/...``,
    ``*``), non-ASCII bytes, and a path that, ``%``-decoded, holds ``//``, a dot
    segment, a backslash or a control character (another server could resolve
    it to a route the guard did not see).
    """
    if not target.startswith(b"/") or not target.isascii():
        return None
    raw, _, query = target.partition(b"?")
    path = unquote(raw.decode("ascii"), errors="strict")
    if _NOT_NORMAL.search(path) or "%" in path:  # "%" left after decoding: double encoding
        return None
    return path, query


def client_identity(
    headers: Mapping[str, str], peer: str | None, pseudonym: Callable[[str], str],
    names: Sequence[str] = DEFAULT_CLIENT_HEADERS,
) -> str:
    """Who sent a request, as its headers say; credentials only as a keyed pseudonym.

    Used without API keys (:mod:`guard.clients`), when the headers are the
    client's own word. The first of ``names`` present wins: a credential header
    (``Authorization``, ``X-Api-Key``, ...) gives ``key:<16 hex>`` (an HMAC under
    the guard key, so the log never holds a usable secret), any other header
    ``<name>:<value>``; then ``X-Forwarded-For``'s first address, then the peer address.
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
        timeout: seconds for one whole exchange with the upstream.
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

    def record(self, items: Sequence[tuple[bytes, str, int]], output: str, client: str,
               key_epoch: int) -> list[GuardRecord]:
        """Journal marked queries ``(canonical bytes, digest, label)`` answered to ``client``."""
        now = datetime.now(UTC)
        stamp = format_utc(now)
        pending = []
        for data, digest, label in items:
            epoch, sealed = self.vault.seal(data, digest, now)
            pending.append({"digest": digest, "label": label, "output": output, "client": client,
                            "time": stamp, "epoch": epoch, "sealed_input": sealed,
                            "key_epoch": key_epoch})
        out = self.journal.append(pending)
        if self.flusher is not None and len(self.journal.records_after(self.flusher.flushed_seq)) >= \
                self.flusher.batch_size:
            self.flusher.wake()
        return out


def _error(status: int, message: str) -> Response:
    return Response(status, [(b"content-type", b"application/json")],
                    json.dumps({"error": f"wm guard: {message}"}).encode())


class GuardProxy:
    """Answers requests (see the module docstring); one per event loop.

    Args:
        config: upstream, model and limits.
        marker: the keyed marking decision of the current epoch.
        recorder: journals marked queries; ``None`` marks without recording (benchmarks only).
        monitor: PRADA extraction monitoring, if wanted.
        clients: API keys; when given, requests are attributed by them and others refused.
    """

    def __init__(self, config: GuardConfig, marker: Marker, recorder: MarkRecorder | None,
                 monitor: ExtractionMonitor | None = None, clients: ClientKeys | None = None) -> None:
        if marker.num_classes != config.num_classes:
            raise InputError("the marker and the model disagree on the number of classes")
        self.config = config
        self.marker = marker
        self.recorder = recorder
        self.monitor = monitor
        self.clients = clients
        self.upstream = Upstream(config.upstream, timeout=config.timeout)
        self.reader = RequestReader()
        self.counts = {"requests": 0, "inference": 0, "rows": 0, "marked": 0, "upstream_errors": 0,
                       "refused": 0}

    async def aclose(self) -> None:
        """Close the upstream connections and the request parser's worker, if one started."""
        self.upstream.close()
        self.reader.close()

    def _refuse(self, status: int, message: str) -> Response:
        self.counts["refused"] += 1
        return _error(status, message)

    def _client(self, req: Request) -> str:
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in req.headers}
        return client_identity(headers, req.peer, self.marker.client_pseudonym,
                               self.config.client_headers)

    async def handle(self, req: Request) -> Response:
        """The answer to one request."""
        self.counts["requests"] += 1
        parts = normal_path(req.target)
        if parts is None:
            return self._refuse(400, "the request target must be a path in normal form")
        path, _ = parts
        method = req.method.decode("latin-1")
        client: str | None = None
        if self.clients is not None and not (method == "GET" and path in OPEN_PATHS):
            client = self.clients.identify(req.headers)
            if client is None:
                return self._refuse(401, "a known API key is required (X-Api-Key or Bearer)")
        route = route_of(method, path)
        if route is not None and route.model != self.config.upstream_model:
            route = None
        marks: dict[int, int] = {}
        items: list[tuple[bytes, str, int]] = []
        x = None
        if route is not None:
            try:
                x = (await self.reader.parse(route, req.body, self.config.input_shape)).inputs
            except RequestError as exc:
                return self._refuse(exc.status, f"not an inference request the guard can read: {exc}")
            for i in range(x.shape[0]):
                data = canonical_bytes(x[i])
                mark = self.marker.decide(data)
                if mark.marked:
                    marks[i] = mark.label
                    items.append((data, self.marker.digest(data), mark.label))
        forward = [(k, v) for k, v in req.headers if k not in _HOP]
        prior = next((v for k, v in req.headers if k == b"x-forwarded-for"), None)
        if req.peer:
            peer = req.peer.encode()
            forward.append((b"x-forwarded-for", prior + b", " + peer if prior else peer))
        try:
            answer = await self.upstream.request(req.method, req.target, forward, req.body)
        except UpstreamTimeoutError as exc:
            self.counts["upstream_errors"] += 1
            return _error(504, f"upstream {self.config.upstream} timed out ({exc})")
        except UpstreamError as exc:
            self.counts["upstream_errors"] += 1
            return _error(502, f"upstream {self.config.upstream} unreachable ({exc})")
        headers = [(k, v) for k, v in answer.headers if k not in _RESPONSE_DROP]
        if route is None or x is None or answer.status != 200 or (not marks and self.monitor is None):
            return Response(answer.status, headers, answer.body)
        self.counts["inference"] += 1
        self.counts["rows"] += x.shape[0]
        return await self._mark(route, x, marks, items, headers, answer.body,
                                client or self._client(req))

    async def _mark(self, route: Route, x: np.ndarray, marks: dict[int, int],
                    items: list[tuple[bytes, str, int]], headers: list[tuple[bytes, bytes]],
                    body: bytes, client: str) -> Response:
        n = int(x.shape[0])
        try:
            parsed = read_answer(route, body, n, self.config.num_classes)
        except SuspectError:
            parsed = None
        if parsed is None or not parsed.writable or any(k == b"content-encoding" for k, _ in headers):
            if marks:
                return _error(502, "the upstream's answer cannot be marked, so it is not passed on")
            return Response(200, headers, body)
        if self.monitor is not None:
            self.monitor.submit(client, x, parsed.labels, time.time())
        if not marks:
            return Response(200, headers, body)
        if self.recorder is not None:
            try:
                await asyncio.to_thread(self.recorder.record, items, parsed.kind, client,
                                        self.marker.epoch.number)
            except OSError as exc:
                return _error(503, f"cannot record a marked answer ({type(exc).__name__}); retry")
        self.counts["marked"] += len(marks)
        body = encode_marked(parsed, marks)
        return Response(200, headers, body)
