"""Attacks on the guard itself (issue #10), each served for real on loopback.

- SSRF: a request target that is not a path (``@host:port/...``, absolute
  form) or that another server would resolve differently (``%``-escapes, dot
  segments, ``//``) must never reach anything but the configured upstream, nor
  skip marking;
- self-declared identities: with API keys (``--clients``) a request is
  attributed by its key, and a request without a known key is refused.
"""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from core.errors import InputError
from core.marking import canonical_bytes
from core.serving import running_server
from guard.clients import ClientKeys, add_client
from guard.epochs import current_epoch
from guard.journal import GUARD_QUERIES_TYPE, GuardRecord
from guard.prf import GuardKey, Marker
from registry.log import Registry
from tests.guard.conftest import MODEL, UPSTREAM_NAME, Owner, digits_queries, guarded, oip_body


def _raw(url: str, request: bytes) -> bytes:
    """Send raw bytes to the server at ``url``; everything it answers before closing (5 s at most)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(request)
        chunks = []
        try:
            while chunk := s.recv(65536):
                chunks.append(chunk)
        except TimeoutError:
            pass
    return b"".join(chunks)


def _victim() -> tuple[Starlette, list[str]]:
    seen: list[str] = []

    async def anything(request: Request) -> JSONResponse:
        seen.append(request.url.path)
        return JSONResponse({"outputs": [{"name": "o", "shape": [1], "datatype": "INT64", "data": [0]}]})

    return Starlette(routes=[Route("/{p:path}", anything, methods=["GET", "POST"])]), seen


@pytest.mark.parametrize("target", [
    "@127.0.0.1:{port}/v2/models/digits/infer",
    "http://127.0.0.1:{port}/v2/models/digits/infer",
    "*",
])
def test_a_target_that_is_not_a_path_is_refused_and_reaches_nobody(owner: Owner, target: str) -> None:
    app, seen = _victim()
    body = json.dumps(oip_body(digits_queries(1))).encode()
    with running_server(app) as victim, guarded(owner, rate=1.0) as g:
        t = target.format(port=victim.port).encode()
        answer = _raw(g.guard.url, b"POST " + t + b" HTTP/1.1\r\nhost: x\r\nconnection: close\r\n"
                      b"content-type: application/json"
                      b"\r\ncontent-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:200]  # by llhttp or by the proxy
    assert seen == [] and g.service.proxy.counts["inference"] == 0


@pytest.mark.parametrize("path", [
    "/v2/models/x/../digits/infer",
    "/v2/models/./digits/infer",
    "//v2/models/digits/infer",
    "/v2/models/digits%2F..%2Fdigits/infer",
    "/v2/models/digit%2573/infer",
])
def test_paths_another_server_could_resolve_differently_are_refused(owner: Owner, path: str) -> None:
    body = json.dumps(oip_body(digits_queries(1))).encode()
    with guarded(owner, rate=1.0) as g:  # raw bytes: an HTTP client would normalise the path
        answer = _raw(g.guard.url, b"POST " + path.encode() + b" HTTP/1.1\r\nhost: x\r\n"
                      b"connection: close\r\ncontent-length: " + str(len(body)).encode() + b"\r\n\r\n"
                      + body)
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert answer.endswith(b'{"error": "wm guard: the request target must be a path in normal form"}')
    assert g.service.proxy.counts["inference"] == 0


def test_a_percent_encoded_model_name_is_marked_like_the_plain_one(owner: Owner) -> None:
    """The upstream decodes ``%73`` to ``s``: the guard routes on the decoded path, so it marks."""
    with Registry.open(owner.registry_url) as reg:
        marker = Marker(GuardKey.derive(owner.key, MODEL), current_epoch(reg, owner.key, MODEL, 1.0, 10))
    x = digits_queries(8)
    with guarded(owner, rate=1.0) as g, httpx.Client() as c:
        r = c.post(f"{g.guard.url}/v2/models/digit%73/infer", json=oip_body(x))
    assert r.status_code == 200
    assert r.json()["outputs"][0]["data"] == [marker.decide(canonical_bytes(row)).label for row in x]


def _records(owner: Owner) -> list[GuardRecord]:
    with Registry.open(owner.registry_url) as reg:
        return [GuardRecord.from_dict(r) for e in reg.entries(payload_type=GUARD_QUERIES_TYPE)
                for r in e.record["records"]]


def test_api_keys_attribute_queries_and_refuse_unknown_keys(owner: Owner, tmp_path: Path) -> None:
    clients = tmp_path / "clients.json"
    alice, bob = add_client(clients, "alice"), add_client(clients, "bob")
    stored = clients.read_text()
    assert alice not in stored and bob not in stored  # only hashes are kept
    assert clients.stat().st_mode & 0o777 == 0o600
    with pytest.raises(InputError, match="already has a key"):
        add_client(clients, "alice")
    x = digits_queries(6)
    with guarded(owner, rate=1.0, clients=clients) as g, httpx.Client() as c:
        url = g.infer_url(g.guard.url)
        assert c.post(url, json=oip_body(x[:2]), headers={"x-api-key": alice}).status_code == 200
        assert c.post(url, json=oip_body(x[2:4]),
                      headers={"authorization": f"Bearer {bob}", "x-client-id": "alice"}).status_code == 200
        for headers in ({}, {"x-client-id": "alice"}, {"x-api-key": alice + "x"},
                        {"authorization": "Bearer wmk_guess"}):
            r = c.post(url, json=oip_body(x[4:]), headers=headers)
            assert r.status_code == 401, headers
            assert r.json()["error"] == "wm guard: a known API key is required (X-Api-Key or Bearer)"
        assert c.get(f"{g.guard.url}/v2/health/ready").status_code == 200  # readiness needs no key
        assert c.get(f"{g.guard.url}/v2/models/{UPSTREAM_NAME}").status_code == 401
        assert g.service.proxy.counts["inference"] == 2
    by_client: dict[str, int] = {}
    for r in _records(owner):
        by_client[r.client] = by_client.get(r.client, 0) + 1
    assert by_client == {"client:alice": 2, "client:bob": 2}


@pytest.mark.parametrize("doc", [
    "not json", '{"type": "wm.guard-clients/v1"}',
    '{"type": "wm.guard-clients/v1", "clients": [{"name": "a", "key_sha256": "00"}]}',
    '{"type": "wm.guard-clients/v1", "clients": [{"name": "a b", "key_sha256": "' + "0" * 64 + '"}]}',
])
def test_a_malformed_clients_file_is_refused(tmp_path: Path, doc: str) -> None:
    (tmp_path / "c.json").write_text(doc)
    with pytest.raises(InputError):
        ClientKeys.load(tmp_path / "c.json")


def test_pipelined_and_concurrent_requests_are_answered_in_order(owner: Owner) -> None:
    """Several requests on one connection, sent before reading any answer (HTTP/1.1 pipelining)."""
    x = digits_queries(3)
    bodies = [json.dumps(oip_body(x[i:i + 1])).encode() for i in range(3)]
    with guarded(owner, rate=0.0) as g, httpx.Client() as c:
        direct = [c.post(g.infer_url(g.upstream.url), content=b).content for b in bodies]
        raw = [b"POST /v2/models/" + UPSTREAM_NAME.encode() + b"/infer HTTP/1.1\r\nhost: x\r\n"
               + (b"connection: close\r\n" if i == 2 else b"")
               + b"content-length: " + str(len(b)).encode() + b"\r\n\r\n" + b for i, b in enumerate(bodies)]
        answer = _raw(g.guard.url, b"".join(raw))
        errors: list[BaseException] = []

        def hammer() -> None:
            try:
                with httpx.Client() as own:
                    for b, d in zip(bodies * 5, direct * 5, strict=True):
                        assert own.post(g.infer_url(g.guard.url), content=b).content == d
            except BaseException as exc:  # reported in the test thread below
                errors.append(exc)

        threads = [threading.Thread(target=hammer) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert not errors and not any(t.is_alive() for t in threads)
    parts = answer.split(b"HTTP/1.1 200 OK\r\n")[1:]
    assert [p.split(b"\r\n\r\n", 1)[1][:len(d)] for p, d in zip(parts, direct, strict=True)] == direct
