"""KServe V1 / TensorFlow Serving REST (``:predict``), both ends.

KServe "V1 protocol" and TensorFlow Serving's REST API: ``POST
/v1/models/{name}[/versions/{v}]:predict`` with ``{"instances": [...]}`` (row
format; an instance may be a list, or an object holding one named input) or
TF Serving's columnar ``{"inputs": ...}``; answered ``{"predictions": [...]}``,
each prediction a list of numbers (labels or scores) or an object of named
outputs (``{"probabilities": [...], "classes": 3}``); model status at ``GET
/v1/models/{name}``.

Here: the suspect client (:class:`TfServingClient`), the request parser that
``wm serve`` and the guard share (:func:`parse_request`), the answer reader
they share (:func:`read_answer`), and the answer ``wm serve`` writes.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from core.errors import SuspectError
from verifier.wire.client import Detection, SuspectClient
from verifier.wire.inference import MAX_BATCH, InferenceRequest, RequestError, Route, batch_of
from verifier.wire.tensors import DecodedAnswer, read_listed

__all__ = ["PATH", "URL", "TfServingClient", "answer_doc", "parse_request", "read_answer"]

URL = re.compile(r"^(?P<base>https?://[^/]+(?:/.*?)?)/v1/models/(?P<name>[^/:]+)(?::predict)?/?$")
"""A suspect's V1 URL: the model's status URL, or its ``:predict`` endpoint."""
PATH = re.compile(r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>[^/:]+))?:predict$")
"""The path of a V1 predict request, as a server routes it."""


class TfServingClient(SuspectClient):
    """KServe V1 / TensorFlow Serving REST (``:predict``)."""

    protocol = "tfserving"
    url_form = URL
    url_example = "a KServe V1 / TF Serving URL looks like http://HOST/v1/models/NAME[:predict]"

    def __init__(self, url: str, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self.model_name = str(self.parts["name"])
        self.model_url = f"{self.parts['base']}/v1/models/{self.model_name}"

    def describe(self) -> Detection:
        status, meta = self.http.get_json(self.model_url, "model status")
        if status != 200:
            raise SuspectError(f"no V1 model at {self.model_url} (HTTP {status}: {meta})")
        state = " ".join(str(meta).split())
        return Detection(
            "tfserving", f"{self.model_url}:predict",
            f"KServe V1 / TensorFlow Serving model {self.model_name!r} "
            f"({state[:200]}{'...' if len(state) > 200 else ''})",
        )

    def request_body(self, x: np.ndarray) -> tuple[str, dict[str, Any]]:
        # float32 -> float64 is exact; JSON's shortest repr of that double reads back to it.
        return f"{self.model_url}:predict", {"instances": x.astype(np.float64).tolist()}

    def parse_answer(self, doc: Any, n: int) -> DecodedAnswer:
        return read_answer(doc, n, self.num_classes)


def read_answer(doc: Any, n: int, num_classes: int) -> DecodedAnswer:
    """A V1 answer for ``n`` inputs: ``predictions`` as numbers, or as objects of named outputs.

    Raises:
        SuspectError: no ``predictions``, or predictions that are not answers for ``n`` inputs.
    """
    if not isinstance(doc, dict) or "predictions" not in doc:
        raise SuspectError("suspect's answer has no 'predictions'")
    return read_listed([doc], doc["predictions"], n, num_classes, "suspect's predictions",
                       lambda new: doc.__setitem__("predictions", new))


def _instance(v: Any) -> Any:
    """One row-format instance: a list, or an object holding exactly one named input."""
    if isinstance(v, dict):
        if len(v) != 1:
            raise RequestError("an instance given as an object must hold exactly one named input")
        return next(iter(v.values()))
    return v


def parse_request(doc: Any, route: Route, input_shape: tuple[int, ...], *,
                  max_batch: int = MAX_BATCH) -> InferenceRequest:
    """A V1 predict request: ``instances`` (row format) or ``inputs`` (columnar).

    Raises:
        RequestError: neither, an empty batch, or inputs that are not rows of
            the model's size (see :func:`verifier.wire.inference.batch_of`).
    """
    if not isinstance(doc, dict):
        raise RequestError("predict request must be a JSON object")
    if isinstance(doc.get("instances"), list):
        rows = [_instance(v) for v in doc["instances"]]
        what = "'instances'"
    elif "inputs" in doc and "instances" not in doc:
        rows = _instance(doc["inputs"])
        what = "'inputs'"
        if not isinstance(rows, list):
            raise RequestError("'inputs' must be a list of rows")
    else:
        raise RequestError("predict request needs an 'instances' list")
    if not rows:
        raise RequestError(f"{what} is empty")
    x, layout = batch_of(rows, None, input_shape, what=what, max_batch=max_batch)
    return InferenceRequest(route=route, inputs=x, layout=layout)


def answer_doc(result: np.ndarray) -> dict[str, Any]:
    """The answer document for ``result`` (labels ``[N]`` or scores ``[N, C]``)."""
    return {"predictions": result.tolist()}
