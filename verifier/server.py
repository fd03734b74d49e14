"""A reference Open Inference Protocol V2 server for ``.pt2`` models (``wm serve``).

Implements the REST side of the KServe Open Inference Protocol ("V2"):
``GET /v2`` (server metadata), ``GET /v2/health/live|ready``,
``GET /v2/models/{name}[/versions/{v}]`` (model metadata),
``GET /v2/models/{name}[/versions/{v}]/ready`` and
``POST /v2/models/{name}[/versions/{v}]/infer``, with errors answered as
``{"error": "..."}`` and status 400 (bad request) or 404 (unknown model), as
the protocol specifies. For testing the other clients it also serves KServe V1
(``GET /v1/models/{name}``, ``POST /v1/models/{name}:predict``) and
TorchServe's ``POST /predictions/{name}`` and ``GET /ping``.

Each model answers ``labels`` (INT64 ``[N]``), ``probabilities`` (softmax,
FP32 ``[N, C]``) or ``logits`` (FP32 ``[N, C]``). This is what the demo and the
tests use as a suspect; it binds 127.0.0.1 by default.
"""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from core.canonical import parse_json
from core.errors import InputError
from core.modelio import LoadedModel

__all__ = ["OUTPUTS", "BackgroundServer", "ServedModel", "build_app", "running_server"]

Output = Literal["labels", "probabilities", "logits"]
OUTPUTS: tuple[str, ...] = ("labels", "probabilities", "logits")
MAX_BODY = 64 << 20
MAX_BATCH = 4096
_VERSION = "1"


@dataclass(frozen=True, eq=False)
class ServedModel:
    """A model behind the server: the loaded ``.pt2`` and what it answers."""

    model: LoadedModel
    output: Output = "labels"

    def __post_init__(self) -> None:
        if self.output not in OUTPUTS:
            raise InputError(f"--output must be one of {', '.join(OUTPUTS)}, got {self.output!r}")

    @torch.no_grad()
    def predict(self, x: np.ndarray) -> np.ndarray:
        """Answers for ``x`` ``[N, C, H, W]``: int64 labels or float32 scores."""
        logits = self.model(torch.from_numpy(x))
        match self.output:
            case "labels":
                return logits.argmax(dim=1).numpy().astype(np.int64)
            case "probabilities":
                return torch.softmax(logits, dim=1).numpy().astype(np.float32)
            case _:
                return logits.numpy().astype(np.float32)


class _BadRequestError(Exception):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def _error(message: str, status: int) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


async def _json_body(request: Request) -> Any:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY:
        raise _BadRequestError(f"request body over {MAX_BODY} bytes", 413)
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            raise _BadRequestError(f"request body over {MAX_BODY} bytes", 413)

    try:
        return parse_json(body, what="request body")
    except InputError as exc:
        raise _BadRequestError(str(exc)) from exc


def _numbers(data: Any, what: str) -> np.ndarray:
    def flat(v: Any, out: list[float], depth: int) -> None:
        if isinstance(v, list):
            if depth > 8:
                raise _BadRequestError(f"{what} is nested too deeply")
            for e in v:
                flat(e, out, depth + 1)
        elif isinstance(v, int | float) and not isinstance(v, bool):
            out.append(float(v))
        else:
            raise _BadRequestError(f"{what} holds a {type(v).__name__}, expected numbers")

    out: list[float] = []
    flat(data, out, 0)
    return np.asarray(out, dtype=np.float32)


class _Server:
    def __init__(self, models: Mapping[str, ServedModel]) -> None:
        if not models:
            raise InputError("the server needs at least one model")
        self.models = dict(models)

    def _model(self, request: Request) -> tuple[str, ServedModel]:
        name = request.path_params["name"]
        version = request.path_params.get("version")
        served = self.models.get(name)
        if served is None:
            raise _BadRequestError(f"model {name!r} is not found", 404)
        if version is not None and version != _VERSION:
            raise _BadRequestError(f"model {name!r} has no version {version!r}", 404)
        return name, served

    async def _run(self, served: ServedModel, x: np.ndarray) -> np.ndarray:
        shape = tuple(served.model.input_shape)
        if x.ndim != 1 + len(shape) or tuple(x.shape[1:]) != shape:
            want = ", ".join(map(str, shape))
            raise _BadRequestError(f"input shape {list(x.shape)} does not match [-1, {want}]")
        if x.shape[0] < 1 or x.shape[0] > MAX_BATCH:
            raise _BadRequestError(f"batch size must be between 1 and {MAX_BATCH}")
        if not np.isfinite(x).all():
            raise _BadRequestError("input holds NaN or infinity")
        return await run_in_threadpool(served.predict, np.ascontiguousarray(x))

    # ---- V2

    async def server_metadata(self, request: Request) -> Response:
        return JSONResponse({"name": "wm", "version": "0.1.0", "extensions": []})

    async def live(self, request: Request) -> Response:
        return JSONResponse({"live": True})

    async def ready(self, request: Request) -> Response:
        return JSONResponse({"ready": True})

    async def model_metadata(self, request: Request) -> Response:
        name, served = self._model(request)
        c = served.model.num_classes
        out_shape, out_type = ([-1], "INT64") if served.output == "labels" else ([-1, c], "FP32")
        return JSONResponse(
            {
                "name": name,
                "versions": [_VERSION],
                "platform": "pytorch_torchexport",
                "inputs": [
                    {"name": "input-0", "datatype": "FP32",
                     "shape": [-1, *served.model.input_shape]}
                ],
                "outputs": [{"name": "output-0", "datatype": out_type, "shape": out_shape}],
            }
        )

    async def model_ready(self, request: Request) -> Response:
        name, _ = self._model(request)
        return JSONResponse({"name": name, "ready": True})

    async def infer(self, request: Request) -> Response:
        name, served = self._model(request)
        doc = await _json_body(request)
        if not isinstance(doc, dict):
            raise _BadRequestError("inference request must be a JSON object")
        inputs = doc.get("inputs")
        if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
            raise _BadRequestError("inference request needs 'inputs' with exactly one input tensor")
        tensor = inputs[0]
        for key in ("name", "shape", "datatype", "data"):
            if key not in tensor:
                raise _BadRequestError(f"input tensor lacks {key!r}")
        if tensor["name"] != "input-0":
            raise _BadRequestError(f"unexpected inference input {tensor['name']!r} for model {name!r}")
        if tensor["datatype"] not in ("FP32", "FP64"):
            raise _BadRequestError(f"input datatype {tensor['datatype']!r} is not supported; use FP32")
        shape = tensor["shape"]
        if not isinstance(shape, list) or not all(
            isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape
        ):
            raise _BadRequestError("input 'shape' must be a list of non-negative integers")
        params = tensor.get("parameters") or doc.get("parameters") or {}
        if isinstance(params, dict) and "binary_data_size" in params:
            raise _BadRequestError("binary tensor data is not supported; send JSON 'data'")
        data = _numbers(tensor["data"], "input 'data'")
        if data.size != math.prod(shape):
            raise _BadRequestError(
                f"input 'data' holds {data.size} values but shape {shape} needs {math.prod(shape)}"
            )
        result = await self._run(served, data.reshape(shape))
        wanted = doc.get("outputs")
        if wanted is not None:
            if not isinstance(wanted, list) or not all(isinstance(o, dict) for o in wanted):
                raise _BadRequestError("'outputs' must be a list of objects")
            for o in wanted:
                if o.get("name") != "output-0":
                    raise _BadRequestError(
                        f"unexpected inference output {o.get('name')!r} for model {name!r}"
                    )
        answer: dict[str, Any] = {
            "model_name": name,
            "model_version": _VERSION,
            "outputs": [
                {
                    "name": "output-0",
                    "shape": list(result.shape),
                    "datatype": "INT64" if result.dtype == np.int64 else "FP32",
                    "data": result.reshape(-1).tolist(),
                }
            ],
        }
        if isinstance(doc.get("id"), str):
            answer["id"] = doc["id"]
        return JSONResponse(answer)

    # ---- V1 and TorchServe (for testing those clients)

    async def v1_status(self, request: Request) -> Response:
        name, _ = self._model(request)
        return JSONResponse({"name": name, "ready": True})

    async def v1_predict(self, request: Request) -> Response:
        _, served = self._model(request)
        doc = await _json_body(request)
        if not isinstance(doc, dict) or not isinstance(doc.get("instances"), list):
            raise _BadRequestError("predict request needs an 'instances' list")
        rows = doc["instances"]
        if not rows:
            raise _BadRequestError("'instances' is empty")
        shape = [len(rows), *served.model.input_shape]
        data = _numbers(rows, "'instances'")
        if data.size != math.prod(shape):
            raise _BadRequestError(f"'instances' do not have the shape {shape}")
        result = await self._run(served, data.reshape(shape))
        return JSONResponse({"predictions": result.tolist()})

    async def ping(self, request: Request) -> Response:
        return JSONResponse({"status": "Healthy"})

    async def torchserve_predict(self, request: Request) -> Response:
        _, served = self._model(request)
        doc = await _json_body(request)
        item = doc.get("data", doc.get("body")) if isinstance(doc, dict) else doc
        shape = [1, *served.model.input_shape]
        data = _numbers(item, "request data")
        if data.size != math.prod(shape):
            raise _BadRequestError(f"request data does not have the shape {shape[1:]}")
        result = await self._run(served, data.reshape(shape))
        return JSONResponse(result[0].tolist())


def build_app(models: Mapping[str, ServedModel]) -> Starlette:
    """The ASGI application serving ``models`` by name."""
    s = _Server(models)

    async def bad_request(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, _BadRequestError)
        return _error(str(exc), exc.status)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return _error(str(exc.detail), exc.status_code)

    v = "/versions/{version}"
    routes = [
        Route("/v2", s.server_metadata, methods=["GET"]),
        Route("/v2/health/live", s.live, methods=["GET"]),
        Route("/v2/health/ready", s.ready, methods=["GET"]),
        Route("/v1/models/{name}:predict", s.v1_predict, methods=["POST"]),
        Route("/v1/models/{name}", s.v1_status, methods=["GET"]),
        Route("/ping", s.ping, methods=["GET"]),
        Route("/predictions/{name}", s.torchserve_predict, methods=["POST"]),
    ]
    for suffix in ("", v):
        routes += [
            Route(f"/v2/models/{{name}}{suffix}", s.model_metadata, methods=["GET"]),
            Route(f"/v2/models/{{name}}{suffix}/ready", s.model_ready, methods=["GET"]),
            Route(f"/v2/models/{{name}}{suffix}/infer", s.infer, methods=["POST"]),
        ]
    return Starlette(
        routes=routes,
        exception_handlers={_BadRequestError: bad_request, HTTPException: http_error},
    )


class BackgroundServer:
    """Runs an ASGI app with uvicorn in a daemon thread (for tests, the demo and ``guard``).

    Args:
        app: the ASGI application.
        host: address to bind.
        port: port to bind; 0 picks a free one (read :attr:`port` after :meth:`start`).
    """

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0) -> None:
        config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                                lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.host = host
        self.port = port

    def _run(self) -> None:
        asyncio.run(self._server.serve())

    def start(self, timeout: float = 10.0) -> BackgroundServer:
        """Start serving; returns once the socket is bound."""
        self._thread.start()
        deadline = threading.Event()
        for _ in range(int(timeout / 0.01)):
            if self._server.started:
                break
            if not self._thread.is_alive():
                raise InputError(f"the server could not start on {self.host}:{self.port}")
            deadline.wait(0.01)
        else:
            raise InputError(f"the server did not start within {timeout} s")
        sockets = [s for srv in self._server.servers for s in srv.sockets]
        self.port = int(sockets[0].getsockname()[1])
        return self

    @property
    def url(self) -> str:
        """``http://host:port``."""
        return f"http://{self.host}:{self.port}"

    def stop(self) -> None:
        """Stop serving and wait for the thread."""
        self._server.should_exit = True
        self._thread.join(timeout=10)


@contextmanager
def running_server(app: Any, host: str = "127.0.0.1", port: int = 0) -> Iterator[BackgroundServer]:
    """``with running_server(app) as srv: ... srv.url ...``."""
    srv = BackgroundServer(app, host, port).start()
    try:
        yield srv
    finally:
        srv.stop()
