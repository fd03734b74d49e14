"""The guard for real on loopback, in front of a real upstream serving a trained model."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from pathlib import Path

import httpx
import numpy as np
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from core.canonical import b64e
from core.marking import canonical_bytes
from core.serving import running_server
from guard.epochs import current_epoch
from guard.journal import GUARD_QUERIES_TYPE, GuardRecord
from guard.prf import GuardKey, Marker
from guard.probes import commit_guard_probes
from guard.service import GuardOptions, GuardService, guard_dir, open_vault
from registry.log import Registry
from tests.guard.conftest import MODEL, UPSTREAM_NAME, Owner, digits_queries, guarded, oip_body


def _marker(owner: Owner, rate: float) -> Marker:
    """The marker the guard will use: its epoch, committed now (the guard then takes it)."""
    with Registry.open(owner.registry_url) as reg:
        epoch = current_epoch(reg, owner.key, MODEL, rate, 10)
    return Marker(GuardKey.derive(owner.key, MODEL), epoch)


def _records(owner: Owner) -> list[GuardRecord]:
    with Registry.open(owner.registry_url) as reg:
        return [GuardRecord.from_dict(r) for e in reg.entries(payload_type=GUARD_QUERIES_TYPE)
                for r in e.record["records"]]


def _infer(client: httpx.Client, url: str, x: np.ndarray, **headers: str) -> httpx.Response:
    return client.post(url, json=oip_body(x), headers=headers)


def test_marks_labels_by_key_and_records_every_marked_query(owner: Owner) -> None:
    rate = 0.2
    marker = _marker(owner, rate)
    x = digits_queries(160)
    with guarded(owner, rate=rate) as g, httpx.Client() as c:
        direct, proxied, again = [], [], []
        for i in range(0, len(x), 16):
            direct += _infer(c, g.infer_url(g.upstream.url), x[i:i + 16]).json()["outputs"][0]["data"]
            r = _infer(c, g.infer_url(g.guard.url), x[i:i + 16], **{"x-client-id": "alice"})
            assert r.status_code == 200 and r.json()["model_name"] == UPSTREAM_NAME
            proxied += r.json()["outputs"][0]["data"]
        for i in range(0, len(x), 32):  # the same inputs again, batched differently
            again += _infer(c, g.infer_url(g.guard.url), x[i:i + 32]).json()["outputs"][0]["data"]
    marks = [marker.decide(canonical_bytes(r)) for r in x]
    expected = [m.label if m.marked else d for m, d in zip(marks, direct, strict=True)]
    assert proxied == expected and again == expected
    n_marked = sum(m.marked for m in marks)
    assert 15 <= n_marked <= 50  # 160 inputs at 20%
    # A marked label that equals the upstream's leaves the answer as it was (and is still a probe).
    changed = sum(m.marked and m.label != d for m, d in zip(marks, direct, strict=True))
    assert sum(p != d for p, d in zip(proxied, direct, strict=True)) == changed <= n_marked
    records = _records(owner)
    assert len(records) == 2 * n_marked  # each marked answer recorded, both times it was given
    assert sorted({r.client for r in records}) == ["ip:127.0.0.1", "x-client-id:alice"]
    assert {r.digest for r in records} == {marker.digest(canonical_bytes(r)) for r, m in
                                            zip(x, marks, strict=True) if m.marked}
    with Registry.open(owner.registry_url) as reg:
        result = commit_guard_probes(reg, owner.key, open_vault(owner.home, owner.key, MODEL), MODEL)
        assert len(result.probeset_ids) == 1 and result.probes.duplicates == n_marked
        ps = reg.load_probeset(result.probeset_ids[0], owner.key)
        assert ps.kind == "guard" and len(ps) == n_marked and ps.null.to_dict()["p0"] == 0.1
        assert f":epoch=0:key={marker.epoch.commitment}:" in ps.scheme
        again_result = commit_guard_probes(reg, owner.key, open_vault(owner.home, owner.key, MODEL),
                                           MODEL)
        assert again_result.probeset_ids == () and again_result.probes.already_committed == 2 * n_marked
        reg.verify_log()
    # Clients' inputs are never on disk in plain text (journal, epoch keys, registry).
    marked_x = [r for r, m in zip(x, marks, strict=True) if m.marked]
    disk = b"".join(p.read_bytes() for p in owner.home.rglob("*") if p.is_file()
                    and p.suffix != ".pt2")
    for r in marked_x[:10]:
        raw = np.ascontiguousarray(r, dtype="<f4").tobytes()
        assert raw not in disk and b64e(raw).encode() not in disk
        assert json.dumps(r.reshape(-1).tolist())[1:40].encode() not in disk


@pytest.mark.parametrize("output", ["probabilities", "logits"])
def test_marked_scores_are_consistent_with_the_marked_label(owner: Owner, output: str) -> None:
    marker = _marker(owner, 0.3)
    x = digits_queries(48)
    with guarded(owner, rate=0.3, output=output) as g, httpx.Client() as c:
        direct = np.asarray(_infer(c, g.infer_url(g.upstream.url), x).json()["outputs"][0]["data"])
        proxied = np.asarray(_infer(c, g.infer_url(g.guard.url), x).json()["outputs"][0]["data"])
    direct, proxied = direct.reshape(48, 10), proxied.reshape(48, 10)
    for i, row in enumerate(x):
        m = marker.decide(canonical_bytes(row))
        if m.marked:
            assert int(proxied[i].argmax()) == m.label
            assert np.allclose(np.sort(proxied[i]), np.sort(direct[i]), atol=1e-6)
        else:
            assert np.array_equal(proxied[i], direct[i])
    if output == "probabilities":
        assert np.allclose(proxied.sum(axis=1), 1, atol=1e-5)


def test_v1_and_torchserve_answers_are_marked_too(owner: Owner) -> None:
    marker = _marker(owner, 1.0)
    x = digits_queries(4)
    with guarded(owner, rate=1.0) as g, httpx.Client() as c:
        v1 = c.post(f"{g.guard.url}/v1/models/{UPSTREAM_NAME}:predict",
                    json={"instances": x.tolist()}).json()["predictions"]
        ts = c.post(f"{g.guard.url}/predictions/{UPSTREAM_NAME}", json={"data": x[0].tolist()}).json()
    labels = [marker.decide(canonical_bytes(r)).label for r in x]
    assert v1 == labels and ts == labels[0]


def test_inference_requests_the_guard_cannot_read_are_refused_and_not_forwarded(owner: Owner) -> None:
    """What the guard cannot read it cannot mark: refused (400), never answered unmarked."""
    x = digits_queries(2)
    good = oip_body(x)
    ragged = {"inputs": [{**good["inputs"][0], "shape": [2, 1, 8, 8],  # type: ignore[index]
                          "data": [x[0].reshape(-1).tolist(), x[1].reshape(-1).tolist()[:63]]}]}
    flat = x.reshape(-1).tolist()  # rows of 65 and 63 values: the right count, ragged (once answered)
    ragged_128 = {"inputs": [{**good["inputs"][0], "data": [flat[:65], flat[65:]]}]}  # type: ignore[index]
    nan = json.dumps(good).replace(str(float(x.reshape(-1)[10])), "NaN", 1)
    bodies = [b"{not json", json.dumps(ragged).encode(), json.dumps(ragged_128).encode(), nan.encode(),
              b'{"inputs": [{"name": "input-0"}]}']
    with guarded(owner, rate=1.0) as g, httpx.Client() as c:
        url = g.infer_url(g.guard.url)
        for body in bodies:
            r = c.post(url, content=body, headers={"content-type": "application/json"})
            assert r.status_code == 400, body[:40]
            assert r.json()["error"].startswith("wm guard: not an inference request the guard can read")
        assert g.service.proxy.counts["refused"] == len(bodies)
        assert g.service.proxy.counts["inference"] == 0  # none of them reached the upstream
        assert g.service.journal.next_seq == 0
    assert _records(owner) == []


def test_other_requests_are_answered_as_the_upstream_would_and_not_recorded(owner: Owner) -> None:
    good = oip_body(digits_queries(2))
    # Another layout of the same size is an input the guard reads (a server declaring [-1, 64]
    # is sent it); this upstream refuses it, and the guard passes its refusal on.
    other_layout = {"inputs": [{**good["inputs"][0], "shape": [2, 1, 4, 16]}]}  # type: ignore[index]
    requests: list[tuple[str, str, bytes | None]] = [
        ("POST", f"/v2/models/{UPSTREAM_NAME}/infer", json.dumps(other_layout).encode()),
        ("POST", "/v2/models/other/infer", json.dumps(good).encode()),
        ("GET", f"/v2/models/{UPSTREAM_NAME}", None),
        ("GET", "/v2/health/ready", None),
        ("GET", "/no/such/path?x=1", None),
        ("PUT", f"/v2/models/{UPSTREAM_NAME}/infer", b"{}"),
        ("HEAD", "/v2/health/ready", None),
    ]
    with guarded(owner, rate=1.0) as g, httpx.Client() as c:
        for method, path, body in requests:
            d = c.request(method, g.upstream.url + path, content=body)
            p = c.request(method, g.guard.url + path, content=body)
            assert (p.status_code, p.content) == (d.status_code, d.content), path
            assert p.headers.get("content-type") == d.headers.get("content-type")
        assert g.service.journal.next_seq == 0
    assert _records(owner) == []


def test_upstream_down_gives_502_with_a_clear_error(owner: Owner) -> None:
    # A port bound but never listened on refuses connections, and stays ours for the
    # whole test (a closed server's port could be taken by another test meanwhile).
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{dead.getsockname()[1]}"
    service = GuardService.open(owner.home, owner.registry_url, owner.key, GuardOptions(
        upstream=f"{url}/v2/models/{UPSTREAM_NAME}/infer", model=MODEL, rate=1.0, timeout=2.0)).start()
    try:
        with service.serve_background() as g, httpx.Client() as c:
            r = c.post(f"{g.url}/v2/models/{UPSTREAM_NAME}/infer", json=oip_body(digits_queries(1)))
        assert r.status_code == 502
        assert r.json() == {"error": f"wm guard: upstream {url} unreachable "
                                     "(cannot connect (ConnectionRefusedError))"}
    finally:
        service.close()
        dead.close()
    assert _records(owner) == []


def _misbehaving_upstream() -> Starlette:
    async def infer(request: Request) -> Response:
        doc = await request.json()
        n = doc["inputs"][0]["shape"][0]
        match request.headers.get("x-behave"):
            case "500":
                return JSONResponse({"error": "model crashed"}, status_code=500)
            case "garbage":
                return Response(b'{"outputs": [ not json', media_type="application/json")
            case "wrong-count":
                return JSONResponse({"outputs": [{"name": "o", "shape": [n + 1], "datatype": "INT64",
                                                  "data": [1] * (n + 1)}]})
            case "slow":
                await asyncio.sleep(3)
        return JSONResponse({"outputs": [{"name": "o", "shape": [n], "datatype": "INT64",
                                          "data": [1] * n}]})

    return Starlette(routes=[Route(f"/v2/models/{UPSTREAM_NAME}/infer", infer, methods=["POST"])])


def test_misbehaving_upstream_is_never_passed_on_unmarked_and_nothing_recorded(owner: Owner) -> None:
    x = digits_queries(3)
    with running_server(_misbehaving_upstream()) as up:
        service = GuardService.open(owner.home, owner.registry_url, owner.key, GuardOptions(
            upstream=up.url, model=MODEL, upstream_model=UPSTREAM_NAME, rate=1.0, timeout=0.5)).start()
        try:
            with service.serve_background() as g, httpx.Client(timeout=10) as c:
                url = f"/v2/models/{UPSTREAM_NAME}/infer"
                d = c.post(up.url + url, json=oip_body(x), headers={"x-behave": "500"})
                p = c.post(g.url + url, json=oip_body(x), headers={"x-behave": "500"})
                assert (p.status_code, p.content) == (d.status_code, d.content)  # an error: as it is
                for behave in ("garbage", "wrong-count"):  # rate 1: rows to mark, an answer it cannot
                    p = c.post(g.url + url, json=oip_body(x), headers={"x-behave": behave})
                    assert p.status_code == 502, behave
                    assert p.json()["error"] == ("wm guard: the upstream's answer cannot be marked, "
                                                 "so it is not passed on")
                slow = c.post(g.url + url, json=oip_body(x), headers={"x-behave": "slow"})
                assert slow.status_code == 504
                assert slow.json()["error"].startswith(f"wm guard: upstream {up.url} timed out")
                ok = c.post(g.url + url, json=oip_body(x)).json()["outputs"][0]["data"]
                assert ok != [1, 1, 1]  # rate 1: every row marked (all three equal to 1 w.p. 1e-3)
        finally:
            service.close()
    assert len(_records(owner)) == 3


def test_sixteen_concurrent_clients_lose_no_record(owner: Owner) -> None:
    rate = 0.1
    marker = _marker(owner, rate)
    x = digits_queries(None, noisy_copies=1)  # 1,078 inputs
    answered: dict[str, list[int]] = {}
    errors: list[BaseException] = []

    def client(i: int, url: str) -> None:
        rows = x[i::16]
        got: list[int] = []
        try:
            with httpx.Client(timeout=30) as c:
                for j in range(0, len(rows), 8):
                    r = _infer(c, url, rows[j:j + 8], **{"x-client-id": f"c{i}"})
                    r.raise_for_status()
                    got += r.json()["outputs"][0]["data"]
        except BaseException as exc:  # reported below
            errors.append(exc)
        answered[f"x-client-id:c{i}"] = got

    with guarded(owner, rate=rate, batch_size=16) as g:
        threads = [threading.Thread(target=client, args=(i, g.infer_url(g.guard.url))) for i in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors
    records = _records(owner)
    expected: dict[str, set[str]] = {}
    for i in range(16):
        for row in x[i::16]:
            data = canonical_bytes(row)
            if marker.decide(data).marked:
                expected.setdefault(f"x-client-id:c{i}", set()).add(marker.digest(data))
    got: dict[str, set[str]] = {}
    for r in records:
        got.setdefault(r.client, set()).add(r.digest)
    assert got == expected and len(records) == sum(map(len, expected.values()))
    assert sorted(r.seq for r in records) == list(range(len(records)))  # no gap, no double
    with Registry.open(owner.registry_url) as reg:
        report = reg.verify_log()
        assert report.size == len(reg.entries())
        batches = reg.entries(payload_type=GUARD_QUERIES_TYPE)
        assert len(batches) >= 2 and all(len(b.record["records"]) <= 16 for b in batches)


def test_a_second_guard_for_the_same_model_is_refused(owner: Owner, tmp_path: Path) -> None:
    options = GuardOptions(upstream="http://127.0.0.1:9/", model=MODEL)
    first = GuardService.open(owner.home, owner.registry_url, owner.key, options)
    try:
        with pytest.raises(Exception, match="another wm guard is already running for model"):
            GuardService.open(owner.home, owner.registry_url, owner.key, options)
    finally:
        first.journal.close()
    assert (guard_dir(owner.home, MODEL) / "journal-0.jsonl").exists()
