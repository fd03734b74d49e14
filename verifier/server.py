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

Requests are read and parsed by :class:`verifier.wire.incoming.RequestReader`,
the reader the guard uses too: bodies in linear time under a size cap (413),
a deadline for the whole body (408) and a budget on the bytes buffered at once
(503), parsed off the event loop, so one huge or slow body neither stalls
other requests nor exhausts memory. Each model answers ``labels`` (INT64
``[N]``), ``probabilities`` (softmax, FP32 ``[N, C]``) or ``logits`` (FP32
``[N, C]``). This is what the demo and the tests use as a suspect; it binds
127.0.0.1 by default.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from core.errors import InputError
from core.modelio import LoadedModel
from verifier.wire import oip, torchserve, v1
from verifier.wire.incoming import BodyLimits, RequestReader
from verifier.wire.inference import InferenceRequest, RequestError, ServedProtocol, layout_mismatch
from verifier.wire.inference import Route as WireRoute

__all__ = ["OUTPUTS", "ServedModel", "build_app"]

Output = Literal["labels", "probabilities", "logits"]
OUTPUTS: tuple[str, ...] = ("labels", "probabilities", "logits")
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
        """Answers for ``x`` ``[N, *input_shape]``: int64 labels or float32 scores."""
        logits = self.model(torch.from_numpy(x))
        match self.output:
            case "labels":
                return logits.argmax(dim=1).numpy().astype(np.int64)
            case "probabilities":
                return torch.softmax(logits, dim=1).numpy().astype(np.float32)
            case _:
                return logits.numpy().astype(np.float32)


def _error(message: str, status: int) -> JSONResponse:
    headers = {"Retry-After": "1"} if status == 503 else None
    return JSONResponse({"error": message}, status_code=status, headers=headers)


class _Server:
    def __init__(self, models: Mapping[str, ServedModel], limits: BodyLimits | None) -> None:
        if not models:
            raise InputError("the server needs at least one model")
        self.models = dict(models)
        self.reader = RequestReader(limits)

    def _model(self, request: Request) -> tuple[str, ServedModel]:
        name = request.path_params["name"]
        version = request.path_params.get("version")
        served = self.models.get(name)
        if served is None:
            raise RequestError(f"model {name!r} is not found", 404)
        if version is not None and version != _VERSION:
            raise RequestError(f"model {name!r} has no version {version!r}", 404)
        return name, served

    async def _read(self, request: Request, protocol: ServedProtocol) -> tuple[ServedModel, InferenceRequest]:
        name, served = self._model(request)
        route = WireRoute(protocol, name, request.path_params.get("version"))
        async with self.reader.body(request.receive, request.headers.get("content-length")) as body:
            parsed = await self.reader.parse(route, body, tuple(served.model.input_shape))
        return served, parsed

    # ---- V2

    async def server_metadata(self, request: Request) -> Response:
        return JSONResponse({"name": "wm", "version": "0.1.0", "extensions": []})

    async def live(self, request: Request) -> Response:
        return JSONResponse({"live": True})

    async def ready(self, request: Request) -> Response:
        return JSONResponse({"ready": True})

    async def model_metadata(self, request: Request) -> Response:
        name, served = self._model(request)
        m = served.model
        return JSONResponse(oip.metadata_doc(name, _VERSION, "pytorch_torchexport", tuple(m.input_shape),
                                             m.num_classes, served.output == "labels"))

    async def model_ready(self, request: Request) -> Response:
        name, _ = self._model(request)
        return JSONResponse({"name": name, "ready": True})

    async def infer(self, request: Request) -> Response:
        served, req = await self._read(request, "oip")
        name = req.route.model
        if req.input_name != oip.DEFAULT_INPUT:
            raise RequestError(f"unexpected inference input {req.input_name!r} for model {name!r}")
        for wanted in req.outputs or ():
            if wanted != "output-0":
                raise RequestError(f"unexpected inference output {wanted!r} for model {name!r}")
        shape = tuple(served.model.input_shape)
        if req.layout != shape:
            raise layout_mismatch([int(req.inputs.shape[0]), *req.layout], shape)
        result = await run_in_threadpool(served.predict, req.inputs)
        return JSONResponse(oip.answer_doc(name, _VERSION, result, request_id=req.request_id))

    # ---- V1 and TorchServe (for testing those clients)

    async def v1_status(self, request: Request) -> Response:
        name, _ = self._model(request)
        return JSONResponse({"name": name, "ready": True})

    async def v1_predict(self, request: Request) -> Response:
        served, req = await self._read(request, "tfserving")
        return JSONResponse(v1.answer_doc(await run_in_threadpool(served.predict, req.inputs)))

    async def ping(self, request: Request) -> Response:
        return JSONResponse({"status": "Healthy"})

    async def torchserve_predict(self, request: Request) -> Response:
        served, req = await self._read(request, "torchserve")
        return JSONResponse(torchserve.answer_doc(await run_in_threadpool(served.predict, req.inputs)))


def build_app(models: Mapping[str, ServedModel], limits: BodyLimits | None = None) -> Starlette:
    """The ASGI application serving ``models`` by name.

    Args:
        models: name -> model.
        limits: request body limits (default :class:`BodyLimits`).

    The request reader is ``app.state.reader``; close it when the server stops
    (``app.state.reader.close()``) to end its worker process, if one started.
    """
    s = _Server(models, limits)

    async def bad_request(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestError)
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
    app = Starlette(
        routes=routes,
        exception_handlers={RequestError: bad_request, HTTPException: http_error},
    )
    app.state.reader = s.reader
    return app
