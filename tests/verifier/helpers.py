"""Test doubles served for real over loopback: an oracle suspect and misbehaving handlers."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

import numpy as np
import torch
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from core.probeset import ProbeSet
from core.serving import bind, url_of
from verifier.session import input_digest

Behaviour = Callable[[Request, Any, int], Response | None]


def oracle_app(probes: ProbeSet, *, copy: bool = True, num_classes: int = 10) -> Starlette:
    """An OIP suspect that answers the committed label of every probe (copy=True), or label 0.

    Decoys and anything else get label ``1``. Stands in for an exact copy, or for an
    independent model that never matches, without training anything.
    """
    table = {input_digest(probes.inputs[i]): int(probes.expected[i]) for i in range(len(probes))}
    shape = list(probes.input_shape)

    async def meta(request: Request) -> Response:
        return JSONResponse({"name": request.path_params["name"], "platform": "oracle",
                             "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, *shape]}],
                             "outputs": [{"name": "y", "datatype": "INT64", "shape": [-1]}]})

    async def infer(request: Request) -> Response:
        doc = await request.json()
        t = doc["inputs"][0]
        assert t["name"] == "x"
        x = np.asarray(t["data"], dtype=np.float32).reshape(t["shape"])
        labels = [table.get(input_digest(row), 1) if copy else
                  (0 if input_digest(row) in table else 1) for row in x]
        return JSONResponse({"model_name": "oracle", "outputs": [
            {"name": "y", "shape": [len(labels)], "datatype": "INT64", "data": labels}]})

    return Starlette(routes=[Route("/v2/models/{name}", meta, methods=["GET"]),
                             Route("/v2/models/{name}/infer", infer, methods=["POST"])])


def misbehaving_app(num_classes: int = 10, input_shape: tuple[int, ...] = (1, 8, 8)) -> Starlette:
    """An OIP server whose model name picks how it misbehaves (see ``_behave``)."""
    calls: dict[str, int] = {}

    async def meta(request: Request) -> Response:
        name = request.path_params["name"]
        if name == "auth" and request.headers.get("authorization") != "Bearer s3cret":
            return JSONResponse({"error": "unauthorised"}, status_code=401)
        return JSONResponse({"name": name, "platform": "misbehaving",
                             "inputs": [{"name": "input-0", "datatype": "FP32",
                                         "shape": [-1, *input_shape]}],
                             "outputs": [{"name": "output-0", "datatype": "FP32",
                                          "shape": [-1, num_classes]}]})

    async def infer(request: Request) -> Response:
        name = request.path_params["name"]
        calls[name] = calls.get(name, 0) + 1
        n = calls[name]
        doc = await request.json()
        batch = int(doc["inputs"][0]["shape"][0])
        good = {"outputs": [{"name": "output-0", "shape": [batch], "datatype": "INT64",
                             "data": [3] * batch}]}
        match name:
            case "garbage":
                return Response(b'{"outputs": [ not json', media_type="application/json")
            case "nan":
                nans = ",".join(["NaN"] * (batch * num_classes))
                body = ('{"outputs":[{"name":"output-0","shape":[' f"{batch},{num_classes}"
                        '],"datatype":"FP32","data":[' + nans + "]}]}")
                return Response(body.encode(), media_type="application/json")
            case "short":
                return JSONResponse({"outputs": [{"name": "output-0", "shape": [batch - 1],
                                                  "datatype": "INT64", "data": [1] * (batch - 1)}]})
            case "classes":
                return JSONResponse({"outputs": [{"name": "output-0", "shape": [batch, 7],
                                                  "datatype": "FP32", "data": [0.1] * (batch * 7)}]})
            case "range":
                return JSONResponse({"outputs": [{"name": "output-0", "shape": [batch],
                                                  "datatype": "INT64", "data": [12] * batch}]})
            case "strings":
                return JSONResponse({"outputs": [{"name": "output-0", "shape": [batch],
                                                  "datatype": "BYTES", "data": ["cat"] * batch}]})
            case "mismatch":
                return JSONResponse({"outputs": [{"name": "output-0", "shape": [batch, 2],
                                                  "datatype": "INT64", "data": [1] * batch}]})
            case "busy429":
                if n <= 2:
                    return JSONResponse({"error": "slow down"}, status_code=429,
                                        headers={"Retry-After": "1"})
                return JSONResponse(good)
            case "busy503":
                if n <= 1:
                    return JSONResponse({"error": "warming up"}, status_code=503)
                return JSONResponse(good)
            case "down503":
                return JSONResponse({"error": "down"}, status_code=503)
            case "longwait":
                return JSONResponse({"error": "later"}, status_code=429,
                                    headers={"Retry-After": "3600"})
            case "slow":
                await asyncio.sleep(2.0)
                return JSONResponse(good)
            case "huge":
                return Response(b'{"outputs": [], "pad": "' + b"x" * (2 << 20) + b'"}',
                                media_type="application/json")
            case "auth":
                if request.headers.get("authorization") != "Bearer s3cret":
                    return JSONResponse({"error": "unauthorised"}, status_code=401)
                return JSONResponse(good)
            case "servererror":
                return JSONResponse({"error": "model crashed: CUDA out of memory"}, status_code=500)
            case "deep":
                return Response(b'{"outputs": ' + b"[" * 50_000 + b"]" * 50_000 + b"}",
                                media_type="application/json")
            case "bignum":
                body = ('{"outputs":[{"name":"output-0","shape":[' f"{batch}"
                        '],"datatype":"INT64","data":[' + ",".join(["1" + "0" * 400] * batch) + "]}]}")
                return Response(body.encode(), media_type="application/json")
            case "overflow":
                body = ('{"outputs":[{"name":"output-0","shape":[' f"{batch}"
                        '],"datatype":"FP32","data":[' + ",".join(["1e400"] * batch) + "]}]}")
                return Response(body.encode(), media_type="application/json")
            case "shape":
                return JSONResponse({"outputs": [{"name": "output-0", "shape": [batch, 2, 5],
                                                  "datatype": "FP32", "data": [0.1] * (batch * 10)}]})
            case "objects":
                return JSONResponse({"outputs": [{"name": "output-0", "shape": [batch],
                                                  "datatype": "INT64", "data": [{"label": 3}] * batch}]})
            case "drip":
                async def one_byte_at_a_time() -> AsyncIterator[bytes]:
                    while True:  # a valid answer's first bytes, one every 50 ms, for ever
                        for byte in b'{"outputs": [{"name": "output-0", "data": [':
                            yield bytes([byte])
                            await asyncio.sleep(0.05)

                return StreamingResponse(one_byte_at_a_time(), media_type="application/json")
        return JSONResponse({"error": f"no model {name}"}, status_code=404)

    app = Starlette(routes=[Route("/v2/models/{name}", meta, methods=["GET"]),
                            Route("/v2/models/{name}/infer", infer, methods=["POST"])])
    app.state.calls = calls
    return app


@contextmanager
def raw_server(handle: Callable[[socket.socket, threading.Event], None]) -> Iterator[str]:
    """A TCP server on a port-0 socket that hands each connection to ``handle`` (in a thread).

    ``handle(conn, stop)`` owns the connection; ``stop`` is set when the block ends. Yields the URL.
    """
    sock = bind()
    sock.settimeout(0.2)
    stop = threading.Event()

    def serve(conn: socket.socket) -> None:
        with suppress(OSError), conn:
            handle(conn, stop)

    def loop() -> None:
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    try:
        yield url_of(sock)
    finally:
        stop.set()
        t.join(timeout=2)
        sock.close()


@contextmanager
def dropping_server() -> Iterator[tuple[str, list[int]]]:
    """A TCP server that accepts each connection and closes it at once; ``(url, [accepted])``."""
    accepted = [0]

    def drop(conn: socket.socket, stop: threading.Event) -> None:
        accepted[0] += 1
        conn.recv(65536)

    with raw_server(drop) as url:
        yield url, accepted


@contextmanager
def dripping_server(interval: float = 0.05) -> Iterator[tuple[str, list[int]]]:
    """A TCP server that answers every request with a status line and headers one byte at a time.

    Its answer never ends (the headers never finish); ``(url, [bytes sent])``.
    """
    sent = [0]

    def drip(conn: socket.socket, stop: threading.Event) -> None:
        conn.recv(65536)
        head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Pad: " + b"x" * 10_000
        for byte in head:
            if stop.wait(interval):
                return
            conn.sendall(bytes([byte]))
            sent[0] += 1

    with raw_server(drip) as url:
        yield url, sent


def untrained(arch: str = "mlp", seed: int = 0) -> torch.nn.Module:
    """A randomly initialised model (enough for protocol tests)."""
    from core.arch import build_model

    torch.manual_seed(seed)
    return build_model(arch, (1, 8, 8), 10).eval()
