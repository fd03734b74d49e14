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

from core.data import load_digits
from core.probeset import ProbeSet
from core.serving import bind, url_of
from verifier.session import input_digest
from watermark import WatermarkHook, WatermarkKey, parse_scheme

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


def label_of(row: np.ndarray) -> int:
    """The label :func:`deployed_app`'s models give an input: a fixed function of its values."""
    return int(abs(float(np.asarray(row, dtype=np.float64).sum())) * 1000) % 10


DEPLOYED: dict[str, dict[str, Any]] = {
    # OIP model metadata as real servers publish it (name -> the "inputs" they declare, or none)
    "mlserver": {"inputs": [], "outputs": []},  # MLServer, custom runtime: declares nothing
    "bare": {},  # no "inputs" or "outputs" at all
    "free": {"inputs": [{"name": "input-0", "datatype": "FP32", "shape": [-1, -1, -1, -1]}]},
    "flat": {"inputs": [{"name": "input-0", "datatype": "FP32", "shape": [-1, 64]}]},
    "nobatch": {"inputs": [{"name": "input-0", "datatype": "FP32", "shape": [1, 8, 8]}]},
    "named": {"inputs": [{"name": "pixels", "datatype": "FP64", "shape": [-1, 1, 8, 8]}],
              "outputs": [{"name": "scores", "datatype": "FP32", "shape": [-1, 10]}]},
    "bytes": {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [-1]}]},
    "wide": {"inputs": [{"name": "input-0", "datatype": "FP32", "shape": [-1, 3, 8, 8]}]},
}


def deployed_app() -> Starlette:
    """Model servers as deployed, each as strict as Triton about what it declared.

    OIP models (:data:`DEPLOYED`) refuse an input name, datatype or layout other
    than the one they declare (``-1`` is free; with nothing declared, anything
    goes) and answer ``[N, 1]`` INT64 labels (``scores``: ``[N, 10]`` FP32).
    V1 model ``dicts`` answers objects of named outputs; TorchServe model
    ``topk`` a top-k map and ``record`` an object with a label. Every label is
    :func:`label_of` of the input.
    """

    async def meta(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in DEPLOYED:
            return JSONResponse({"error": f"Model {name} not found"}, status_code=404)
        return JSONResponse({"name": name, "versions": [], "platform": "", **DEPLOYED[name]})

    async def infer(request: Request) -> Response:
        name = request.path_params["name"]
        t = (await request.json())["inputs"][0]
        declared = (DEPLOYED[name].get("inputs") or [None])[0]
        if declared is not None:
            layout = declared["shape"][1:] if declared["shape"][0] == -1 else declared["shape"]
            if t["name"] != declared["name"] or t["datatype"] != declared["datatype"] or any(
                d not in (-1, s) for d, s in zip(layout, t["shape"][1:], strict=True)
            ) or len(layout) != len(t["shape"]) - 1:
                return JSONResponse({"error": f"bad input {t['name']} {t['datatype']} {t['shape']}"},
                                    status_code=400)
        x = np.asarray(t["data"], dtype=np.float64).reshape(t["shape"])
        labels = [label_of(row) for row in x]
        if name == "named":
            scores = np.full((len(labels), 10), 0.01)
            scores[np.arange(len(labels)), labels] = 0.91
            out = {"name": "scores", "shape": [len(labels), 10], "datatype": "FP32",
                   "data": scores.reshape(-1).tolist()}
        else:
            out = {"name": "output-0", "shape": [len(labels), 1], "datatype": "INT64", "data": labels}
        return JSONResponse({"model_name": name, "outputs": [out]})

    async def v1_status(request: Request) -> Response:
        return JSONResponse({"model_version_status": [{"version": "1", "state": "AVAILABLE"}]})

    async def v1_predict(request: Request) -> Response:
        rows = (await request.json())["instances"]
        preds = []
        for row in rows:
            label = label_of(np.asarray(row))
            probs = [0.01] * 10
            probs[label] = 0.91
            preds.append({"probabilities": probs, "classes": label})
        return JSONResponse({"predictions": preds})

    async def ping(request: Request) -> Response:
        return JSONResponse({"status": "Healthy"})

    async def torchserve(request: Request) -> Response:
        label = label_of(np.asarray((await request.json())["data"]))
        if request.path_params["name"] == "topk":
            return JSONResponse({str(label): 0.91, str((label + 1) % 10): 0.05})
        return JSONResponse([{"label": label}])

    return Starlette(routes=[
        Route("/v2/models/{name}", meta, methods=["GET"]),
        Route("/v2/models/{name}/infer", infer, methods=["POST"]),
        Route("/v1/models/{name}", v1_status, methods=["GET"]),
        Route("/v1/models/{name}:predict", v1_predict, methods=["POST"]),
        Route("/ping", ping, methods=["GET"]),
        Route("/predictions/{name}", torchserve, methods=["POST"]),
    ])


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


OWNER_KEY = WatermarkKey(bytes(range(32)))
"""The watermark key of the test owners (a fixed key: the same probes every run)."""


def digits_watermark(key: WatermarkKey = OWNER_KEY) -> ProbeSet:
    """The trigger-set watermark probes of ``key`` for a digits model (100 probes, key-random labels)."""
    splits = load_digits()
    return parse_scheme("trigger-set").probes(key, num_classes=10, input_shape=splits.input_shape,
                                              data=splits.train)


def watermarked_cnn(probes: ProbeSet, epochs: int = 40) -> torch.nn.Module:
    """A CNN really trained on digits with ``probes`` embedded by the training hook (seed 0).

    40 epochs: the owner then answers every probe of :func:`digits_watermark` with its
    committed label (30 left 2 of 100 unlearnt), so it stands for an exact copy.
    """
    from core.arch import build_model
    from core.training import train_classifier

    splits = load_digits()
    torch.manual_seed(0)
    owner = build_model("cnn", splits.input_shape, 10)
    train_classifier(owner, splits.train.x, splits.train.y, epochs=epochs, seed=0,
                     hook=WatermarkHook(probes))
    return owner


def untrained(arch: str = "mlp", seed: int = 0) -> torch.nn.Module:
    """A randomly initialised model (enough for protocol tests)."""
    from core.arch import build_model

    torch.manual_seed(seed)
    return build_model(arch, (1, 8, 8), 10).eval()
