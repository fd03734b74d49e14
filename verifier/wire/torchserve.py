"""TorchServe's inference API, both ends.

TorchServe "Inference API": ``POST /predictions/{name}[/{version}]`` with one
input per request (TorchServe batches on the server side), health at ``GET
/ping``. A JSON request carries the input as the body itself or under
``data`` (or ``body``), as TorchServe hands it to a handler. A handler's
answer for one input is a label (``3``), a score list (``[0.1, ...]``), an
object of named outputs (``{"probabilities": [...], "label": 3}``), or a
top-k map of class index to score (``{"3": 0.91, "5": 0.04}``), possibly
wrapped in a one-element list.

Here: the suspect client (:class:`TorchServeClient`), the request parser that
``wm serve`` and the guard share (:func:`parse_request`), the answer reader
they share (:func:`read_answer`), and the answer ``wm serve`` writes.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from core.errors import SuspectError
from verifier.wire.client import Detection, SuspectClient
from verifier.wire.inference import InferenceRequest, RequestError, Route, batch_of
from verifier.wire.tensors import ANSWER_FIELDS, DecodedAnswer, interpret_outputs, read_column, read_records

__all__ = ["PATH", "URL", "TorchServeClient", "answer_doc", "parse_request", "read_answer"]

URL = re.compile(
    r"^(?P<base>https?://[^/]+(?:/.*?)?)/predictions/(?P<name>[^/]+)(?:/(?P<version>[^/]+))?/?$"
)
"""A suspect's TorchServe URL: its ``/predictions/NAME[/VERSION]`` endpoint."""
PATH = re.compile(r"^/predictions/(?P<name>[^/]+)(?:/(?P<version>[^/]+))?$")
"""The path of a TorchServe prediction request, as a server routes it."""


class TorchServeClient(SuspectClient):
    """TorchServe inference API: one input per ``POST /predictions/{name}``."""

    protocol = "torchserve"
    max_batch = 1
    url_form = URL
    url_example = "a TorchServe URL looks like http://HOST/predictions/NAME"

    def __init__(self, url: str, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self.model_name = str(self.parts["name"])
        self.base = str(self.parts["base"])

    def describe(self) -> Detection:
        status, meta = self.http.get_json(f"{self.base}/ping", "health status")
        if status != 200:
            raise SuspectError(f"no TorchServe at {self.base} (HTTP {status} on /ping)")
        state = " ".join(str(meta).split())[:200]
        return Detection("torchserve", self.url, f"TorchServe model {self.model_name!r} (ping: {state})")

    def request_body(self, x: np.ndarray) -> tuple[str, dict[str, Any]]:
        # float32 -> float64 is exact; JSON's shortest repr of that double reads back to it.
        return self.url, {"data": x[0].astype(np.float64).tolist()}

    def parse_answer(self, doc: Any, n: int) -> DecodedAnswer:
        return read_answer(doc, n, self.num_classes)


def _top_k(doc: dict[str, Any], num_classes: int) -> np.ndarray | None:
    """The best and second-best classes of a top-k map ``{"class index": score}`` (one where the map
    holds one); ``None`` if ``doc`` is not such a map."""
    if not doc or ANSWER_FIELDS & doc.keys() or not all(type(v) in (int, float) for v in doc.values()):
        return None
    try:
        ranked = sorted(((-float(v), int(k)) for k, v in doc.items()))  # best first, ties to the lower class
    except ValueError as exc:
        raise SuspectError("suspect's answer maps class names that are not class indices") from exc
    labels, _ = interpret_outputs([c for _, c in ranked[:2]], n=min(2, len(ranked)), num_classes=num_classes)
    return labels


def read_answer(doc: Any, n: int, num_classes: int) -> DecodedAnswer:
    """A TorchServe answer for one input (``n`` must be 1).

    A top-k map is read but cannot be rewritten (its column has no ``put``).

    Raises:
        SuspectError: ``n`` is not 1, or the answer is none of the forms above.
    """
    if n != 1:
        raise SuspectError(f"TorchServe answers one input per request, not {n}")
    box: list[Any] = [doc]
    what = "suspect's answer"
    if isinstance(doc, list) and len(doc) == 1 and isinstance(doc[0], dict):
        doc = doc[0]
    if isinstance(doc, dict):
        top = _top_k(doc, num_classes)
        if top is not None:  # the best class, and the runner-up where the map names one
            labels = top[:1]
            column, _ = read_column(labels.tolist(), 1, num_classes, what, None)
            return DecodedAnswer(box, labels, "labels", (column,), top[1:] if len(top) > 1 else None)
        columns, labels, kind = read_records([doc], 1, num_classes, what)
        return DecodedAnswer(box, labels, kind, columns)
    row = doc if isinstance(doc, list) and doc and isinstance(doc[0], list) else [doc]
    nested = row is doc

    def write(new: list[Any]) -> None:
        box[0] = new if nested else new[0]

    column, labels = read_column(row, 1, num_classes, what, write)
    return DecodedAnswer(box, labels, column.kind, (column,))


def parse_request(doc: Any, route: Route, input_shape: tuple[int, ...], *,
                  max_batch: int = 1) -> InferenceRequest:
    """A TorchServe JSON request for one input: the body itself, or its ``data`` or ``body``.

    ``max_batch`` is there for the codecs' common signature: TorchServe sends one input.

    Raises:
        RequestError: not one input of the model's size (see
            :func:`verifier.wire.inference.batch_of`).
    """
    item = doc.get("data", doc.get("body")) if isinstance(doc, dict) else doc
    if item is None:
        raise RequestError("request needs the input as its body, or under 'data'")
    x, layout = batch_of([item], None, input_shape, what="request data", max_batch=min(max_batch, 1))
    return InferenceRequest(route=route, inputs=x, layout=layout)


def answer_doc(result: np.ndarray) -> Any:
    """The answer for one input: its label, or its score list."""
    return result[0].tolist()
